"""``manage.py import_longrope_factors``: a LongRoPE search result becomes a reusable Method.

microsoft/LongRoPE's search writes ``result_final.csv`` (one factor a line), per-iteration CSVs and
JSON logs; ``gpu_workers.methods.longrope_files`` reads all of them. The factors are validated for
the base model they were searched on (their count must be its rotary dimension / 2).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from experiments import services
from experiments.models import BaseModel, Team
from gpu_workers.methods import MethodError, validate
from gpu_workers.methods.longrope_files import FactorFileError, read_factors


class Command(BaseCommand):
    help = "Create a LongRoPE method from factor files written by microsoft/LongRoPE's search (or ours)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("long", type=Path, help="long-context factor file (e.g. result_final.csv)")
        parser.add_argument("--short", type=Path, help="short-context factor file (default: all 1)")
        parser.add_argument("--base-model", required=True, help="name or id of the model the factors were searched on")
        parser.add_argument("--target-length", type=int, required=True, help="the context length searched for")
        parser.add_argument("--team", required=True, help="the team that will own the method")
        parser.add_argument("--name", help="method name (default: LongRoPE <file name>)")

    def handle(self, *args: Any, **options: Any) -> None:
        base = _by_name_or_id(BaseModel, options["base_model"])
        team = _by_name_or_id(Team, options["team"])
        pairs = base.rope_facts().rotary_dim // 2
        try:
            params: dict[str, Any] = {"long_factor": read_factors(options["long"], pairs)}
            if options["short"]:
                params["short_factor"] = read_factors(options["short"], pairs)
            clean = validate("longrope", params, base.rope_facts(), options["target_length"])
        except (FactorFileError, MethodError) as exc:
            raise CommandError(str(exc)) from None
        name = options["name"] or f"LongRoPE {options['long'].stem}"
        method = services.get_or_create_method(team, "longrope", clean, name)
        self.stdout.write(f"method {method.pk}: {method.name} ({pairs} factors, base model {base.name})")


def _by_name_or_id(model: Any, ref: str) -> Any:
    found = model.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    found = found or model.objects.filter(name=ref).first()
    if found is None:
        raise CommandError(f"No {model._meta.verbose_name} called {ref!r}.")
    return found

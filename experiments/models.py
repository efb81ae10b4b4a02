"""The domain: teams own experiments; an experiment compares methods, one Run per method.

Everything plotted, ranked or exported is a query over :class:`Measurement`. Rows are written only
by ``experiments.services``; pages read them through ``experiments.selectors``.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any, ClassVar

from django.conf import settings
from django.db import models
from django.db.models import Q

from gpu_workers.methods.base import RopeFacts
from gpu_workers.spec import DatasetSpec, EvalSpec, TrainSpec


class Team(models.Model):
    name = models.CharField(max_length=100, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name


class Membership(models.Model):
    """A user's role in a team: viewers read, members run experiments, admins also manage."""

    class Role(models.TextChoices):
        VIEWER = "viewer", "Viewer"
        MEMBER = "member", "Member"
        ADMIN = "admin", "Admin"

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)

    class Meta:
        constraints = (models.UniqueConstraint(fields=["user", "team"], name="one_membership_per_team"),)

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_submit(self) -> bool:
        return self.role in (self.Role.MEMBER, self.Role.ADMIN)


class BaseModel(models.Model):
    """A RoPE language model to extend; facts come from its config via ``gpu_workers.model_facts``."""

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="base_models",
                             help_text="Empty: shared with every team.")
    name = models.CharField(max_length=120)
    source = models.CharField(max_length=500, help_text="A local model directory or a Hugging Face id in the cache.")
    facts = models.JSONField(default=dict, blank=True)
    original_context = models.PositiveIntegerField(default=0)
    head_dim = models.PositiveIntegerField(default=0)
    rope_theta = models.FloatField(default=0.0)
    has_rope = models.BooleanField(default=True)
    parameters = models.BigIntegerField(null=True, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    def rope_facts(self) -> RopeFacts:
        """What ``gpu_workers.methods.validate`` needs to know about this model."""
        return RopeFacts.from_facts(self.facts)

    def apply_facts(self, facts: dict[str, Any]) -> None:
        """Store ``ModelFacts.to_json()`` and the columns denormalised from it for filtering."""
        self.facts = facts
        self.original_context = int(facts.get("original_context") or 0)
        self.head_dim = int(facts.get("head_dim") or 0)
        self.rope_theta = float(facts.get("rope_theta") or 0.0)
        self.has_rope = bool(facts.get("has_rope"))
        self.parameters = facts.get("parameters")


class Dataset(models.Model):
    """Evaluation text: the built-in corpus, a local file/directory, or an HF dataset saved to disk."""

    class Kind(models.TextChoices):
        BUILTIN = "builtin", "Built-in demo corpus"
        LOCAL = "local", "Local file or directory"
        HF = "hf", "Hugging Face dataset on disk"

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="datasets",
                             help_text="Empty: shared with every team.")
    name = models.CharField(max_length=120)
    kind = models.CharField(max_length=10, choices=Kind.choices, default=Kind.BUILTIN)
    path = models.CharField(max_length=500, blank=True)
    text_field = models.CharField(max_length=100, default="text")
    source_field = models.CharField(max_length=100, default="source")
    haystack_source = models.CharField(
        max_length=100, blank=True,
        help_text="The source whose documents fill needle haystacks, or “all”; blank = prose for the built-in "
                  "corpus, every document otherwise.",
    )
    facts = models.JSONField(default=dict, blank=True)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["name"]

    def __str__(self) -> str:
        return self.name

    def spec(self) -> DatasetSpec:
        return DatasetSpec(kind=self.kind, path=self.path, text_field=self.text_field, source_field=self.source_field,
                           haystack_source=self.haystack_source)

    @property
    def haystack(self) -> str:
        """The haystack source in effect (the default resolved), as the worker will read it."""
        return self.spec().haystack

    @property
    def sources(self) -> list[str]:
        """The source values its documents carry, as counted when it was registered."""
        return sorted(self.facts.get("docs_by_source") or {})


class DatasetLengthStats(models.Model):
    """A dataset's evaluation documents measured in one tokenizer's tokens, by a worker, once.

    Keyed by the tokenizer's identity (:func:`gpu_workers.tokenizer_files.tokenizer_key`: models with the same
    tokenizer files share a row) and by ``data_key``, the digest of what picks the documents (kind, path,
    text and source fields), so a dataset whose files were repointed is measured again. The composer checks
    its lengths and haystack against ``lengths`` instead of tokenizing the corpus on every submit. Written by
    ``experiments.length_stats`` only; ``task_id`` is the Celery task id of the current attempt, and every
    worker write is conditional on it.
    """

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Measuring"
        SUCCEEDED = "succeeded", "Ready"
        FAILED = "failed", "Failed"

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="length_stats")
    tokenizer_key = models.CharField(max_length=64)
    data_key = models.CharField(max_length=64)
    tokenizer_source = models.CharField(max_length=500, help_text="The model source the worker loads the tokenizer "
                                                                  "from (any model with this tokenizer).")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED)
    task_id = models.UUIDField(default=uuid.uuid4)
    progress = models.FloatField(default=0.0)
    lengths = models.JSONField(default=dict, blank=True,
                               help_text="Source → every evaluation document's token count, sorted ascending.")
    documents = models.PositiveIntegerField(default=0)
    tokens = models.BigIntegerField(default=0)
    longest = models.PositiveIntegerField(default=0)
    error = models.TextField(blank=True)
    error_field = models.CharField(max_length=20, blank=True,
                                   help_text="The composer field a failure belongs to: dataset or base_model.")
    worker = models.CharField(max_length=200, blank=True)
    requested_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(null=True, blank=True, help_text="The worker's last write (progress).")
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["dataset", "requested_at"]
        constraints = (models.UniqueConstraint(fields=["dataset", "tokenizer_key", "data_key"],
                                               name="one_length_stats_per_dataset_tokenizer"),)

    def __str__(self) -> str:
        return f"{self.dataset} in tokenizer {self.tokenizer_key[:12]} ({self.status})"


def params_hash(params: dict[str, Any]) -> str:
    """A stable digest of canonical parameters, so one configuration is one Method row."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Method(models.Model):
    """A reusable method configuration: a family plus canonical parameters (from gpu_workers)."""

    team = models.ForeignKey(Team, null=True, blank=True, on_delete=models.CASCADE, related_name="methods",
                             help_text="Empty: shared with every team.")
    name = models.CharField(max_length=200)
    family = models.CharField(max_length=40)
    params = models.JSONField(default=dict, blank=True)
    params_hash = models.CharField(max_length=64, editable=False)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["family", "name"]
        constraints = (
            # Two partial indexes because NULL teams (shared methods) are distinct in a plain one.
            models.UniqueConstraint(fields=["team", "family", "params_hash"], condition=Q(team__isnull=False),
                                    name="one_method_per_team_config"),
            models.UniqueConstraint(fields=["family", "params_hash"], condition=Q(team__isnull=True),
                                    name="one_shared_method_per_config"),
        )

    def save(self, *args: Any, **kwargs: Any) -> None:
        self.params_hash = params_hash(self.params)
        super().save(*args, **kwargs)

    def __str__(self) -> str:
        return self.name


class Experiment(models.Model):
    """One question: a base model, data, a target length, an evaluation suite, methods to compare."""

    uuid = models.UUIDField(default=uuid.uuid4, unique=True, editable=False)
    team = models.ForeignKey(Team, on_delete=models.CASCADE, related_name="experiments")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, on_delete=models.SET_NULL,
                                   related_name="experiments")
    name = models.CharField(max_length=200)
    base_model = models.ForeignKey(BaseModel, on_delete=models.PROTECT, related_name="experiments")
    dataset = models.ForeignKey(Dataset, on_delete=models.PROTECT, related_name="experiments")
    target_length = models.PositiveIntegerField()
    eval_lengths = models.JSONField(default=list)
    eval_documents = models.PositiveIntegerField(default=8)
    training = models.JSONField(default=dict)
    evaluations = models.JSONField(default=dict)
    """EvalSpec's settings besides lengths and documents: ``{"suite": [...], "protocol": ..., ...}``."""
    created = models.DateTimeField(auto_now_add=True)
    archived_at = models.DateTimeField(
        null=True, blank=True, db_index=True,
        help_text="Set: hidden from the experiment lists and the leaderboard, still reachable by URL and exported "
                  "(experiments.lifecycle_services).",
    )

    class Meta:
        ordering: ClassVar[list[str]] = ["-created"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def recipe_fields(evaluation: EvalSpec, training: TrainSpec) -> dict[str, Any]:
        """The columns that hold the two specs: lengths and documents in their own columns, the other evaluation
        settings in ``evaluations`` and the training recipe in ``training`` (``{"mode": "none"}`` without one)."""
        settings = evaluation.to_json()
        return {
            "eval_lengths": settings.pop("lengths"), "eval_documents": settings.pop("documents"),
            "evaluations": settings, "training": training.to_json() if training.enabled else {"mode": "none"},
        }

    def eval_spec(self) -> EvalSpec:
        """The inverse of :meth:`recipe_fields` for the evaluation (raises SpecError for a corrupt row)."""
        return EvalSpec.from_json({**self.evaluations, "lengths": self.eval_lengths, "documents": self.eval_documents})

    def train_spec(self) -> TrainSpec:
        return TrainSpec.from_json(self.training or {"mode": "none"})


class Run(models.Model):
    """One method inside one experiment; ``uuid`` is the Celery task id of the current attempt."""

    class Status(models.TextChoices):
        QUEUED = "queued", "Queued"
        RUNNING = "running", "Running"
        SUCCEEDED = "succeeded", "Succeeded"
        FAILED = "failed", "Failed"
        CANCELLED = "cancelled", "Cancelled"

    ACTIVE = (Status.QUEUED, Status.RUNNING)
    RETRYABLE = (Status.FAILED, Status.CANCELLED)

    uuid = models.UUIDField(default=uuid.uuid4, unique=True)
    experiment = models.ForeignKey(Experiment, on_delete=models.CASCADE, related_name="runs")
    method = models.ForeignKey(Method, on_delete=models.PROTECT, related_name="runs")
    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    cancel_requested = models.BooleanField(default=False)
    progress = models.FloatField(default=0.0)
    progress_message = models.CharField(max_length=300, blank=True)
    log_tail = models.TextField(blank=True)
    worker = models.CharField(max_length=200, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=1)
    produced_method = models.ForeignKey(
        "Method", null=True, blank=True, on_delete=models.SET_NULL, related_name="produced_by",
        help_text="A method this run made, e.g. the LongRoPE factors a search found.",
    )
    haystack_source = models.CharField(
        max_length=100, blank=True,
        help_text="The dataset source that filled this attempt's needle haystacks (blank: no needle evaluation).",
    )
    protocol = models.JSONField(
        default=dict, blank=True,
        help_text="What this attempt's numbers were measured under (gpu_workers.protocol): common facts, one "
                  "section per evaluation and their keys.",
    )

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]

    def __str__(self) -> str:
        return f"{self.method} in {self.experiment} ({self.status})"

    @property
    def is_active(self) -> bool:
        return self.status in self.ACTIVE

    @property
    def is_retryable(self) -> bool:
        return self.status in self.RETRYABLE

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None or self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    @property
    def log_lines(self) -> list[str]:
        return self.log_tail.splitlines()


class Measurement(models.Model):
    """One number with its coordinates; unused coordinates stay NULL."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="measurements")
    metric = models.CharField(max_length=60)
    value = models.FloatField()
    context_length = models.PositiveIntegerField(null=True, blank=True)
    depth = models.FloatField(null=True, blank=True)
    samples = models.PositiveIntegerField(null=True, blank=True)
    ci_low = models.FloatField(null=True, blank=True)
    ci_high = models.FloatField(null=True, blank=True)
    step = models.PositiveIntegerField(null=True, blank=True)
    protocol_key = models.CharField(
        max_length=16, blank=True,
        help_text="The key of the evaluation protocol it was measured under (the run's protocol names its facts); "
                  "the leaderboard ranks only numbers with the same key.",
    )

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]
        indexes = (models.Index(fields=["run", "metric"], name="measurement_run_metric"),
                   models.Index(fields=["metric", "context_length", "protocol_key"], name="measurement_ranking"))

    def __str__(self) -> str:
        return f"{self.metric}={self.value:g} @ {self.context_length}"


class Artifact(models.Model):
    """A file a run produced (searched factors, checkpoint, figure), by path on the worker's storage."""

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="artifacts")
    kind = models.CharField(max_length=60)
    path = models.CharField(max_length=1000)
    created = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]

    def __str__(self) -> str:
        return f"{self.kind}: {self.path}"


class RunAttempt(models.Model):
    """One claim of a run by a worker: where and when it ran and how it ended.

    A Run row is retried in place (``services.retry_run``), so without this table a retry forgets the attempt
    before it. ``services.claim_run`` writes a row, ``finish_run`` and the sweeper close it; nothing else does.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="attempts")
    number = models.PositiveIntegerField(help_text="The run's ``attempt`` when it was claimed.")
    task_id = models.UUIDField(db_index=True, help_text="The run's uuid during this attempt (its Celery task id).")
    worker = models.CharField(max_length=200, blank=True)
    queued_at = models.DateTimeField(null=True, blank=True)
    started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    outcome = models.CharField(max_length=10, choices=Run.Status.choices, default=Run.Status.RUNNING)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True, help_text="Shown to the team's members and admins, not to viewers.")

    class Meta:
        ordering: ClassVar[list[str]] = ["run", "number"]
        constraints = (models.UniqueConstraint(fields=["run", "number"], name="one_attempt_row_per_number"),)

    def __str__(self) -> str:
        return f"attempt {self.number} of run {self.run_id} ({self.outcome})"

    @property
    def duration_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return round((self.finished_at - self.started_at).total_seconds(), 3)

    @property
    def wait_s(self) -> float | None:
        """Seconds between being queued and a worker claiming it."""
        if self.queued_at is None:
            return None
        return round((self.started_at - self.queued_at).total_seconds(), 3)


class RunLogChunk(models.Model):
    """A run's whole log, as the lines one reporter write added (one row per write, not per line).

    ``Run.log_tail`` keeps the last lines for the experiment page's poll; this keeps everything, per attempt, in
    its own table so the run rows the lists read stay small. The worker appends in the same transaction as the
    tail update, so a write from an attempt that is no longer running adds nothing here either.
    """

    run = models.ForeignKey(Run, on_delete=models.CASCADE, related_name="log_chunks")
    attempt = models.PositiveIntegerField()
    text = models.TextField()

    class Meta:
        ordering: ClassVar[list[str]] = ["id"]
        indexes = (models.Index(fields=["run", "attempt", "id"], name="run_log_chunk_order"),)

    def __str__(self) -> str:
        return f"log of run {self.run_id}, attempt {self.attempt} ({len(self.text)} chars)"


class ApiToken(models.Model):
    """A personal API key; only its SHA-256 is stored, the key itself is shown once."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    key_hash = models.CharField(max_length=64, unique=True, editable=False)
    prefix = models.CharField(max_length=8, editable=False, help_text="The key's first characters, to tell keys apart.")
    created = models.DateTimeField(auto_now_add=True)
    last_used = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering: ClassVar[list[str]] = ["-created"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @staticmethod
    def hash_key(key: str) -> str:
        return hashlib.sha256(key.encode()).hexdigest()

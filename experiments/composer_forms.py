"""The composer's three plain forms: the experiment (model, data, lengths), the evaluation suite and the
training recipe. Each of the last two turns its cleaned data into its spec (:meth:`EvaluationForm.spec`,
:meth:`TrainingForm.spec`) and back into initial values (:meth:`EvaluationForm.initial_for`,
:meth:`TrainingForm.initial_for`), so a stored experiment reopens in the composer as it was submitted.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from experiments import length_stats
from experiments.access import visible_base_models, visible_datasets
from experiments.forms import MAX_EVAL_LENGTH, MIN_EVAL_LENGTH, DatasetChoice, ModelChoice, TeamField, default_team
from experiments.models import BaseModel, Dataset, Team
from gpu_workers import catalog
from gpu_workers.data.documents import DatasetError
from gpu_workers.data.length_stats import LengthStats
from gpu_workers.spec import MAX_RULER_SAMPLES, RULER_TASKS, EvalSpec, TrainSpec

MAX_EVAL_LENGTHS = 16
INITIAL_FAMILIES = ("none", "pi", "dynamic_ntk", "yarn")


def default_eval_lengths(original: int, target: int) -> list[int]:
    """original, 2×original, 4×original, … up to and including the target."""
    lengths: list[int] = []
    n = max(original, MIN_EVAL_LENGTH)
    while n < target:
        lengths.append(n)
        n *= 2
    lengths.append(target)
    return lengths


def parse_lengths(raw: str) -> list[int]:
    lengths = set()
    for part in raw.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            n = int(part)
        except ValueError:
            raise ValidationError(f"“{part}” is not a whole number of tokens.") from None
        if n < MIN_EVAL_LENGTH:
            raise ValidationError(f"Evaluation lengths must be at least {MIN_EVAL_LENGTH} tokens (got {n}).")
        if n > MAX_EVAL_LENGTH:
            raise ValidationError(f"Evaluation lengths must be at most {MAX_EVAL_LENGTH} tokens (got {n}).")
        lengths.add(n)
    if len(lengths) > MAX_EVAL_LENGTHS:
        raise ValidationError(f"At most {MAX_EVAL_LENGTHS} evaluation lengths, please.")
    return sorted(lengths)


class ExperimentForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=200)
    base_model = ModelChoice(queryset=BaseModel.objects.none())
    dataset = DatasetChoice(queryset=Dataset.objects.none())
    target_length = forms.IntegerField(min_value=MIN_EVAL_LENGTH, max_value=MAX_EVAL_LENGTH,
                                       help_text="The context length the methods should reach, in tokens.")
    eval_lengths = forms.CharField(
        required=False, label="Evaluation lengths",
        help_text="Comma-separated token counts; blank = original context, 2×, 4×, … up to the target.",
    )
    eval_documents = forms.IntegerField(min_value=1, max_value=256, initial=8, label="Evaluation documents",
                                        help_text="Documents per length; each must be as long as the longest length.")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=default_team(user))
        self.fields["base_model"].queryset = visible_base_models(user)
        self.fields["dataset"].queryset = visible_datasets(user)
        if not self.is_bound:
            for name in ("base_model", "dataset"):
                only = list(self.fields[name].queryset[:2])
                if len(only) == 1:
                    self.fields[name].initial = only[0].pk

    def clean_eval_lengths(self) -> list[int]:
        return parse_lengths(self.cleaned_data.get("eval_lengths") or "")

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        team, base, dataset = data.get("team"), data.get("base_model"), data.get("dataset")
        if team and base and base.team_id not in (None, team.pk):
            self.add_error("base_model", f"{base.name} belongs to another team; pick a shared model or {team}'s.")
        if team and dataset and dataset.team_id not in (None, team.pk):
            self.add_error("dataset", f"{dataset.name} belongs to another team; pick shared data or {team}'s.")
        target = data.get("target_length")
        if base is not None and target is not None and target < base.original_context:
            self.add_error(
                "target_length",
                f"Target length must be at least the model's original context of {base.original_context} tokens.",
            )
        if (base is not None and target is not None and not self.has_error("eval_lengths")
                and not data.get("eval_lengths")):
            data["eval_lengths"] = default_eval_lengths(base.original_context, target)
        if not self.errors and base is not None and dataset is not None:
            self._check_dataset_length(base, dataset, data)
        return data

    suite: tuple[str, ...] = ("perplexity",)
    """Set by the composer before validation: which evaluations the dataset must be long enough for."""

    def _check_dataset_length(self, base: BaseModel, dataset: Dataset, data: dict[str, Any]) -> None:
        """Enough documents of the longest length, and haystack tokens, in *base*'s tokens: checked against the
        lengths a worker stored for (dataset, tokenizer) — see ``experiments.length_stats``. Until they are
        stored the experiment is refused with a message saying so (they are requested if nobody has yet), so
        a submit never passes unchecked and never tokenizes the corpus in the web process."""
        longest = max(data["eval_lengths"])
        needed = data["eval_documents"]
        wanted = [catalog.EVALUATIONS[e] for e in self.suite if e in catalog.EVALUATIONS]
        needs_documents = any(e.documents for e in wanted)
        needs_haystack = any(e.haystack for e in wanted)
        if not (needs_documents or needs_haystack):
            return
        try:
            row = length_stats.stats_for_composer(dataset, base)
        except OSError as exc:
            self.add_error("base_model", f"Could not load {base.name}'s tokenizer: {exc}")
            return
        if row.status == row.Status.FAILED:
            what = (f"Could not load {base.name}'s tokenizer" if row.error_field == "base_model"
                    else f"Could not read {dataset.name}")
            self.add_error("base_model" if row.error_field == "base_model" else "dataset",
                           f"{what}: {row.error} (fix it, then measure again on the dataset page).")
            return
        if row.status != row.Status.SUCCEEDED:
            done = f", {row.progress:.0%} done" if row.status == row.Status.RUNNING else ""
            self.add_error(
                "dataset",
                f"The token lengths of {dataset.name} in {base.name}'s tokens are being measured on a worker "
                f"({row.get_status_display().lower()}{done}); the length checks need them. Submit again in a "
                f"moment — the dataset page shows the progress.",
            )
            return
        stats = LengthStats.from_json(row.lengths)
        found = stats.documents_at_least(longest) if needs_documents else needed
        try:
            tokens = stats.haystack_tokens(dataset.haystack) if needs_haystack else longest
        except DatasetError as exc:
            self.add_error("dataset", f"Could not read {dataset.name}: {exc}")
            return
        if found < needed:
            self.add_error(
                "dataset",
                f"{dataset.name} has only {found} documents of at least {longest} tokens, but {needed} are needed. "
                f"Lower the longest evaluation length or the number of documents.",
            )
        if tokens < longest:
            self.add_error(
                "dataset",
                f"{dataset.name} holds only {tokens} tokens in all, too few for a {longest}-token needle haystack.",
            )


DEFAULT_SUITE = tuple(e.key for e in catalog.EVALUATIONS.values() if e.default)
"""Every evaluation but RULER, whose 13 tasks × lengths × samples of greedy decoding is opt-in."""


def default_stride(original_context: int) -> int:
    """A blank sliding stride: half the model's original context (the page and the API agree)."""
    return max(1, original_context // 2)


def typed_number(value: Any) -> str:
    """A number as typed: 4 for 4.0, the shortest exact spelling otherwise."""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def parse_depths(raw: str) -> list[float]:
    depths = []
    for part in raw.replace(";", ",").split(","):
        part = part.strip()
        if not part:
            continue
        try:
            depths.append(float(part.rstrip("%")) / (100 if part.endswith("%") else 1))
        except ValueError:
            raise ValidationError(f"“{part}” is not a depth; use fractions such as 0, 0.5, 1 or percentages.") from None
    if not depths:
        raise ValidationError("Give at least one depth.")
    return depths


EVAL_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(EvalSpec)
                                 if f.default is not dataclasses.MISSING}
OPTIONAL_SETTINGS = ("ruler_samples", "ruler_threshold", "ruler_max_new_tokens", "longppl_short_window",
                     "longppl_gain", "longppl_bound")
"""Settings a blank (or an older client's missing) value leaves at EvalSpec's default."""


class EvaluationForm(forms.Form):
    """The evaluation suite: which evaluations every run does, and their settings (checked by ``EvalSpec``)."""

    suite = forms.MultipleChoiceField(
        choices=[(e.key, e.label) for e in catalog.EVALUATIONS.values()], widget=forms.CheckboxSelectMultiple,
        initial=list(DEFAULT_SUITE), label="Evaluations",
        error_messages={"required": "Pick at least one evaluation."},
    )
    protocol = forms.ChoiceField(choices=catalog.choices(catalog.PERPLEXITY_PROTOCOLS),
                                 initial=EVAL_DEFAULTS["protocol"], label="Perplexity protocol")
    stride = forms.IntegerField(required=False, min_value=1, label="Sliding stride",
                                help_text="Tokens each window moves on; blank = half the original context.")
    passkey_samples = forms.IntegerField(min_value=1, max_value=1000, initial=EVAL_DEFAULTS["passkey_samples"],
                                         label="Passkey samples per length")
    passkey_depth = forms.FloatField(required=False, min_value=0, max_value=1, label="Passkey depth",
                                     help_text="0 = start, 1 = end; blank = a random depth per sample.")
    needle_depths = forms.CharField(initial=", ".join(f"{d:g}" for d in EVAL_DEFAULTS["needle_depths"]),
                                    label="Needle depths",
                                    help_text="Fractions of the haystack, comma-separated.")
    needle_samples = forms.IntegerField(min_value=1, max_value=100, initial=EVAL_DEFAULTS["needle_samples"],
                                        label="Needles per cell")
    needle_format = forms.ChoiceField(choices=catalog.choices(catalog.NEEDLE_FORMATS),
                                      initial=EVAL_DEFAULTS["needle_format"], label="Needle format")
    needle_variant = forms.ChoiceField(choices=catalog.choices(catalog.NEEDLE_VARIANTS),
                                       initial=EVAL_DEFAULTS["needle_variant"], label="Needle variant")
    needle_count = forms.IntegerField(min_value=2, max_value=16, initial=EVAL_DEFAULTS["needle_count"],
                                      label="Needles (multi-key / value)")
    ruler_tasks = forms.MultipleChoiceField(
        required=False, choices=[(t, t) for t in RULER_TASKS], initial=list(RULER_TASKS),
        widget=forms.CheckboxSelectMultiple, label="RULER tasks",
        help_text="RULER's 13 tasks (its QA pair replaced by word-valued needles), each weighed equally; none = all.",
    )
    ruler_samples = forms.IntegerField(required=False, min_value=1, max_value=MAX_RULER_SAMPLES,
                                       initial=EVAL_DEFAULTS["ruler_samples"],
                                       label="RULER samples per task and length")
    ruler_threshold = forms.FloatField(required=False,
        min_value=0, max_value=1, initial=EVAL_DEFAULTS["ruler_threshold"], label="Effective-length threshold",
        help_text="Effective length = the longest length scoring at least this share of the same run's score at "
                  "the original context (RULER / NoLiMa: 0.85).",
    )
    ruler_max_new_tokens = forms.IntegerField(required=False,
        min_value=0, max_value=512, initial=EVAL_DEFAULTS["ruler_max_new_tokens"], label="RULER answer tokens",
        help_text="Greedy tokens per answer; 0 = the reference answer's length plus 8.",
    )
    longppl_short_window = forms.IntegerField(required=False,
        min_value=0, initial=EVAL_DEFAULTS["longppl_short_window"], label="LongPPL short window",
        help_text="The base model judges key tokens by their loss with this window against the original context; "
                  "0 = an eighth of it (the paper's 4K of 32K).",
    )
    longppl_gain = forms.FloatField(required=False, initial=EVAL_DEFAULTS["longppl_gain"],
                                    label="LongPPL key-token loss drop (nats)",
                                    help_text="Key tokens lose more than this with the full window (the paper: 2).")
    longppl_bound = forms.FloatField(required=False, initial=EVAL_DEFAULTS["longppl_bound"],
                                     label="LongPPL key-token loss bound (nats)",
                                     help_text="…and their full-window loss is below this (the paper: 2).")

    prefix = "eval"

    def clean_needle_depths(self) -> list[float]:
        return parse_depths(self.cleaned_data.get("needle_depths") or "")

    def spec(self, lengths: list[int], documents: int, original_context: int) -> EvalSpec:
        """The cleaned fields as the spec every run of the experiment evaluates with (raises SpecError)."""
        data = self.cleaned_data
        return EvalSpec.from_json({
            "lengths": lengths, "documents": documents,
            "suite": list(data["suite"]), "protocol": data["protocol"],
            "stride": data.get("stride") or default_stride(original_context),
            "passkey_samples": data["passkey_samples"], "passkey_depth": data.get("passkey_depth"),
            "needle_depths": data["needle_depths"], "needle_samples": data["needle_samples"],
            "needle_format": data["needle_format"], "needle_variant": data["needle_variant"],
            "needle_count": data["needle_count"],
            "ruler_tasks": list(data.get("ruler_tasks") or RULER_TASKS),
            **{name: EVAL_DEFAULTS[name] if data.get(name) is None else data[name] for name in OPTIONAL_SETTINGS},
        })

    @classmethod
    def initial_for(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The inverse of :meth:`spec`: the fields' initial values for stored settings (an experiment's
        ``evaluations``: EvalSpec's JSON less lengths and documents)."""
        settings = {"suite": ["perplexity"], **settings}
        initial: dict[str, Any] = {}
        for name in cls.base_fields:
            if name not in settings:
                continue
            value = settings[name]
            if name == "needle_depths" and isinstance(value, list | tuple):
                value = ", ".join(typed_number(depth) for depth in value)
            elif isinstance(value, list | tuple):
                value = list(value)
            initial[name] = value
        return initial


TRAINING_PRESETS: dict[str, dict[str, Any]] = {
    "none": {"label": "No training", "paper": "", "settings": {"mode": "none"}},
    "pi": {
        "label": "PI fine-tune",
        "paper": "Chen et al. 2023: 1000 steps, lr 2e-5, batch 64 (7B) — here 100 steps, batch 4, lr 3e-4",
        "settings": {"mode": "finetune", "steps": 100, "batch_size": 4, "learning_rate": 3e-4, "warmup_steps": 10,
                     "data_strategy": "global", "keep_short_p": 1.0, "passkey_fraction": 0.0},
    },
    "yarn": {
        "label": "YaRN fine-tune",
        "paper": "Peng et al. 2023: 400 steps, lr 2e-5, batch 64 (7B) — here 100 steps, batch 4, lr 3e-4",
        "settings": {"mode": "finetune", "steps": 100, "batch_size": 4, "learning_rate": 3e-4, "warmup_steps": 10,
                     "data_strategy": "global", "keep_short_p": 1.0, "passkey_fraction": 0.0},
    },
    "longlora": {
        "label": "LongLoRA", "paper": "Chen et al. 2024: LoRA r=8 + trainable embeddings and norms, S2-Attn with "
                                      "¼-length groups — here 150 steps, lr 1e-3",
        "settings": {"mode": "finetune", "steps": 150, "learning_rate": 1e-3, "warmup_steps": 10, "lora": True,
                     "lora_rank": 8, "lora_alpha": 16, "train_embeddings_and_norms": True, "s2_attn": True,
                     "s2_group_fraction": 0.25, "data_strategy": "global", "keep_short_p": 1.0},
    },
    "data_engineering": {
        "label": "Continual pretraining, per-source upsampling",
        "paper": "Fu et al. 2024: per-source length upsampling, long = ≥ 4K tokens, keep ~15% of short ones — here "
                 "long = the training length, 150 steps",
        "settings": {"mode": "continual_pretrain", "steps": 150, "learning_rate": 3e-4, "warmup_steps": 10,
                     "data_strategy": "per_source", "keep_short_p": 0.15},
    },
    "longrope2": {
        "label": "LongRoPE2 mixed context windows (LongRoPE / dynamic NTK rows)",
        "paper": "Shang et al. 2025: short sequences train with the RoPE the method uses within the original context "
                 "(LongRoPE's short factors), long ones with the rescaled — here 150 steps. Only for methods whose "
                 "RoPE changes with the length (LongRoPE, the LongRoPE searches, dynamic NTK): remove the other "
                 "rows, or pick another recipe",
        "settings": {"mode": "finetune", "steps": 150, "learning_rate": 3e-4, "warmup_steps": 10,
                     "mixed_windows": True, "short_fraction": 0.5, "data_strategy": "per_source"},
    },
    "pose": {
        "label": "PoSE positional skip-wise fine-tune",
        "paper": "Zhu et al. 2024: train at the original window with position ids skipped over the target, 2 chunks "
                 "(1000 steps, lr 2e-5, batch 64 for 7B) — here 100 steps, batch 4, lr 3e-4, at the original context",
        "settings": {"mode": "finetune", "steps": 100, "batch_size": 4, "learning_rate": 3e-4, "warmup_steps": 10,
                     "pose": True, "pose_chunks": 2, "data_strategy": "global", "keep_short_p": 1.0},
    },
}
"""Recipes from the papers, scaled down for the demo model; choosing one fills the training fields.
Fine-tuning recipes pack natural documents as they come (global strategy keeping every short document)."""


class TrainingForm(forms.Form):
    """The training recipe every run of the experiment follows (``mode = none`` skips training)."""

    preset = forms.ChoiceField(choices=[(k, v["label"]) for k, v in TRAINING_PRESETS.items()], required=False,
                               initial="none", label="Recipe", help_text="Fills the fields below; edit freely.")
    mode = forms.ChoiceField(choices=catalog.choices(catalog.TRAINING_MODES), initial=TrainSpec.mode)
    steps = forms.IntegerField(min_value=1, initial=TrainSpec.steps)
    learning_rate = forms.FloatField(initial=TrainSpec.learning_rate, label="Learning rate")
    warmup_steps = forms.IntegerField(min_value=0, initial=TrainSpec.warmup_steps, label="Warm-up steps")
    batch_size = forms.IntegerField(min_value=1, initial=TrainSpec.batch_size, label="Batch (sequences)")
    grad_accum = forms.IntegerField(min_value=1, initial=TrainSpec.grad_accum, label="Gradient accumulation")
    train_length = forms.IntegerField(required=False, min_value=16, label="Training length",
                                      help_text="Tokens per sequence; blank = the target length, or with PoSE the "
                                                "model's original context.")
    gradient_checkpointing = forms.BooleanField(required=False, label="Gradient checkpointing")
    lora = forms.BooleanField(required=False, label="LoRA instead of full fine-tuning")
    lora_rank = forms.IntegerField(min_value=1, initial=TrainSpec.lora_rank, label="LoRA rank")
    lora_alpha = forms.IntegerField(min_value=1, initial=TrainSpec.lora_alpha, label="LoRA alpha")
    train_embeddings_and_norms = forms.BooleanField(required=False, initial=True,
                                                    label="With LoRA, also train embeddings and norms")
    s2_attn = forms.BooleanField(required=False, label="S2-Attn while training")
    s2_group_fraction = forms.FloatField(initial=TrainSpec.s2_group_fraction, label="S2-Attn group (share of length)")
    mixed_windows = forms.BooleanField(
        required=False, label="Mixed context windows (LongRoPE2)",
        help_text="Short steps at the original length with the RoPE the method uses there; only for methods whose "
                  "RoPE changes with the length (LongRoPE, dynamic NTK).",
    )
    short_fraction = forms.FloatField(initial=TrainSpec.short_fraction, label="Short-window share")
    pose = forms.BooleanField(
        required=False, label="PoSE (positional skip-wise)",
        help_text="Train at a short window whose position ids skip ahead to cover the target length (Zhu et al. "
                  "2024); combines with any method, not with S2-Attn or mixed windows.",
    )
    pose_chunks = forms.IntegerField(required=False, initial=TrainSpec.pose_chunks, label="PoSE chunks",
                                     help_text="Chunks per sequence, each with its own skip; blank = 2.")
    data_strategy = forms.ChoiceField(choices=catalog.choices(catalog.DATA_STRATEGIES), initial=TrainSpec.data_strategy,
                                      label="Data strategy")
    long_threshold = forms.IntegerField(required=False, min_value=1, label="Long-document threshold",
                                        help_text="Tokens; blank = the training length.")
    keep_short_p = forms.FloatField(initial=TrainSpec.keep_short_p, label="Keep short documents with p")
    upsample_sources = forms.CharField(required=False, label="Sources to upsample", help_text="Comma-separated.")
    upsample_multiplier = forms.FloatField(initial=TrainSpec.upsample_multiplier, label="Upsampling multiplier")
    passkey_fraction = forms.FloatField(initial=TrainSpec.passkey_fraction, label="Passkey sequences share",
                                        help_text="Synthetic retrieval sequences mixed in.")
    checkpoint_every = forms.IntegerField(min_value=1, initial=TrainSpec.checkpoint_every, label="Checkpoint every")
    seed = forms.IntegerField(min_value=0, initial=0)

    prefix = "train"

    def clean_upsample_sources(self) -> list[str]:
        raw = self.cleaned_data.get("upsample_sources") or ""
        return [part.strip() for part in raw.split(",") if part.strip()]

    def spec(self) -> TrainSpec:
        """The cleaned fields as the recipe every run follows (raises SpecError); no training = ``TrainSpec()``."""
        data = dict(self.cleaned_data)
        data.pop("preset", None)
        if data["mode"] == "none":
            return TrainSpec()
        data["train_length"] = data.get("train_length") or 0
        data["long_threshold"] = data.get("long_threshold") or 0
        if data.get("pose_chunks") is None:
            data["pose_chunks"] = TrainSpec.pose_chunks
        return TrainSpec.from_json(data)

    @classmethod
    def initial_for(cls, settings: dict[str, Any]) -> dict[str, Any]:
        """The inverse of :meth:`spec`: the fields' initial values, and the recipe they match if any, for stored
        settings (an experiment's ``training``: TrainSpec's JSON, or ``{"mode": "none"}``)."""
        settings = dict(settings or {"mode": "none"})
        initial: dict[str, Any] = {}
        preset = next((key for key, preset in TRAINING_PRESETS.items()
                       if all(settings.get(k) == v for k, v in preset["settings"].items())), None)
        if preset is not None:
            initial["preset"] = preset
        for name, value in settings.items():
            if name not in cls.base_fields or name == "preset":
                continue
            if name in ("train_length", "long_threshold") and not value:
                value = None
            elif isinstance(value, list | tuple):
                value = ", ".join(str(item) for item in value)
            initial[name] = value
        return initial


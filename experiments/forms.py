"""Validation of everything a user types, shared by the HTML pages and the JSON API.

The experiment composer is an :class:`ExperimentForm` plus a formset of method rows; a row's
parameter inputs are generated from ``gpu_workers.methods.FAMILIES`` (``<family>__<param>``), and a
row is valid only if ``gpu_workers.methods.validate`` accepts it, so the browser, the API and the
worker agree on what a method configuration means. Forms never save: ``services`` does (one service call
here: the composer asks ``length_stats`` to have a dataset measured when it finds no stored token lengths).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from experiments import length_stats
from experiments.access import submit_teams_of, visible_base_models, visible_datasets
from experiments.model_sources import prepare_source
from experiments.models import BaseModel, Dataset, Team, params_hash
from gpu_workers import catalog, mixed_windows
from gpu_workers.data import builtin_corpus
from gpu_workers.data.documents import DatasetError, inspect_dataset
from gpu_workers.data.length_stats import LengthStats
from gpu_workers.methods import FAMILIES, Family, MethodError, RopeFacts, validate
from gpu_workers.model_facts import ModelSourceError
from gpu_workers.spec import (
    ALL_SOURCES,
    BUILTIN_HAYSTACK_SOURCE,
    MAX_RULER_SAMPLES,
    RULER_TASKS,
    DatasetSpec,
    EvalSpec,
    EvalSpecError,
    TrainSpec,
    TrainSpecError,
)

MIN_EVAL_LENGTH = 16
MAX_EVAL_LENGTH = 1 << 20
MAX_EVAL_LENGTHS = 16
MAX_METHOD_ROWS = 12
INITIAL_FAMILIES = ("none", "pi", "dynamic_ntk", "yarn")


class TeamField(forms.ModelChoiceField):
    def __init__(self, user: Any, **kwargs: Any) -> None:
        teams = submit_teams_of(user)
        super().__init__(queryset=teams, empty_label=None, **kwargs)


def _default_team(user: Any) -> Team | None:
    teams = list(submit_teams_of(user)[:2])
    return teams[0] if len(teams) == 1 else None


# --- catalogue ------------------------------------------------------------------------------------------


class BaseModelForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=120)
    source = forms.CharField(
        max_length=500,
        help_text="A local model directory, a local .gguf file (converted once to safetensors), or a Hugging Face "
                  "id already in the local cache.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=_default_team(user))
        self.facts: dict[str, Any] = {}

    def clean_source(self) -> str:
        try:
            prepared = prepare_source(self.cleaned_data["source"])
            self.facts = prepared.facts
            source = prepared.source
        except ModelSourceError as exc:
            raise ValidationError(str(exc)) from None
        except Exception as exc:  # a config transformers cannot parse is still the user's input problem
            raise ValidationError(f"Could not read that model's config: {exc}") from None
        return source

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        team, name = data.get("team"), data.get("name")
        if team and name and BaseModel.objects.filter(team=team, name=name).exists():
            self.add_error("name", f"{team} already has a model named “{name}”.")
        return data


class DatasetForm(forms.Form):
    team = forms.ModelChoiceField(queryset=Team.objects.none())
    name = forms.CharField(max_length=120)
    kind = forms.ChoiceField(choices=Dataset.Kind.choices, initial=Dataset.Kind.LOCAL)
    path = forms.CharField(max_length=500, required=False,
                           help_text="A .jsonl file, a text file or a directory; for a Hugging Face dataset, the "
                                     "directory written by save_to_disk. Blank for the built-in corpus.")
    text_field = forms.CharField(max_length=100, initial="text")
    source_field = forms.CharField(max_length=100, initial="source",
                                   help_text="The field naming each document's domain (optional in the data).")
    haystack_source = forms.CharField(
        max_length=100, required=False, label="Needle haystack source",
        help_text=f"Which source's documents fill needle-in-a-haystack prompts: a source value in the data, or "
                  f"“{ALL_SOURCES}”. Blank = “{BUILTIN_HAYSTACK_SOURCE}” for the built-in corpus, every document "
                  f"otherwise.",
    )

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["team"] = TeamField(user, initial=_default_team(user))
        # The built-in corpus's sources are known before it is read: offer them as suggestions.
        self.fields["haystack_source"].widget.attrs["list"] = "haystack-sources"
        self.facts: dict[str, Any] = {}

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        kind = data.get("kind")
        if kind is None or self.has_error("text_field") or self.has_error("source_field"):
            return data
        path = (data.get("path") or "").strip()
        data["path"] = path
        if kind != Dataset.Kind.BUILTIN and not path:
            self.add_error("path", "Give the path of the data on the workers' file system.")
            return data
        try:
            spec = DatasetSpec(kind=kind, path=path, text_field=data["text_field"], source_field=data["source_field"])
            facts = inspect_dataset(spec)
        except (DatasetError, ValueError, OSError) as exc:
            self.add_error("kind" if kind == Dataset.Kind.BUILTIN else "path", str(exc))
            return data
        self.facts = {"documents": facts.documents, "chars_by_source": facts.chars_by_source,
                      "docs_by_source": facts.docs_by_source}
        data["haystack_source"] = (data.get("haystack_source") or "").strip()
        problem = haystack_source_problem(data["haystack_source"], sorted(facts.docs_by_source))
        if problem:
            self.add_error("haystack_source", problem)
        team, name = data.get("team"), data.get("name")
        if team and name and Dataset.objects.filter(team=team, name=name).exists():
            self.add_error("name", f"{team} already has a dataset named “{name}”.")
        return data

    @property
    def haystack_suggestions(self) -> tuple[str, ...]:
        """Sources known before any data is read: the built-in corpus's, and "all"."""
        return (*builtin_corpus.SOURCES, ALL_SOURCES)

    def dataset_fields(self) -> dict[str, Any]:
        return {key: self.cleaned_data[key]
                for key in ("name", "kind", "path", "text_field", "source_field", "haystack_source")}


def haystack_source_problem(value: str, sources: list[str]) -> str:
    """Why *value* cannot be a dataset's haystack source ('' if it can): it must name a source its documents
    carry, so a typo is refused here rather than failing every needle run later."""
    if not value or value == ALL_SOURCES or value in sources:
        return ""
    listed = ", ".join(f"“{s}”" for s in sources) or "none"
    return f"The data has no documents from source “{value}”. Its sources: {listed}; or “{ALL_SOURCES}”."


class HaystackSourceForm(forms.Form):
    """The dataset page's choice of haystack source, among the sources counted when it was registered."""

    haystack_source = forms.ChoiceField(label="Needle haystack source", required=False)

    def __init__(self, *args: Any, dataset: Dataset, **kwargs: Any) -> None:
        kwargs.setdefault("initial", {"haystack_source": dataset.haystack_source})
        super().__init__(*args, **kwargs)
        default = BUILTIN_HAYSTACK_SOURCE if dataset.kind == Dataset.Kind.BUILTIN else ALL_SOURCES
        choices = [("", f"Default ({default})"), (ALL_SOURCES, "All sources")]
        counts = dataset.facts.get("docs_by_source") or {}
        choices += [(s, f"{s} ({counts[s]} documents)") for s in dataset.sources if s != ALL_SOURCES]
        if dataset.haystack_source and dataset.haystack_source not in dict(choices):
            choices.append((dataset.haystack_source, f"{dataset.haystack_source} (not in the data)"))
        self.fields["haystack_source"].choices = choices


# --- the experiment composer ----------------------------------------------------------------------------


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


class ModelChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: BaseModel) -> str:
        scope = obj.team.name if obj.team_id else "shared"
        return f"{obj.name} (context {obj.original_context}, {scope})"


class DatasetChoice(forms.ModelChoiceField):
    def label_from_instance(self, obj: Dataset) -> str:
        scope = obj.team.name if obj.team_id else "shared"
        return f"{obj.name} ({obj.facts.get('documents', '?')} documents, {scope})"


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
        self.fields["team"] = TeamField(user, initial=_default_team(user))
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
SPEC_FIELD_TO_FORM = {"lengths": "eval_lengths", "documents": "eval_documents"}


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

    def settings(self, original_context: int) -> dict[str, Any]:
        """The JSON stored on the experiment: EvalSpec's fields except lengths and documents."""
        data = self.cleaned_data
        stride = data.get("stride") or max(1, original_context // 2)
        return {
            "suite": list(data["suite"]), "protocol": data["protocol"], "stride": stride,
            "passkey_samples": data["passkey_samples"], "passkey_depth": data.get("passkey_depth"),
            "needle_depths": data["needle_depths"], "needle_samples": data["needle_samples"],
            "needle_format": data["needle_format"], "needle_variant": data["needle_variant"],
            "needle_count": data["needle_count"],
            "ruler_tasks": list(data.get("ruler_tasks") or RULER_TASKS),
            **{name: EVAL_DEFAULTS[name] if data.get(name) is None else data[name] for name in OPTIONAL_SETTINGS},
        }


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

    def settings(self) -> dict[str, Any]:
        data = dict(self.cleaned_data)
        data.pop("preset", None)
        if data["mode"] == "none":
            return {"mode": "none"}
        data["train_length"] = data.get("train_length") or 0
        data["long_threshold"] = data.get("long_threshold") or 0
        if data.get("pose_chunks") is None:
            data["pose_chunks"] = TrainSpec.pose_chunks
        return data


@dataclass
class RowContext:
    """Filled in once the experiment part is clean: what every method row validates against."""

    base: RopeFacts | None = None
    target_length: int | None = None


def _placeholder(default: Any) -> str:
    if default is None:
        return "derived"
    if isinstance(default, list | tuple):
        return ", ".join(f"{v:g}" for v in default)
    return f"{default:g}" if isinstance(default, float) else str(default)


def param_field_name(family: str, param: str) -> str:
    return f"{family}__{param}"


class MethodRowForm(forms.Form):
    """One method to compare: a family and that family's parameters (blank = derived default)."""

    family = forms.ChoiceField(required=False)
    params_json = forms.CharField(required=False, widget=forms.HiddenInput)
    """The API's way in: a JSON object of parameters instead of the per-family inputs."""

    def __init__(self, *args: Any, context: RowContext | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.context = context or RowContext()
        self.fields["family"].choices = [("", "— no method —")] + [(f.name, f.label) for f in FAMILIES.values()]
        for family in FAMILIES.values():
            for param in family.params:
                if param.kind is bool:
                    self.fields[param_field_name(family.name, param.name)] = forms.BooleanField(
                        required=False, label=param.label, help_text=param.help,
                        widget=forms.CheckboxInput(attrs={"data-family": family.name, "class": "param-input"}),
                    )
                    continue
                self.fields[param_field_name(family.name, param.name)] = forms.CharField(
                    required=False,
                    label=param.label,
                    help_text=param.help,
                    widget=forms.TextInput(attrs={
                        "inputmode": "text" if param.kind is list else "decimal",
                        "placeholder": _placeholder(param.default),
                        "data-family": family.name,
                        "class": "param-input",
                    }),
                )
        self.method_errors: dict[str, list[str]] = {}
        self.canonical: dict[str, Any] | None = None

    def family_groups(self) -> list[tuple[Family, list[forms.BoundField]]]:
        """(family, its bound parameter fields) for the template, in FAMILIES order."""
        return [
            (family, [self[param_field_name(family.name, p.name)] for p in family.params])
            for family in FAMILIES.values()
        ]

    def _raw_params(self, family: Family) -> dict[str, Any] | None:
        raw_json = (self.cleaned_data.get("params_json") or "").strip()
        if raw_json:
            try:
                params = json.loads(raw_json)
            except json.JSONDecodeError:
                params = None
            if not isinstance(params, dict):
                self._method_error("params", "params_json", "Parameters must be a JSON object.")
                return None
            return params
        params = {}
        for param in family.params:
            raw = self.cleaned_data.get(param_field_name(family.name, param.name))
            if param.kind is bool:
                if raw:
                    params[param.name] = True
                continue
            value = (raw or "").strip()
            if value:
                params[param.name] = value
        return params

    def _method_error(self, key: str, field: str | None, message: str) -> None:
        self.method_errors.setdefault(key, []).append(message)
        self.add_error(field, message)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        name = data.get("family")
        if not name:
            return data
        family = FAMILIES[name]
        params = self._raw_params(family)
        if params is None or self.context.base is None or self.context.target_length is None:
            return data
        try:
            self.canonical = validate(name, params, self.context.base, self.context.target_length)
        except MethodError as exc:
            key = exc.field or "__all__"
            if key == "family":
                field: str | None = "family"
            elif (data.get("params_json") or "").strip():
                field = "params_json"
            elif param_field_name(name, key) in self.fields:
                field = param_field_name(name, key)
            else:
                field = None
            self._method_error(key, field, exc.message)
        return data

    @property
    def is_blank(self) -> bool:
        return not self.cleaned_data.get("family")

    def errors_by_param(self) -> dict[str, list[str]]:
        """Errors keyed by parameter name ("family", a param, or "__all__"), for the API."""
        out = {key: list(messages) for key, messages in self.method_errors.items()}
        reported = {message for messages in out.values() for message in messages}
        for field, messages in self.errors.items():
            key = field.split("__", 1)[1] if "__" in field and field != "__all__" else field
            key = "params" if key == "params_json" else key
            fresh = [m for m in messages if m not in reported]
            if fresh:
                out.setdefault(key, []).extend(fresh)
        return out


class BaseMethodFormSet(forms.BaseFormSet):
    def clean(self) -> None:
        if any(self.errors):
            return
        chosen = [(i, form) for i, form in enumerate(self.forms) if not form.is_blank]
        if not chosen:
            raise ValidationError("Choose at least one method to compare.")
        seen: dict[tuple[str, str], int] = {}
        for i, form in chosen:
            if form.canonical is None:
                continue
            key = (form.cleaned_data["family"], params_hash(form.canonical))
            if key in seen:
                raise ValidationError(
                    f"Method rows {seen[key] + 1} and {i + 1} are the same configuration; remove one."
                )
            seen[key] = i

    def methods(self) -> list[dict[str, Any]]:
        return [
            {"family": form.cleaned_data["family"], "params": form.canonical}
            for form in self.forms
            if not form.is_blank
        ]


MethodFormSet = forms.formset_factory(
    MethodRowForm, formset=BaseMethodFormSet, extra=0, min_num=0, max_num=MAX_METHOD_ROWS,
    validate_max=True, absolute_max=MAX_METHOD_ROWS,
)


class Composer:
    """The experiment form and its method rows, validated together (rows need the model's facts)."""

    prefix = "methods"

    def __init__(self, user: Any, data: Any = None) -> None:
        self.user = user
        self.context = RowContext()
        self.form = ExperimentForm(data, user=user)
        self.evaluation = EvaluationForm(data)
        self.evaluation_settings: dict[str, Any] = {}
        self.training = TrainingForm(data)
        self.training_settings: dict[str, Any] = {"mode": "none"}
        initial = [{"family": name} for name in INITIAL_FAMILIES] if data is None else None
        self.methods = MethodFormSet(data, prefix=self.prefix, initial=initial, form_kwargs={"context": self.context})

    def is_valid(self) -> bool:
        evaluation_ok = self.evaluation.is_valid()
        if evaluation_ok:
            self.form.suite = tuple(self.evaluation.cleaned_data["suite"])
        form_ok = self.form.is_valid()
        data = self.form.cleaned_data
        if form_ok and evaluation_ok:
            evaluation_ok = self._check_evaluation(data)
        training_ok = self.training.is_valid() and self._check_training()
        base, target = data.get("base_model"), data.get("target_length")
        if base is not None and target is not None:
            self.context.base = base.rope_facts()
            self.context.target_length = target
        methods_ok = self.methods.is_valid()
        if methods_ok and self.context.base is None:
            # Rows could not be checked without a model and a target; the form already says why.
            methods_ok = False
        if training_ok and methods_ok and form_ok:
            training_ok = self._check_training_against(base, target)
        return form_ok and methods_ok and evaluation_ok and training_ok

    def _check_training_against(self, base: BaseModel, target: int) -> bool:
        """What the recipe means depends on the model and the methods: refuse settings that would do nothing."""
        settings = self.training_settings
        if settings.get("mode", "none") == "none":
            return True
        ok = True
        if settings.get("mixed_windows"):
            rope = base.rope_facts()
            offending = [f"{FAMILIES[form.cleaned_data['family']].label} (row {i + 1})"
                         for i, form in enumerate(self.methods.forms)
                         if not form.is_blank
                         and not mixed_windows.rope_changes_with_length(form.cleaned_data["family"], rope)]
            if offending:
                self.training.add_error("mixed_windows", mixed_windows.refusal(offending, rope) + ".")
                ok = False
        if settings.get("pose"):
            length = settings.get("train_length") or base.original_context
            if length >= target:
                where = "training length" if settings.get("train_length") else "model's original context"
                self.training.add_error(
                    "train_length" if settings.get("train_length") else "pose",
                    f"PoSE trains at a window shorter than the target and skips its position ids ahead to reach "
                    f"the target; the {where} ({length} tokens) is not shorter than the target of {target}.",
                )
                ok = False
        return ok

    def _check_training(self) -> bool:
        self.training_settings = self.training.settings()
        try:
            TrainSpec(**self.training_settings)
        except TrainSpecError as exc:
            self.training.add_error(exc.field if exc.field in self.training.fields else None,
                                    str(exc)[0].upper() + str(exc)[1:] + ".")
            return False
        return True

    def _check_evaluation(self, data: dict[str, Any]) -> bool:
        self.evaluation_settings = self.evaluation.settings(data["base_model"].original_context)
        settings: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v
                                    for k, v in self.evaluation_settings.items()}
        try:
            EvalSpec(lengths=tuple(data["eval_lengths"]), documents=data["eval_documents"], **settings)
            self._check_evaluation_against(data)
        except EvalSpecError as exc:
            self._evaluation_error(exc)
            return False
        return True

    def _evaluation_error(self, exc: EvalSpecError) -> None:
        text = str(exc).rstrip(".")
        message = text[0].upper() + text[1:] + "."
        if exc.field in SPEC_FIELD_TO_FORM:
            self.form.add_error(SPEC_FIELD_TO_FORM[exc.field], message)
        elif exc.field in self.evaluation.fields:
            self.evaluation.add_error(exc.field, message)
        else:
            self.evaluation.add_error(None, message)

    def _check_evaluation_against(self, data: dict[str, Any]) -> None:
        """What needs the model: LongPPL's windows against its original context, RULER's prompts built with
        its tokenizer from the dataset's text (raises the EvalSpecError a run would raise)."""
        settings, base, dataset = self.evaluation_settings, data["base_model"], data["dataset"]
        suite, lengths = settings["suite"], data["eval_lengths"]
        if "longppl" in suite and settings["longppl_short_window"]:
            long_window = min(base.original_context, max(lengths))
            if settings["longppl_short_window"] >= long_window:
                raise EvalSpecError(
                    f"the LongPPL short window must be shorter than the evaluator's window: the original context "
                    f"({base.original_context} tokens), capped at the longest length ({long_window})",
                    "longppl_short_window")
        if "ruler" in suite:
            from gpu_workers.data.ruler import check_settings
            from gpu_workers.tokenizer_files import load_light_tokenizer

            try:
                tokenizer = load_light_tokenizer(base.source)  # tokenizer.json via `tokenizers`: no torch
            except OSError as exc:
                self.form.add_error("base_model", f"Could not load {base.name}'s tokenizer: {exc}")
                raise EvalSpecError(f"RULER prompts need {base.name}'s tokenizer", "ruler_tasks") from None
            try:
                check_settings(tokenizer, dataset.spec(), lengths, settings["ruler_samples"],
                               settings["ruler_tasks"])
            except DatasetError as exc:
                raise EvalSpecError(f"RULER haystacks could not be read from {dataset.name}: {exc}",
                                    "ruler_tasks") from None

    def cleaned(self) -> dict[str, Any]:
        """What ``services.submit_experiment`` takes."""
        data = dict(self.form.cleaned_data)
        data["methods"] = self.methods.methods()
        data["evaluations"] = self.evaluation_settings
        data["training"] = self.training_settings
        return data

    def errors(self) -> dict[str, list[str]]:
        """Field → messages, method rows as ``methods.<index>.<param>``: the API's 400 body."""
        out: dict[str, list[str]] = {field: list(messages) for field, messages in self.form.errors.items()}
        for field, messages in self.evaluation.errors.items():
            out[f"evaluations.{field}"] = list(messages)
        for field, messages in self.training.errors.items():
            out[f"training.{field}"] = list(messages)
        if self.methods.is_bound and not self.methods.management_form.is_valid():
            out["methods"] = ["The method rows are missing or malformed."]
            return out
        non_form = list(self.methods.non_form_errors())
        if non_form:
            out["methods"] = non_form
        for i, row in enumerate(self.methods.forms):
            for key, messages in row.errors_by_param().items():
                out[f"methods.{i}" if key == "__all__" else f"methods.{i}.{key}"] = messages
        return out


# --- the dataset page's mixture preview -----------------------------------------------------------------


class MixturePreviewForm(forms.Form):
    """GET parameters of the dataset page: which tokenizer and which data strategy to preview."""

    base_model = ModelChoice(queryset=BaseModel.objects.none(), label="Tokenizer of",
                             help_text="Lengths are counted in this model's tokens; its context sets the defaults.")
    strategy = forms.ChoiceField(choices=catalog.choices(catalog.DATA_STRATEGIES), initial=TrainSpec.data_strategy)
    threshold = forms.IntegerField(required=False, min_value=1, label="Long-document threshold",
                                   help_text="Tokens; blank = 4 × the model's original context.")
    keep_short_p = forms.FloatField(min_value=0, max_value=1, initial=0.15, label="Keep short documents with p")
    sources = forms.CharField(required=False, label="Sources to upsample", help_text="Comma-separated.")
    multiplier = forms.FloatField(min_value=0.01, initial=2.0)

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_model"].queryset = visible_base_models(user)
        first = self.fields["base_model"].queryset.first()
        if first is not None:
            self.fields["base_model"].initial = first.pk

    def clean_sources(self) -> list[str]:
        return [part.strip() for part in (self.cleaned_data.get("sources") or "").split(",") if part.strip()]


# --- the method page's chart ----------------------------------------------------------------------------


class ScalingChartForm(forms.Form):
    """Which base model and target length the method page draws its per-dimension scaling for (a GET form)."""

    base_model = ModelChoice(queryset=BaseModel.objects.none(), empty_label=None)
    target_length = forms.IntegerField(min_value=MIN_EVAL_LENGTH, max_value=MAX_EVAL_LENGTH,
                                       help_text="Length-dependent families are drawn at this input length.")

    def __init__(self, *args: Any, user: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.fields["base_model"].queryset = visible_base_models(user)

    def clean(self) -> dict[str, Any]:
        data = super().clean()
        base, target = data.get("base_model"), data.get("target_length")
        if base is not None and target is not None and target < base.original_context:
            self.add_error(
                "target_length",
                f"Target length must be at least the model's original context of {base.original_context} tokens.",
            )
        return data

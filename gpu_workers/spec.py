"""The only input the ML side accepts: plain, validated dataclasses that round-trip through JSON.

A Celery message carries ``RunSpec.to_json()``-able facts only, never ORM objects, so a run can be
replayed from a notebook with nothing but this dict.
"""

from __future__ import annotations

import math
import typing
from dataclasses import asdict, dataclass, field, fields
from typing import Any, ClassVar

from gpu_workers import catalog
from gpu_workers.catalog import RULER_TASKS

DATASET_KINDS = ("builtin", "local", "hf")
PPL_PROTOCOLS = catalog.keys(catalog.PERPLEXITY_PROTOCOLS)
EVALUATIONS = tuple(catalog.EVALUATIONS)
"""Every evaluation a run can do, in the order the pipeline runs them (:data:`gpu_workers.catalog.EVALUATIONS`)."""
MAX_RULER_SAMPLES = 500
NEEDLE_VARIANTS = catalog.keys(catalog.NEEDLE_VARIANTS)
NEEDLE_FORMATS = catalog.keys(catalog.NEEDLE_FORMATS)
PROMPT_EVALUATIONS = tuple(e.key for e in catalog.EVALUATIONS.values() if e.prompts)
MIN_PROMPT_LENGTH = 128
"""Passkey and needle prompts need room for instructions, needles and a question besides the haystack."""
SEARCH_MODES = {"longrope_search": "longrope", "longrope2_search": "longrope2"}
"""Method families whose run searches its factors first (``gpu_workers.search_step``), and the search's mode.
Here, torch-free, because the web asks which runs have a search step without importing the search."""


@dataclass(frozen=True)
class MethodSpec:
    family: str
    params: dict[str, Any] = field(default_factory=dict)


ALL_SOURCES = "all"
"""A haystack source meaning every document of the dataset, whatever its source."""
BUILTIN_HAYSTACK_SOURCE = "prose"
"""The demo corpus's natural-language source: its ``code`` documents make a haystack of Python source."""


@dataclass(frozen=True)
class DatasetSpec:
    kind: str = "builtin"
    path: str = ""
    text_field: str = "text"
    source_field: str = "source"
    haystack_source: str = ""
    """Which source's documents fill needle haystacks: a source value in the data, ``"all"``, or blank for
    the default (:attr:`haystack`). Specs written before this field existed read as blank."""
    corpus_dir: str = ""
    """Built-in corpus only: the directory it is built in and read from on the worker (the web side's
    ``CONTEXTLAB_CORPUS_DIR`` setting); blank = ``var/demo_corpus`` of the checkout. Older specs read as blank."""

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"dataset kind must be one of {DATASET_KINDS}, not {self.kind!r}")
        object.__setattr__(self, "haystack_source", str(self.haystack_source or "").strip())

    @property
    def haystack(self) -> str:
        """The haystack source in effect: the chosen one, else prose for the demo corpus and every document
        for a user's data (whose source names we cannot guess)."""
        if self.haystack_source:
            return self.haystack_source
        return BUILTIN_HAYSTACK_SOURCE if self.kind == "builtin" else ALL_SOURCES


class SpecError(ValueError):
    """A bad setting of a spec, the one error type of the spec layer: ``field`` names the setting and
    ``section`` the spec (``eval`` / ``train``), so the composer, the API and the CLI can each put the message
    beside what the user typed (:func:`experiments.composer.put_on_form`, ``errors["evaluations.<field>"]``,
    ``--eval-<field>``)."""

    def __init__(self, message: str, field: str, section: str = "eval") -> None:
        super().__init__(message)
        self.field = field
        self.section = section

    @property
    def sentence(self) -> str:
        """The message as a sentence: capitalised, one full stop."""
        text = str(self).rstrip(".")
        return text[:1].upper() + text[1:] + "."


def _json_value(name: str, hint: Any, value: Any, section: str) -> Any:
    """One JSON value as the dataclass field *name* of type *hint* wants it, or a SpecError naming the field.
    JSON has lists, not tuples, and numbers without a type: whole numbers are accepted as floats, not the
    reverse, and booleans are never numbers."""
    if hint is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{name} must be true or false, not {value!r}", name, section)
    if typing.get_origin(hint) is tuple:
        if not isinstance(value, list | tuple):
            raise SpecError(f"give {name} as a list, not {value!r}", name, section)
        (item,) = {a for a in typing.get_args(hint) if a is not Ellipsis}
        return tuple(_json_value(name, item, v, section) for v in value)
    args = typing.get_args(hint)
    if type(None) in args:
        if value is None:
            return None
        (hint,) = [a for a in args if a is not type(None)]
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if hint is int and number and float(value).is_integer():
        return int(value)
    if hint is float and number:
        return float(value)
    if hint is str and isinstance(value, str):
        return value
    kind = {int: "a whole number", float: "a number", str: "text"}.get(hint, str(hint))
    raise SpecError(f"{name} must be {kind}, not {value!r}", name, section)


class JsonSpec:
    """``to_json`` / ``from_json`` for a frozen dataclass of plain fields: the one round trip between a spec
    and what the database, a Celery message and the API hold. ``from_json`` checks each value's type and
    refuses unknown keys (a SpecError naming the key), then the dataclass checks the values."""

    section: ClassVar[str] = "eval"

    def to_json(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}  # type: ignore[call-overload]

    @classmethod
    def from_json(cls, data: Any) -> typing.Self:
        if not isinstance(data, dict):
            raise SpecError(f"give the settings as an object, not {data!r}", "__all__", cls.section)
        hints = typing.get_type_hints(cls)
        names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - names)
        if unknown:
            raise SpecError(f"unknown setting{'s' if len(unknown) > 1 else ''} {', '.join(map(str, unknown))}",
                            unknown[0], cls.section)
        return cls(**{k: _json_value(k, hints[k], v, cls.section) for k, v in data.items()})


def _depths(values: Any, field_name: str) -> tuple[float, ...]:
    depths = tuple(sorted({round(float(d), 4) for d in values}))
    if not depths:
        raise SpecError("give at least one depth", field_name)
    if depths[0] < 0 or depths[-1] > 1:
        raise SpecError("depths are fractions of the context, between 0 and 1", field_name)
    return depths


@dataclass(frozen=True)
class EvalSpec(JsonSpec):
    """What to evaluate and how; every number here is drawn or exported with its coordinates."""

    section: ClassVar[str] = "eval"

    lengths: tuple[int, ...]
    documents: int = 8
    protocol: str = "truncate"
    """Perplexity protocol: ``truncate`` (first L tokens of each document) or ``sliding`` (windows of L, stride)."""
    stride: int = 128
    """Sliding protocol: each window after the first scores only its last *stride* tokens."""
    suite: tuple[str, ...] = ("perplexity",)
    passkey_samples: int = 20
    passkey_depth: float | None = None
    """``None`` = a random depth per sample."""
    needle_depths: tuple[float, ...] = (0.0, 0.25, 0.5, 0.75, 1.0)
    needle_samples: int = 2
    """Needles per grid cell (and per needle-perplexity depth), each with its own key and value."""
    needle_variant: str = "single"
    needle_format: str = "passkey"
    needle_count: int = 4
    """Multi-key: needles in the haystack (one asked for); multi-value: values under the one key."""
    ruler_tasks: tuple[str, ...] = RULER_TASKS
    ruler_samples: int = 50
    """Samples per RULER task and length. 50, not fewer: the effective length compares two averages against an
    85% bar, and at 20 a cell the demo model's YaRN ×4 verdict at 512 turned on 0.001 (docs/evaluation.md)."""
    ruler_threshold: float = 0.85
    """Effective length: the longest length whose score stays at least this share of the score at the
    original context (RULER / NoLiMa use 85%)."""
    ruler_max_new_tokens: int = 0
    """Greedy tokens per RULER answer; 0 = the reference answer's tokens plus a little slack."""
    longppl_short_window: int = 0
    """LongPPL: the evaluator's short window in tokens; 0 = an eighth of the original context
    (the paper's 4K of 32K)."""
    longppl_gain: float = 2.0
    """LongPPL: a key token's loss must drop by more than this (nats) from the short window to the full one."""
    longppl_bound: float = 2.0
    """LongPPL: and its loss with the full window must be below this (nats)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(sorted({int(n) for n in self.lengths})))
        object.__setattr__(self, "suite", tuple(e for e in EVALUATIONS if e in set(self.suite)))
        if not self.lengths or self.lengths[0] < 16:
            raise SpecError("evaluation lengths must be at least 16 tokens", "lengths")
        if self.documents < 1:
            raise SpecError("at least one evaluation document is needed", "documents")
        if self.protocol not in PPL_PROTOCOLS:
            raise SpecError(f"perplexity protocol must be one of {PPL_PROTOCOLS}", "protocol")
        if self.protocol == "sliding" and not 1 <= self.stride <= self.lengths[0]:
            raise SpecError(
                f"the stride must be between 1 and the shortest length ({self.lengths[0]} tokens)", "stride"
            )
        if not self.suite:
            raise SpecError(f"pick at least one evaluation of {EVALUATIONS}", "suite")
        prompts = [e for e in self.suite if e in PROMPT_EVALUATIONS]
        if prompts and self.lengths[0] < MIN_PROMPT_LENGTH:
            raise SpecError(
                f"{' and '.join(prompts)} prompts need lengths of at least {MIN_PROMPT_LENGTH} tokens", "lengths"
            )
        self._check_passkey()
        self._check_needle()
        self._check_ruler()
        self._check_longppl()

    def _check_passkey(self) -> None:
        if not 1 <= self.passkey_samples <= 1000:
            raise SpecError("passkey samples per length must be between 1 and 1000", "passkey_samples")
        if self.passkey_depth is not None and not 0 <= self.passkey_depth <= 1:
            raise SpecError("the passkey depth is a fraction between 0 and 1 (blank = random)", "passkey_depth")

    def _check_needle(self) -> None:
        object.__setattr__(self, "needle_depths", _depths(self.needle_depths, "needle_depths"))
        if not 1 <= self.needle_samples <= 100:
            raise SpecError("needles per cell must be between 1 and 100", "needle_samples")
        if self.needle_variant not in NEEDLE_VARIANTS:
            raise SpecError(f"needle variant must be one of {NEEDLE_VARIANTS}", "needle_variant")
        if self.needle_format not in NEEDLE_FORMATS:
            raise SpecError(f"needle format must be one of {NEEDLE_FORMATS}", "needle_format")
        if self.needle_variant != "single" and self.needle_format != "magic_number":
            raise SpecError("multi-key and multi-value needles use the magic-number format", "needle_format")
        if not 2 <= self.needle_count <= 16:
            raise SpecError("multi-key / multi-value needles: between 2 and 16", "needle_count")

    def _check_ruler(self) -> None:
        tasks = tuple(dict.fromkeys(str(t) for t in self.ruler_tasks))
        unknown = [t for t in tasks if t not in RULER_TASKS]
        if unknown:
            raise SpecError(f"unknown RULER task {', '.join(unknown)}; the tasks are {', '.join(RULER_TASKS)}",
                                "ruler_tasks")
        object.__setattr__(self, "ruler_tasks", tuple(t for t in RULER_TASKS if t in tasks))
        if self.wants("ruler") and not self.ruler_tasks:
            raise SpecError("pick at least one RULER task", "ruler_tasks")
        if not 1 <= self.ruler_samples <= MAX_RULER_SAMPLES:
            raise SpecError(f"RULER samples per task and length must be between 1 and {MAX_RULER_SAMPLES}",
                                "ruler_samples")
        threshold = float(self.ruler_threshold)
        if math.isnan(threshold) or not 0 < threshold <= 1:
            raise SpecError("the effective-length threshold is a share of the score at the original context, "
                                "above 0 and at most 1 (RULER and NoLiMa use 0.85)", "ruler_threshold")
        if not 0 <= self.ruler_max_new_tokens <= 512:
            raise SpecError("RULER answer tokens must be between 0 (automatic) and 512", "ruler_max_new_tokens")

    def _check_longppl(self) -> None:
        if self.longppl_short_window != 0 and self.longppl_short_window < 16:
            raise SpecError("the LongPPL short window needs at least 16 tokens (0 = an eighth of the original "
                                "context)", "longppl_short_window")
        for name, value in (("longppl_gain", self.longppl_gain), ("longppl_bound", self.longppl_bound)):
            if math.isnan(float(value)) or not float(value) > 0:
                raise SpecError("LongPPL's key-token thresholds are positive numbers of nats (the paper: 2)", name)

    def wants(self, evaluation: str) -> bool:
        return evaluation in self.suite


TRAIN_MODES = catalog.keys(catalog.TRAINING_MODES)
MAX_POSE_CHUNKS = 16
DATA_STRATEGIES = catalog.keys(catalog.DATA_STRATEGIES)


@dataclass(frozen=True)
class TrainSpec(JsonSpec):
    """A training step between applying the method and evaluating it; ``mode="none"`` skips it."""

    section: ClassVar[str] = "train"

    mode: str = "none"
    steps: int = 100
    learning_rate: float = 3e-4
    warmup_steps: int = 10
    batch_size: int = 1
    grad_accum: int = 1
    train_length: int = 0
    """Tokens per training sequence; 0 = the experiment's target length (the original context with PoSE)."""
    gradient_checkpointing: bool = False
    lora: bool = False
    lora_rank: int = 8
    lora_alpha: int = 16
    train_embeddings_and_norms: bool = True
    """LongLoRA's finding: with LoRA, also train the embeddings and norm layers (ignored for full fine-tuning)."""
    s2_attn: bool = False
    """Shifted sparse attention while training (LongLoRA); evaluation always uses full attention."""
    s2_group_fraction: float = 0.25
    mixed_windows: bool = False
    """LongRoPE2: short sequences of the original length interleaved with long ones, each trained with the RoPE
    the method uses at that length when evaluated (LongRoPE's short factors, dynamic NTK's original base)."""
    short_fraction: float = 0.5
    pose: bool = False
    """PoSE (Zhu et al. 2024): train at a short window whose position ids skip forward to span the target
    length, so every relative distance up to the target is seen without training at the target."""
    pose_chunks: int = 2
    """PoSE: chunks each training sequence is cut into; all but the first get a skip in their position ids."""
    data_strategy: str = "per_source"
    long_threshold: int = 0
    """Documents at least this long count as long for upsampling; 0 = the training length."""
    keep_short_p: float = 0.15
    upsample_sources: tuple[str, ...] = ()
    upsample_multiplier: float = 2.0
    passkey_fraction: float = 0.0
    """Share of synthetic passkey sequences mixed into the training data (keeps retrieval alive)."""
    checkpoint_every: int = 50
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "upsample_sources", tuple(self.upsample_sources))
        checks = [
            (self.mode in TRAIN_MODES, "mode", f"training mode must be one of {TRAIN_MODES}"),
            (1 <= self.steps <= 1_000_000, "steps", "steps must be between 1 and 1,000,000"),
            (0 < self.learning_rate < 1, "learning_rate", "the learning rate must be between 0 and 1"),
            (0 <= self.warmup_steps <= self.steps, "warmup_steps", "warm-up must be between 0 and the steps"),
            (1 <= self.batch_size <= 1024, "batch_size", "batch size must be between 1 and 1024"),
            (1 <= self.grad_accum <= 1024, "grad_accum", "gradient accumulation must be between 1 and 1024"),
            (self.train_length == 0 or self.train_length >= 16, "train_length", "train at 16 tokens or more"),
            (1 <= self.lora_rank <= 1024, "lora_rank", "LoRA rank must be between 1 and 1024"),
            (self.lora_alpha > 0, "lora_alpha", "LoRA alpha must be positive"),
            (0 < self.s2_group_fraction <= 0.5, "s2_group_fraction", "S2-Attn groups are at most half a sequence"),
            (0 < self.short_fraction < 1, "short_fraction", "the short-window share must be between 0 and 1"),
            (1 <= self.pose_chunks <= MAX_POSE_CHUNKS, "pose_chunks",
             f"PoSE chunks must be between 1 and {MAX_POSE_CHUNKS}"),
            # PoSE's short window already stands in for the long one: S2-Attn would shorten attention again
            # (and its groups assume contiguous positions), and mixed windows would add a second, conflicting
            # notion of which steps are short.
            (not (self.pose and self.s2_attn), "s2_attn", "S2-Attn cannot be combined with PoSE: PoSE already "
             "trains at a short window; turn one of them off"),
            (not (self.pose and self.mixed_windows), "mixed_windows", "mixed context windows cannot be combined "
             "with PoSE: PoSE's short window already spans the target positions; turn one of them off"),
            (self.data_strategy in DATA_STRATEGIES, "data_strategy", f"data strategy must be one of {DATA_STRATEGIES}"),
            (self.long_threshold >= 0, "long_threshold", "the long-document threshold cannot be negative"),
            (0 <= self.keep_short_p <= 1, "keep_short_p", "the short-document keep probability is between 0 and 1"),
            (self.upsample_multiplier > 0, "upsample_multiplier", "the multiplier must be positive"),
            (self.data_strategy != "upsample_sources" or bool(self.upsample_sources), "upsample_sources",
             "name the sources to upsample"),
            (0 <= self.passkey_fraction < 1, "passkey_fraction", "the passkey share must be in [0, 1)"),
            (self.checkpoint_every >= 1, "checkpoint_every", "checkpoint at least every step count ≥ 1"),
        ]
        for ok, name, message in checks:
            if not ok:
                raise SpecError(message, name, "train")

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    def length_for(self, target_length: int, original_length: int | None = None) -> int:
        """Tokens per training sequence. Blank means the target, except with PoSE, whose whole point is to train
        at the original window while the position ids reach the target: it needs ``original_length``."""
        if self.train_length:
            return self.train_length
        if self.pose:
            if original_length is None:
                raise ValueError("with PoSE a blank training length means the original context: pass it")
            return original_length
        return target_length


TRAIN_LAUNCHERS = ("accelerate", "torchrun")


@dataclass(frozen=True)
class RunSpec:
    run_id: str
    model_source: str
    dataset: DatasetSpec
    method: MethodSpec
    target_length: int
    eval: EvalSpec
    seed: int = 0
    device: str = "auto"
    """``auto`` picks CUDA when present, the CPU otherwise; ``cpu`` / ``cuda`` force one."""
    train: TrainSpec = field(default_factory=TrainSpec)
    work_dir: str = ""
    """A directory that outlives one attempt (checkpoints, search state): a retried run resumes from it."""
    train_processes: int = 1
    """Processes the training step runs in (the worker's ``CONTEXTLAB_TRAIN_PROCESSES``): above 1, the worker
    launches them (:mod:`gpu_workers.train.launch`), one per GPU."""
    train_launcher: str = "accelerate"
    """What starts them: ``accelerate`` (GPUs) or ``torchrun`` (also several CPU processes, over gloo)."""

    def __post_init__(self) -> None:
        if isinstance(self.train_processes, bool) or not isinstance(self.train_processes, int) \
                or self.train_processes < 1:
            raise ValueError(f"train_processes must be a whole number of at least 1, not {self.train_processes!r}")
        if self.train_launcher not in TRAIN_LAUNCHERS:
            raise ValueError(f"train_launcher must be {' or '.join(TRAIN_LAUNCHERS)}, not {self.train_launcher!r}")

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["eval"] = self.eval.to_json()
        data["train"] = self.train.to_json()
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunSpec:
        return cls(
            run_id=data["run_id"],
            model_source=data["model_source"],
            dataset=DatasetSpec(**data["dataset"]),
            method=MethodSpec(**data["method"]),
            target_length=int(data["target_length"]),
            eval=EvalSpec.from_json(data["eval"]),
            seed=int(data.get("seed", 0)),
            device=data.get("device", "auto"),
            train=TrainSpec.from_json(data.get("train", {})),
            work_dir=data.get("work_dir", ""),
            train_processes=int(data.get("train_processes", 1)),
            train_launcher=data.get("train_launcher", "accelerate"),
        )

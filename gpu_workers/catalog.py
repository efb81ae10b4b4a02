"""The one vocabulary of Context Lab: evaluations, metrics, protocols, needle formats, training modes, data
strategies and the factor search's defaults, each defined once, here.

Everything else derives from this module: the specs' checks (:mod:`gpu_workers.spec`), the search's config
(:mod:`gpu_workers.search.config`) and the search rows' parameters (:mod:`gpu_workers.methods.longrope_search`);
on the web side the composer's choices and labels (``experiments.forms``), the leaderboards' metric lists and
which way each ranks (``experiments.leaderboard``, ``experiments.pivot``, ``experiments.selectors``), the
experiment page's chart series (``experiments.evaluation_charts``) and the API's validation (``experiments.api``).

Pure Python on purpose: the web process imports it and must never import torch or transformers
(``tests/web/test_web_process_imports.py``; ``tests/ml/test_catalog.py`` checks this module on its own). A
metric an evaluation emits that is not listed here fails ``tests/ml/test_catalog.py``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

# --- choices -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Choice:
    """One value of a closed set and what a person reads for it."""

    key: str
    label: str


def keys(choices: Iterable[Choice]) -> tuple[str, ...]:
    return tuple(c.key for c in choices)


def choices(items: Iterable[Choice]) -> list[tuple[str, str]]:
    """``[(key, label), …]``: a Django ``ChoiceField``'s choices."""
    return [(c.key, c.label) for c in items]


PERPLEXITY_PROTOCOLS = (
    Choice("truncate", "truncate: each document's first L tokens"),
    Choice("sliding", "sliding window: windows of L tokens, moved by the stride"),
)
"""How perplexity reads a document at length L (``EvalSpec.protocol``); the first is the default."""
NEEDLE_FORMATS = (
    Choice("passkey", "passkey sentence"),
    Choice("magic_number", "magic number (RULER style)"),
)
"""What a needle says (``EvalSpec.needle_format``); the first is the default."""
NEEDLE_VARIANTS = (
    Choice("single", "single needle"),
    Choice("multikey", "multi-key (distractor needles)"),
    Choice("multivalue", "multi-value (all values of one key)"),
)
"""How many needles a prompt holds and which are asked for (``EvalSpec.needle_variant``); the first is the
default, and every other variant needs the magic-number format."""
TRAINING_MODES = (
    Choice("none", "none"),
    Choice("finetune", "fine-tune"),
    Choice("continual_pretrain", "continual pretraining"),
)
"""``TrainSpec.mode``; ``none`` (the default) skips the training step."""
DATA_STRATEGIES = (
    Choice("per_source", "per-source length upsampling"),
    Choice("global", "global length upsampling"),
    Choice("upsample_sources", "upsample chosen sources"),
    Choice("truncate", "truncate at the original length"),
)
"""How training documents are mixed (Fu et al. 2024; ``TrainSpec.data_strategy``); the first is the default."""

RULER_TASKS = (
    "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
    "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe", "niah_single_word", "niah_multikey_word",
)
"""The RULER task set (``gpu_workers.data.ruler.TASKS`` defines what each task is)."""
RULER_GROUPS = ("retrieval", "multi_hop", "aggregation")
"""RULER's task categories: each has a per-length mean, a reference score and an effective length."""


# --- evaluations ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Evaluation:
    """One evaluation a run can do (``EvalSpec.suite`` names them by ``key``)."""

    key: str
    label: str
    """The composer's checkbox, the experiment page's and the compare page's heading."""
    default: bool = True
    """In the composer's default suite (RULER's greedy decoding of 13 tasks is opt-in)."""
    prompts: bool = False
    """Builds prompts (instructions, needles, a question): its lengths must leave room for them."""
    documents: bool = False
    """Reads the evaluation documents, each at least the longest length: the composer checks enough exist."""
    haystack: bool = False
    """Fills needle haystacks from the dataset: the composer checks it holds the longest length in tokens."""


_EVALUATIONS = (
    Evaluation("perplexity", "Perplexity against length", documents=True),
    Evaluation("longppl", "Key-token perplexity (LongPPL)", documents=True),
    Evaluation("passkey", "Passkey retrieval", prompts=True),
    Evaluation("needle", "Needle-in-a-haystack grid", prompts=True, haystack=True),
    Evaluation("needle_perplexity", "Needle-driven perplexity", prompts=True, haystack=True),
    Evaluation("ruler", "RULER task set (effective length)", default=False),
    Evaluation("retention", "Short-context retention", documents=True),
    Evaluation("memory", "Memory and time"),
)
EVALUATIONS: Mapping[str, Evaluation] = MappingProxyType({e.key: e for e in _EVALUATIONS})
"""Every evaluation, by key, in the order the pipeline runs them (``tuple(EVALUATIONS)`` is the keys)."""
STEPS = ("search", "train")
"""The run's other steps that report numbers (fitness, loss, wall time); no leaderboard ranks them."""


def evaluation_label(key: str) -> str:
    found = EVALUATIONS.get(key)
    return found.label if found else key


# --- metrics -------------------------------------------------------------------------------------------------

NEEDLE_GRID, RETENTION_TABLE, RULER_TABLE, SEARCH_PANEL, TRAINING_CHART = (
    "needle_grid", "retention_table", "ruler_table", "search", "train_loss")
PANELS = (NEEDLE_GRID, RETENTION_TABLE, RULER_TABLE, SEARCH_PANEL, TRAINING_CHART)
"""Places on the experiment page that are not a line chart over the lengths (every other :attr:`Metric.chart`
value names a line series)."""

AT_EVAL_LENGTHS, AT_OWN_LENGTH, ONCE, PER_STEP = "eval", "own", "once", "step"


@dataclass(frozen=True)
class Metric:
    """One measured quantity (``Measurement.metric`` is its ``key``)."""

    key: str
    label: str
    """What a table header, a filter option or an axis says (the unit included where there is one)."""
    unit: str
    """``""`` (a pure number such as a perplexity), ``"fraction"`` (0–1), ``"ratio"``, ``"tokens"``, ``"s"``,
    ``"MB"``, ``"nats"``, ``"count"``, ``"factor"``."""
    lower_is_better: bool
    ranked: bool = False
    """Offered by the leaderboard's *Ranking* view."""
    chart: str = ""
    """Where the experiment page draws it: the name of its line series over the lengths, one of
    :data:`PANELS`, or ``""`` (not drawn; in the run's measurements and the CSV)."""
    evaluation: str = ""
    """The evaluation (or step of :data:`STEPS`) that emits it, whose protocol it is ranked under."""
    pivoted: bool = False
    """Offered by the pivot leaderboard's *By length* view."""
    summary: str = ""
    """Its column header in the pivot leaderboard's *Summary* view; ``""`` = no column."""
    lengths: str = AT_EVAL_LENGTHS
    """``eval``: one value per evaluation length; ``own``: at a length of its own (retention: inside the original
    context); ``once``: once per run (an effective length); ``step``: per training step or search generation."""
    log_scale: bool = False
    """A perplexity: charts draw it on a log axis."""

    @property
    def length_free(self) -> bool:
        """Measured once per run, not per context length: the leaderboard ignores its length filter."""
        return self.lengths == ONCE


def _ruler_metrics() -> list[Metric]:
    out = [
        Metric("ruler_average", "RULER average", "fraction", False, ranked=True, chart="ruler_average",
               evaluation="ruler", pivoted=True, summary="RULER avg"),
        Metric("ruler_effective_length", "RULER effective length (tokens)", "tokens", False, ranked=True,
               chart=RULER_TABLE, evaluation="ruler", summary="RULER eff. length", lengths=ONCE),
        Metric("ruler_reference", "RULER reference score (original context)", "fraction", False, chart=RULER_TABLE,
               evaluation="ruler", lengths=AT_OWN_LENGTH),
    ]
    out += [Metric(f"ruler_{task}", f"RULER {task}", "fraction", False, chart=RULER_TABLE, evaluation="ruler")
            for task in RULER_TASKS]
    for group in RULER_GROUPS:
        out += [
            Metric(f"ruler_group_{group}", f"RULER {group} average", "fraction", False, chart=RULER_TABLE,
                   evaluation="ruler"),
            Metric(f"ruler_reference_{group}", f"RULER {group} reference score", "fraction", False,
                   chart=RULER_TABLE, evaluation="ruler", lengths=AT_OWN_LENGTH),
            Metric(f"ruler_effective_length_{group}", f"RULER {group} effective length (tokens)", "tokens", False,
                   chart=RULER_TABLE, evaluation="ruler", lengths=ONCE),
        ]
    return out


_METRICS = (
    Metric("perplexity", "perplexity", "", True, ranked=True, chart="perplexity", evaluation="perplexity",
           pivoted=True, summary="perplexity", log_scale=True),
    Metric("longppl", "key-token perplexity (LongPPL)", "", True, ranked=True, chart="longppl", evaluation="longppl",
           pivoted=True, summary="LongPPL", log_scale=True),
    Metric("longppl_key_tokens", "LongPPL key tokens", "count", False, chart="longppl_key_tokens",
           evaluation="longppl"),
    Metric("passkey_accuracy", "passkey accuracy", "fraction", False, ranked=True, chart="passkey",
           evaluation="passkey", pivoted=True, summary="passkey"),
    Metric("needle_exact", "needle exact match (mean over depths)", "fraction", False, chart=NEEDLE_GRID,
           evaluation="needle", pivoted=True, summary="needle"),
    Metric("needle_partial", "needle partial match (mean over depths)", "fraction", False, chart=NEEDLE_GRID,
           evaluation="needle"),
    Metric("needle_perplexity", "needle-driven perplexity", "", True, ranked=True, chart="needle_perplexity",
           evaluation="needle_perplexity", pivoted=True, log_scale=True),
    *_ruler_metrics(),
    Metric("short_perplexity", "short-context perplexity", "", True, chart=RETENTION_TABLE, evaluation="retention",
           lengths=AT_OWN_LENGTH, log_scale=True),
    Metric("short_perplexity_base", "short-context perplexity of the base model", "", True, chart=RETENTION_TABLE,
           evaluation="retention", lengths=AT_OWN_LENGTH, log_scale=True),
    Metric("retention_perplexity", "short-context retention (base ppl ÷ ppl)", "ratio", False, ranked=True,
           chart=RETENTION_TABLE, evaluation="retention", pivoted=True, summary="retention", lengths=AT_OWN_LENGTH),
    Metric("short_passkey", "short-context passkey accuracy", "fraction", False, chart=RETENTION_TABLE,
           evaluation="retention", lengths=AT_OWN_LENGTH),
    Metric("short_passkey_base", "short-context passkey accuracy of the base model", "fraction", False,
           chart=RETENTION_TABLE, evaluation="retention", lengths=AT_OWN_LENGTH),
    Metric("retention_passkey", "passkey retention (accuracy ÷ base accuracy)", "ratio", False, chart=RETENTION_TABLE,
           evaluation="retention", lengths=AT_OWN_LENGTH),
    Metric("forward_seconds", "prefill time (s)", "s", True, chart="forward_seconds", evaluation="memory",
           pivoted=True, summary="prefill s"),
    Metric("kv_cache_mb", "KV cache (MB)", "MB", True, chart="kv_cache_mb", evaluation="memory"),
    Metric("kv_cache_mb_predicted", "KV cache predicted (MB)", "MB", True, chart="kv_cache_mb_predicted",
           evaluation="memory"),
    Metric("peak_memory_mb", "peak CUDA memory (MB)", "MB", True, chart="peak_memory_mb", evaluation="memory"),
    Metric("perplexity_peak_memory_mb", "peak CUDA memory of the perplexity step (MB)", "MB", True,
           evaluation="perplexity", lengths=ONCE),
    *(Metric(f"{step}_seconds", f"{step} step wall time (s)", "s", True, evaluation=step, lengths=ONCE)
      for step in (*EVALUATIONS, *STEPS)),
    Metric("search_best", "search: best fitness", "", True, chart=SEARCH_PANEL, evaluation="search",
           lengths=PER_STEP),
    Metric("search_median", "search: median fitness", "", True, chart=SEARCH_PANEL, evaluation="search",
           lengths=PER_STEP),
    Metric("search_evaluations", "search: fitness evaluations", "count", False, chart=SEARCH_PANEL,
           evaluation="search", lengths=PER_STEP),
    Metric("search_factor", "search: best factor per pair", "factor", False, chart=SEARCH_PANEL,
           evaluation="search", lengths=PER_STEP),
    Metric("search_critical_dim", "search: critical dimension (pair)", "count", False, chart=SEARCH_PANEL,
           evaluation="search", lengths=ONCE),
    Metric("train_loss", "training loss (nats)", "nats", True, chart=TRAINING_CHART, evaluation="train",
           lengths=PER_STEP),
)
METRICS: Mapping[str, Metric] = MappingProxyType({m.key: m for m in _METRICS})
"""Every metric a run reports, by key: the headline ones first, then per evaluation in pipeline order."""
assert len(METRICS) == len(_METRICS), "a metric is listed twice"
assert all(m.evaluation in EVALUATIONS or m.evaluation in STEPS for m in _METRICS)
assert all(not m.summary or m.pivoted or m.length_free for m in _METRICS)


def metric_labels(which: Iterable[Metric]) -> dict[str, str]:
    """``{key: label}`` in catalog order: what a filter's options are made of."""
    return {m.key: m.label for m in which}


RANKED_METRICS = tuple(m for m in _METRICS if m.ranked)
"""The leaderboard's *Ranking* view."""
PIVOT_METRICS = tuple(m for m in _METRICS if m.pivoted)
"""The pivot leaderboard's *By length* view."""
SUMMARY_METRICS = tuple(m for m in _METRICS if m.summary)
"""The pivot leaderboard's *Summary* columns, in order."""
LOWER_IS_BETTER = frozenset(m.key for m in _METRICS if m.lower_is_better)
LENGTH_FREE_METRICS = frozenset(m.key for m in _METRICS if m.length_free)


# --- the factor search ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SearchDefaults:
    """The LongRoPE / LongRoPE2 search's hyper-parameters when nobody sets them."""

    population: int = 8
    """Candidates per generation (the paper: 64)."""
    parents: int = 3
    """Best candidates kept as parents each generation."""
    generations: int = 10
    """Generations after the initial population (the paper: 40)."""
    mutation_rate: float = 0.3
    mutation_scale: float = 0.1
    crossover_rate: float = 0.5
    patience: int = 3
    """Stop after this many generations without improvement; 0 = never stop early."""
    search_documents: int = 8
    """Training documents the fitness is measured on (the composer's; :class:`SearchConfig` has no documents)."""
    seed: int = 0


SEARCH_DEFAULTS = SearchDefaults()
"""The one set of search defaults: ``SearchConfig``'s field defaults, the search rows' parameter defaults (the
composer's placeholders and what a blank input means) and the API's (``/api/v1/methods`` and a posted search row
without them) all read it.

Chosen: population 8 × 3 parents, **10 generations, patience 3, 8 search documents**, the composer's values, not
``SearchConfig``'s former 4 generations / patience 2 (with 4 documents). ``docs/search.md`` measured the composer's
on the demo model (``benches/search_vs_baselines.py``): with 4 generations, patience 2 and 4 documents the search
barely left its YaRN seed and did not beat YaRN ×8 on held-out documents; with these it does, at 4× and 8×, in
1–3 min on 2 CPU cores (58 evaluations). It is a cheap default, not the paper's schedule: in
``benches/search_efficiency.py`` 8×3 with patience 3 stops after 28–43 evaluations 4–5.5 % above the best of the
64×32, 40-generation reference (1,344 evaluations); raise population and patience for a closer search. Tests that
need a short search set their own ``generations`` / ``patience``."""

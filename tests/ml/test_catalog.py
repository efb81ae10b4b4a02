"""The one vocabulary (:mod:`gpu_workers.catalog`): complete, torch-free, and what everything else derives from.

* every metric a run emits is in the catalog, and nothing in the catalog is dead (read from the emitting code);
* the catalog imports nothing heavy, in a fresh interpreter (the web process imports it);
* the LongRoPE search has one set of defaults: ``SearchConfig()``, the composer's search inputs and the API agree;
* the spec's checks, the forms' choices and the leaderboards' lists are the catalog's.
"""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

from gpu_workers import catalog
from gpu_workers.catalog import SEARCH_DEFAULTS

ROOT = Path(__file__).resolve().parents[2]
EMITTING = ("gpu_workers/evaluate", "gpu_workers/pipeline.py", "gpu_workers/search_step.py")
LITERAL = re.compile(r"Measurement\(\s*\"([a-z0-9_]+)\"")
CONSTANT = re.compile(r"^[A-Z_]*METRIC\s*=\s*\"([a-z0-9_]+)\"", re.MULTILINE)


def _sources() -> dict[str, str]:
    files: list[Path] = []
    for place in EMITTING:
        path = ROOT / place
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    return {str(f.relative_to(ROOT)): f.read_text() for f in files}


def emitted_metrics() -> set[str]:
    """Every metric name the ML side reports: the ``Measurement("…")`` literals and ``*_METRIC`` constants of the
    emitting modules, plus the names they build (RULER per task and group, each step's wall time)."""
    from gpu_workers.evaluate import ruler

    found: set[str] = set()
    for text in _sources().values():
        found |= set(LITERAL.findall(text)) | set(CONSTANT.findall(text))
    found |= {ruler.metric_name(task) for task in catalog.RULER_TASKS}
    for group in catalog.RULER_GROUPS:
        found |= {ruler.group_metric(group), f"{ruler.REFERENCE_METRIC}_{group}",
                  f"{ruler.EFFECTIVE_LENGTH_METRIC}_{group}"}
    found |= {f"{step}_seconds" for step in (*catalog.EVALUATIONS, *catalog.STEPS)}
    return found


def test_the_reader_finds_the_literals() -> None:
    literals = {name for text in _sources().values() for name in LITERAL.findall(text)}
    assert {"perplexity", "passkey_accuracy", "needle_exact", "longppl", "forward_seconds", "retention_perplexity",
            "search_best", "train_loss"} <= literals
    # The dynamic names the test adds are the ones the code builds: f-strings stay f-strings.
    dynamic = {text.count('Measurement(f"') for text in _sources().values()}
    assert dynamic - {0}, "no f-string metric names found: the reader is out of date"


def test_every_emitted_metric_is_in_the_catalog() -> None:
    missing = sorted(emitted_metrics() - set(catalog.METRICS))
    assert not missing, f"metrics emitted but not in gpu_workers/catalog.py: {missing}"


def test_the_catalog_has_no_dead_metric() -> None:
    dead = sorted(set(catalog.METRICS) - emitted_metrics())
    assert not dead, f"metrics in the catalog that nothing emits: {dead}"
    assert "loss" not in catalog.METRICS  # the training loss is train_loss


def test_every_metric_names_its_evaluation_and_a_known_place() -> None:
    for metric in catalog.METRICS.values():
        assert metric.label and metric.evaluation in (*catalog.EVALUATIONS, *catalog.STEPS), metric
        assert metric.lengths in (catalog.AT_EVAL_LENGTHS, catalog.AT_OWN_LENGTH, catalog.ONCE, catalog.PER_STEP)
        assert not metric.ranked or metric.chart, f"{metric.key} is ranked but drawn nowhere"
    assert {m.key for m in catalog.RANKED_METRICS} == {
        "perplexity", "longppl", "passkey_accuracy", "needle_perplexity", "ruler_average", "ruler_effective_length",
        "retention_perplexity"}


HEAVY = ("torch", "transformers", "numpy", "django", "accelerate", "peft")


def test_the_catalog_imports_nothing_heavy_in_a_fresh_interpreter() -> None:
    code = (
        "import json, sys\n"
        "import gpu_workers.catalog\n"
        f"heavy = sorted(m for m in sys.modules if m.split('.')[0] in {HEAVY!r})\n"
        "ours = sorted(m for m in sys.modules if m.startswith('gpu_workers'))\n"
        "print(json.dumps([heavy, ours]))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    heavy, ours = json.loads(done.stdout.strip().splitlines()[-1])
    assert heavy == [], f"gpu_workers.catalog imported {heavy}"
    assert ours == ["gpu_workers", "gpu_workers.catalog"], f"gpu_workers.catalog imported {ours}"


# --- the search's one set of defaults ------------------------------------------------------------------------

SEARCH_FIELDS = [f.name for f in dataclasses.fields(SEARCH_DEFAULTS)]
CONFIG_FIELDS = [name for name in SEARCH_FIELDS if name != "search_documents"]


def test_search_config_defaults_are_the_catalog_s() -> None:
    from gpu_workers.search import SearchConfig

    config = SearchConfig()
    assert {name: getattr(config, name) for name in CONFIG_FIELDS} == {
        name: getattr(SEARCH_DEFAULTS, name) for name in CONFIG_FIELDS}
    assert (config.generations, config.patience) == (10, 3)  # docs/search.md: the defaults that beat YaRN
    config.validate()


def test_search_rows_default_to_the_catalog_and_build_the_same_config() -> None:
    from gpu_workers.methods import RopeFacts, validate
    from gpu_workers.methods.longrope_search import LONGROPE, LONGROPE2, search_config
    from gpu_workers.search import SearchConfig

    for family in (LONGROPE, LONGROPE2):
        defaults = {p.name: p.default for p in family.params}
        assert {name: defaults[name] for name in SEARCH_FIELDS} == dataclasses.asdict(SEARCH_DEFAULTS)
    facts = RopeFacts(has_rope=True, head_dim=32, rope_theta=10000.0, original_context=256)
    # A row with nothing but its factor (the API's minimal body) and the config the worker builds from it.
    clean = validate("longrope_search", {"factor": 2.0}, facts, 512)
    assert {name: clean[name] for name in SEARCH_FIELDS} == dataclasses.asdict(SEARCH_DEFAULTS)
    for params in (clean, {"factor": 2.0}):  # the fallbacks inside search_config, too
        built = search_config(facts, 512, params, "longrope")
        assert built == SearchConfig.for_model(facts, 512, factor=2.0, mode="longrope")


def test_the_composer_and_the_api_offer_the_catalog_s_search_defaults() -> None:
    from experiments import api
    from experiments.method_forms import MethodRowForm, param_field_name

    row = MethodRowForm()
    families = {f["name"]: f for f in api.families_json()}
    for family in ("longrope_search", "longrope2_search"):
        for name in SEARCH_FIELDS:
            expected = getattr(SEARCH_DEFAULTS, name)
            placeholder = row.fields[param_field_name(family, name)].widget.attrs["placeholder"]
            assert placeholder == (f"{expected:g}" if isinstance(expected, float) else str(expected)), (family, name)
            api_default = next(p["default"] for p in families[family]["params"] if p["name"] == name)
            assert api_default == expected, (family, name)


# --- what derives from the catalog ---------------------------------------------------------------------------


def test_the_spec_and_the_forms_use_the_catalog_s_choices() -> None:
    from experiments import composer_forms as forms
    from gpu_workers import spec

    assert tuple(catalog.EVALUATIONS) == spec.EVALUATIONS
    assert spec.PPL_PROTOCOLS == ("truncate", "sliding")
    assert catalog.keys(catalog.NEEDLE_FORMATS) == spec.NEEDLE_FORMATS
    assert catalog.keys(catalog.TRAINING_MODES) == spec.TRAIN_MODES
    assert catalog.keys(catalog.DATA_STRATEGIES) == spec.DATA_STRATEGIES
    fields = {**forms.EvaluationForm.base_fields, **forms.TrainingForm.base_fields}
    assert fields["suite"].choices == [(e.key, e.label) for e in catalog.EVALUATIONS.values()]
    for name, vocabulary in (("protocol", catalog.PERPLEXITY_PROTOCOLS), ("needle_format", catalog.NEEDLE_FORMATS),
                             ("needle_variant", catalog.NEEDLE_VARIANTS), ("mode", catalog.TRAINING_MODES),
                             ("data_strategy", catalog.DATA_STRATEGIES)):
        assert fields[name].choices == catalog.choices(vocabulary), name
        assert fields[name].initial == vocabulary[0].key, name
    assert "ruler" not in forms.DEFAULT_SUITE and len(forms.DEFAULT_SUITE) == len(catalog.EVALUATIONS) - 1


def test_the_leaderboards_and_charts_use_the_catalog_s_metrics() -> None:
    from experiments import evaluation_charts, leaderboard, pivot, selectors

    assert list(leaderboard.METRICS) == [m.key for m in catalog.RANKED_METRICS]
    assert set(leaderboard.METRICS) <= set(pivot.PIVOT_METRICS) | selectors.LENGTH_FREE_METRICS
    assert {"needle_exact", "forward_seconds"} <= set(pivot.PIVOT_METRICS)
    assert [c.metric for c in pivot.SUMMARY_COLUMNS] == [m.key for m in catalog.SUMMARY_METRICS]
    assert {"perplexity", "longppl", "needle_perplexity", "forward_seconds"} <= selectors.LOWER_IS_BETTER
    assert not selectors.LOWER_IS_BETTER & {"passkey_accuracy", "needle_exact", "ruler_average",
                                            "retention_perplexity", "ruler_effective_length"}
    assert evaluation_charts.SERIES_METRICS["passkey"] == "passkey_accuracy"
    assert set(evaluation_charts.SERIES_METRICS.values()) <= set(catalog.METRICS)

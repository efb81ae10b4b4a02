"""The reader: results are right and every selector costs the same number of queries for 1 or 5 runs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from experiments import selectors
from experiments.models import Measurement, Run, Team
from tests.web.factories import make_experiment


@pytest.fixture(params=[1, 5])
def sized(request: pytest.FixtureRequest, team: Team, owner: Any, base_model: Any, dataset: Any) -> Any:
    experiment = make_experiment(team, owner, base_model, dataset, runs=request.param, lengths=(256, 512, 1024))
    make_experiment(team, owner, base_model, dataset, runs=request.param, name="Second", lengths=(256, 512, 1024))
    return experiment


def consume(value: Any) -> Any:
    """Force lazy results (querysets, generators) so their queries are counted."""
    if hasattr(value, "__iter__") and not isinstance(value, dict | str):
        return list(value)
    return value


@pytest.mark.parametrize(
    ("queries", "call"),
    [
        (1, lambda e, user: selectors.experiments_for_user(user)),
        (2, lambda e, user: selectors.experiment_detail(e)),
        (1, lambda e, user: selectors.comparison_series(e)),
        (2, lambda e, user: selectors.run_status_payload(e)),
        (3, lambda e, user: selectors.leaderboard_rows(Team.objects.filter(pk=e.team_id), e.base_model, 512)),
        (1, lambda e, user: selectors.leaderboard_lengths(Team.objects.filter(pk=e.team_id), e.base_model)),
        (2, lambda e, user: selectors.measurement_rows(e)),
    ],
)
def test_query_counts_do_not_grow_with_runs(sized: Any, owner: Any, django_assert_num_queries: Any, queries: int,
                                           call: Callable[[Any, Any], Any]) -> None:
    experiment = type(sized).objects.select_related("base_model").get(pk=sized.pk)
    with django_assert_num_queries(queries):
        result = consume(call(experiment, owner))
        if isinstance(result, list) and result and hasattr(result[0], "n_runs"):
            [(e.team.name, e.base_model.name, e.n_succeeded) for e in result]  # related rows already joined


def test_comparison_series_shape(experiment: Any) -> None:
    series = selectors.comparison_series(experiment)
    runs = list(experiment.runs.order_by("id"))
    assert list(series) == [run.method.name for run in runs]
    assert series[runs[0].method.name] == [(256, 10.256, 9.256, 11.256), (512, 10.512, 9.512, 11.512)]
    assert selectors.experiment_detail(experiment).series == series


def test_leaderboard_ranks_by_best_over_succeeded_runs_only(team: Team, owner: Any, base_model: Any,
                                                            dataset: Any) -> None:
    # Two experiments share the methods PI ×2 and PI ×3; PI ×3 is best in the second one.
    make_experiment(team, owner, base_model, dataset, runs=2, name="A", values=lambda i, n: 20.0 - i)
    make_experiment(team, owner, base_model, dataset, runs=2, name="B", values=lambda i, n: 15.0 - 3 * i)
    failed = make_experiment(team, owner, base_model, dataset, runs=1, name="C", values=lambda i, n: 1.0)
    Run.objects.filter(experiment=failed).update(status=Run.Status.FAILED)
    rows = selectors.leaderboard_rows([team], base_model, 512)
    assert [(r.rank, r.method.name, r.runs, r.best, r.mean) for r in rows] == [
        (1, "pi ×3.0", 2, 12.0, 15.5),
        (2, "pi ×2.0", 2, 15.0, 17.5),
    ]
    assert rows[0].best_experiment[1] == "B"
    assert sorted(name for _, name in rows[0].experiments) == ["A", "B"] and rows[0].more_experiments == 0
    assert selectors.leaderboard_rows([team], base_model, 4096) == []


def test_a_leaderboard_row_links_a_bounded_number_of_experiments_best_first(team: Team, owner: Any, base_model: Any,
                                                                           dataset: Any) -> None:
    for i in range(8):
        make_experiment(team, owner, base_model, dataset, runs=1, name=f"E{i}", values=lambda _, n, i=i: 10.0 + i)
    (row,) = selectors.leaderboard_rows([team], base_model, 512)
    assert [name for _, name in row.experiments] == ["E0", "E1", "E2", "E3", "E4"], "lowest perplexity first"
    assert row.experiment_count == 8 and row.more_experiments == 3 and row.runs == 8


def test_a_higher_is_better_leaderboard_links_its_highest_experiments_first(team: Team, owner: Any,
                                                                           base_model: Any, dataset: Any) -> None:
    for i in range(7):
        experiment = make_experiment(team, owner, base_model, dataset, runs=1, name=f"P{i}")
        run = experiment.runs.get()
        Measurement.objects.create(run=run, metric="passkey", value=i / 10, context_length=512, samples=10)
    (row,) = selectors.leaderboard_rows([team], base_model, 512, metric="passkey")
    assert row.best == 0.6 and row.best_experiment[1] == "P6"
    assert [name for _, name in row.experiments] == ["P6", "P5", "P4", "P3", "P2"]
    assert row.experiment_count == 7 and row.more_experiments == 2

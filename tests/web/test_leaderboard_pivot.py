"""The pivot leaderboard as a user meets it: methods × lengths, a summary per metric, like with like, CSV = table."""

from __future__ import annotations

import csv
import io
from html.parser import HTMLParser
from typing import Any

from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from experiments.models import BaseModel, Dataset, Experiment, Measurement, Run, Team
from tests.web.factories import login, make_experiment, method


class _Table(HTMLParser):
    """The text of every cell of ``#pivot-table`` (header row first), without the trailing links column."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[str]] = []
        self._inside = False
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "table" and ("id", "pivot-table") in attrs:
            self._inside = True
        elif self._inside and tag == "tr":
            self.rows.append([])
        elif self._inside and tag in ("td", "th"):
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "table":
            self._inside = False
        elif self._inside and tag in ("td", "th") and self._cell is not None:
            self.rows[-1].append(" ".join("".join(self._cell).split()))
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


def table(html: str) -> list[list[str]]:
    parser = _Table()
    parser.feed(html)
    return [row[:-1] if (row and row[-1] in ("links",)) or (row and row[-1].startswith("compare")) else row
            for row in parser.rows]


def pivot(client: Any, **params: Any) -> Any:
    return client.get(reverse("leaderboard_pivot"), params)


def _two_experiments(team: Team, owner: Any, base_model: BaseModel, dataset: Dataset) -> list[Experiment]:
    first = make_experiment(team, owner, base_model, dataset, runs=2, name="first",
                            values=lambda i, n: 10.0 + i + n / 1000)
    second = make_experiment(team, owner, base_model, dataset, runs=2, name="second",
                             values=lambda i, n: 12.0 + i + n / 1000)
    return [first, second]


def test_methods_by_length_group_agreeing_runs_with_their_spread(owner: Any, team: Team, base_model: BaseModel,
                                                               dataset: Dataset) -> None:
    _two_experiments(team, owner, base_model, dataset)
    response = pivot(login(owner))
    assert response.status_code == 200
    rows = table(response.content.decode())
    assert rows[0] == ["method", "family", "parameters", "runs", "256", "512"]
    by_method = {row[0]: row for row in rows[1:]}
    # pi ×2 ran in both experiments: 10.256 and 12.256 at 256 → mean 11.256, spread shown
    assert by_method["pi ×2.0"][3] == "2"
    assert by_method["pi ×2.0"][4] == "11.26 [10.26–12.26]"
    assert by_method["pi ×3.0"][5] == "12.51 [11.51–13.51]"
    assert [row[0] for row in rows[1:]] == ["pi ×2.0", "pi ×3.0"], "ranked by the longest length, lower first"
    html = response.content.decode()
    assert html.count('class="num best"') == 2, "one best cell per length column"
    assert "11.26 [10.26–12.26]</strong>" in html


def test_values_shown_the_same_share_the_bold(owner: Any, team: Team, base_model: BaseModel, dataset: Dataset
                                              ) -> None:
    """Dynamic NTK inside the original context is the baseline up to float rounding: both read 44.84, both bold."""
    make_experiment(team, owner, base_model, dataset, runs=3, name="near tie", lengths=(256,),
                    values=lambda i, n: (44.8400001, 44.8400002, 50.0)[i])
    response = pivot(login(owner))
    html = response.content.decode()
    assert html.count('class="num best"') == 2, "the two cells shown as 44.84 are both the best"
    assert html.count("<strong>44.84</strong>") == 2 and "<strong>50.00</strong>" not in html


def test_the_same_configuration_of_two_teams_is_one_row(owner: Any, team: Team, other_team: Team,
                                                       base_model: BaseModel, dataset: Dataset) -> None:
    from experiments.models import Membership

    Membership.objects.create(user=owner, team=other_team, role=Membership.Role.MEMBER)
    experiment = make_experiment(team, owner, base_model, dataset, runs=1, name="shared method")
    theirs = method("pi", 2.0, team=other_team, name="their pi")
    other = make_experiment(other_team, owner, base_model, dataset, runs=0, name="team method")
    now = timezone.now()
    run = Run.objects.create(experiment=other, method=theirs, status=Run.Status.SUCCEEDED, started_at=now,
                             finished_at=now)
    Measurement.objects.create(run=run, metric="perplexity", value=20.0, context_length=256)
    rows = table(pivot(login(owner)).content.decode())
    assert len(rows) == 2, rows
    assert rows[1][3] == "2" and rows[1][4].startswith("15.13 [10.26–20.00]"), rows
    assert experiment.runs.get().method.pk != theirs.pk


def test_other_datasets_training_recipes_protocols_and_archived_experiments_are_not_mixed_in(
    owner: Any, team: Team, base_model: BaseModel, dataset: Dataset,
) -> None:
    make_experiment(team, owner, base_model, dataset, runs=1, name="plain")
    other_data = Dataset.objects.create(team=team, name="other data", kind=Dataset.Kind.LOCAL, path="/tmp/x")
    make_experiment(team, owner, base_model, other_data, runs=1, name="other data",
                    values=lambda i, n: 99.0)
    trained = make_experiment(team, owner, base_model, dataset, runs=1, name="trained", values=lambda i, n: 5.0)
    Experiment.objects.filter(pk=trained.pk).update(training={"mode": "finetune", "steps": 20})
    archived = make_experiment(team, owner, base_model, dataset, runs=1, name="archived", values=lambda i, n: 1.0)
    Experiment.objects.filter(pk=archived.pk).update(archived_at=timezone.now())
    odd = make_experiment(team, owner, base_model, dataset, runs=1, name="odd protocol", values=lambda i, n: 2.0)
    Measurement.objects.filter(run__experiment=odd).update(protocol_key="otherkey")
    client = login(owner)
    response = pivot(client, dataset=dataset.pk)
    rows = table(response.content.decode())
    assert rows[1][4:] == ["10.26", "10.51"], "only the plain run under the most-used protocol"
    html = response.content.decode()
    assert "no training" in html and "finetune · steps 20" in html, "the recipe filter offers both"
    recipes = response.context["query"].recipes
    finetune = next(key for key, label in recipes if label.startswith("finetune"))
    assert table(pivot(client, dataset=dataset.pk, recipe=finetune).content.decode())[1][4] == "5.000"
    assert table(pivot(client, dataset=other_data.pk).content.decode())[1][4] == "99.00"
    assert table(pivot(client, dataset=dataset.pk, protocol="otherkey").content.decode())[1][4] == "2.000"


def test_the_csv_is_exactly_the_table_on_screen(owner: Any, team: Team, base_model: BaseModel,
                                                dataset: Dataset) -> None:
    _two_experiments(team, owner, base_model, dataset)
    client = login(owner)
    for view in ("length", "summary"):
        page = pivot(client, view=view)
        shown = table(page.content.decode())
        response = client.get(reverse("leaderboard_pivot_csv"), page.context["query"].params())
        assert response["Content-Type"].startswith("text/csv")
        downloaded = list(csv.reader(io.StringIO(b"".join(response.streaming_content).decode())))
        assert downloaded == shown, view
        assert len(downloaded) == 3


def test_the_summary_has_one_column_per_metric_at_the_chosen_length(owner: Any, team: Team, base_model: BaseModel,
                                                                    dataset: Dataset) -> None:
    experiment = make_experiment(team, owner, base_model, dataset, runs=2, name="suite")
    for i, run in enumerate(experiment.runs.order_by("id")):
        Measurement.objects.create(run=run, metric="passkey_accuracy", value=0.5 + i / 4, context_length=512)
        Measurement.objects.create(run=run, metric="ruler_effective_length", value=256.0 * (i + 1))
        for short, ratio in ((64, 0.9), (128, 0.7)):  # retention: lengths of its own, averaged
            Measurement.objects.create(run=run, metric="retention_perplexity", value=ratio, context_length=short)
        for depth in (0.0, 1.0):
            Measurement.objects.create(run=run, metric="needle_exact", value=depth, context_length=512, depth=depth)
    response = pivot(login(owner), view="summary", length=512)
    rows = table(response.content.decode())
    header = rows[0]
    assert header[:6] == ["method", "family", "parameters", "runs", "perplexity @ 512", "LongPPL @ 512"]
    assert "RULER eff. length" in header and "passkey @ 512" in header
    row = dict(zip(header, rows[2], strict=True))  # pi ×3: the higher perplexity sorts second
    assert row["perplexity @ 512"] == "11.51" and row["passkey @ 512"] == "0.750"
    assert row["RULER eff. length"] == "512" and row["needle @ 512"] == "0.500" and row["LongPPL @ 512"] == ""
    assert row["retention"] == "0.800", "the mean over its short lengths; one run, so no spread"
    assert table(pivot(login(owner), view="summary", length=256).content.decode())[0][4] == "perplexity @ 256"


def test_who_sees_what(owner: Any, teammate: Any, viewer: Any, outsider: Any, team: Team, base_model: BaseModel,
                       dataset: Dataset, client: Any) -> None:
    make_experiment(team, owner, base_model, dataset, runs=1)
    for user in (owner, teammate, viewer):
        assert len(table(pivot(login(user)).content.decode())) == 2, user
    assert len(table(pivot(login(outsider)).content.decode())) <= 2
    assert "pi ×2.0" not in pivot(login(outsider)).content.decode()
    assert pivot(login(owner), team=999999).status_code == 404
    assert pivot(login(owner), base_model="no such model").status_code == 404
    assert pivot(client).status_code == 302, "anonymous: to the login page"
    assert login(owner).post(reverse("leaderboard_pivot")).status_code == 405


def test_bad_query_values_fall_back_to_defaults(owner: Any, team: Team, base_model: BaseModel,
                                                dataset: Dataset) -> None:
    make_experiment(team, owner, base_model, dataset, runs=1)
    response = pivot(login(owner), metric="nonsense", view="nope", recipe="zzz", length="x", protocol="nokey")
    assert response.status_code == 200
    query = response.context["query"]
    assert (query.metric, query.view) == ("perplexity", "length")
    assert len(table(response.content.decode())) == 2


def test_query_count_does_not_grow_with_history(owner: Any, team: Team, base_model: BaseModel,
                                                dataset: Dataset) -> None:
    client = login(owner)

    def count(view: str) -> int:
        with CaptureQueriesContext(connection) as queries:
            assert pivot(client, view=view).status_code == 200
        return len(queries)

    make_experiment(team, owner, base_model, dataset, runs=2, name="a")
    few = {view: count(view) for view in ("length", "summary")}
    for i in range(6):
        make_experiment(team, owner, base_model, dataset, runs=4, name=f"more {i}")
    assert {view: count(view) for view in ("length", "summary")} == few

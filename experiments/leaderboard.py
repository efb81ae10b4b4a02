"""The leaderboard's filters (team, base model, context length, metric), shared by page, CSV and API.

Query-string values are untrusted: a team outside the user's teams is a 404, a malformed number is
ignored in favour of the default, and the defaults pick something worth looking at.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, QueryDict, StreamingHttpResponse

from experiments import csv_export, selectors
from experiments.access import teams_of, visible_base_models
from experiments.models import BaseModel, Team

METRICS = {
    "perplexity": "perplexity",
    "passkey_accuracy": "passkey accuracy",
    "needle_perplexity": "needle-driven perplexity",
    "retention_perplexity": "short-context retention (base ppl ÷ ppl)",
}


@dataclass
class LeaderboardQuery:
    teams: QuerySet[Team]
    team: Team | None
    base_models: list[BaseModel]
    base_model: BaseModel | None
    lengths: list[int]
    context_length: int | None
    metric: str
    rows: list[selectors.LeaderboardRow] = field(default_factory=list)

    @property
    def metric_label(self) -> str:
        return METRICS[self.metric]

    @property
    def lower_is_better(self) -> bool:
        return self.metric in selectors.LOWER_IS_BETTER

    def params(self) -> dict[str, Any]:
        return {
            "team": self.team.pk if self.team else "",
            "base_model": self.base_model.pk if self.base_model else "",
            "context_length": self.context_length or "",
            "metric": self.metric,
        }


def _int(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def resolve(user: Any, query: QueryDict) -> LeaderboardQuery:
    my_teams = teams_of(user)
    team = None
    team_raw = query.get("team") or ""
    if team_raw:
        team = my_teams.filter(pk=_int(team_raw)).first() if _int(team_raw) else my_teams.filter(name=team_raw).first()
        if team is None:
            raise Http404("No such team.")
    teams = my_teams.filter(pk=team.pk) if team else my_teams
    base_models = list(visible_base_models(user))
    base_raw = query.get("base_model") or ""
    base_model = None
    if base_raw:
        base_model = next((m for m in base_models if str(m.pk) == base_raw), None) or next(
            (m for m in base_models if m.name == base_raw), None
        )
        if base_model is None:
            raise Http404("No such base model.")
    elif base_models:
        base_model = base_models[0]
    metric = query.get("metric") or "perplexity"
    if metric not in METRICS:
        metric = "perplexity"
    lengths = selectors.leaderboard_lengths(teams, base_model, metric) if base_model else []
    length = _int(query.get("context_length"))
    if length is None and lengths:
        length = lengths[-1]
    result = LeaderboardQuery(my_teams, team, base_models, base_model, lengths, length, metric)
    if base_model is not None and length is not None:
        result.rows = selectors.leaderboard_rows(teams, base_model, length, metric)
    return result


def csv_response(query: LeaderboardQuery) -> StreamingHttpResponse:
    name = query.base_model.name if query.base_model else ""
    rows = csv_export.leaderboard_dicts(query.rows, name, query.context_length or 0, query.metric)
    return csv_export.csv_response(f"leaderboard-{name}-{query.context_length}", csv_export.LEADERBOARD_COLUMNS,
                                   rows)

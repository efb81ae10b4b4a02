"""The leaderboard's filters (team, base model, context length, metric, protocol), shared by page, CSV and API.

Query-string values are untrusted: a team outside the user's teams is a 404, a malformed number is
ignored in favour of the default, and the defaults pick something worth looking at.

Only numbers measured under one evaluation protocol are ranked together (:mod:`gpu_workers.protocol`: the
documents, their minimum length, perplexity protocol and stride, tokenizer, BOS handling, seed, dtype,
device kind, attention kernel and the evaluation's own settings). The page offers every protocol the
matching runs used, defaulting to the one with the most runs, and says what it is.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from django.db.models import QuerySet
from django.http import Http404, QueryDict, StreamingHttpResponse

from experiments import csv_export, selectors
from experiments.access import teams_of, visible_base_models
from experiments.models import BaseModel, Team
from gpu_workers import catalog
from gpu_workers.protocol import describe as protocol_text

METRICS = catalog.metric_labels(catalog.RANKED_METRICS)
"""The Ranking view's metrics, ``{key: label}`` (:data:`gpu_workers.catalog.RANKED_METRICS`)."""
METRIC_EVALUATIONS = {m.key: m.evaluation for m in catalog.RANKED_METRICS}
"""Which evaluation's protocol a metric is measured under."""


@dataclass
class LeaderboardQuery:
    teams: QuerySet[Team]
    team: Team | None
    base_models: list[BaseModel]
    base_model: BaseModel | None
    lengths: list[int]
    context_length: int | None
    metric: str
    protocols: list[selectors.ProtocolChoice] = field(default_factory=list)
    protocol: selectors.ProtocolChoice | None = None
    rows: list[selectors.LeaderboardRow] = field(default_factory=list)

    @property
    def metric_label(self) -> str:
        return METRICS[self.metric]

    @property
    def length_free(self) -> bool:
        return self.metric in selectors.LENGTH_FREE_METRICS

    def describe(self, choice: selectors.ProtocolChoice | None) -> str:
        if choice is None:
            return ""
        if not choice.key:
            return "recorded before protocols were (not comparable with any recorded protocol)"
        return protocol_text(choice.run_protocol, METRIC_EVALUATIONS[self.metric]) or f"key {choice.key}"

    @property
    def protocol_description(self) -> str:
        return self.describe(self.protocol)

    @property
    def protocol_options(self) -> list[tuple[str, str, int]]:
        """(key, label, runs) for the protocol filter."""
        return [(c.key, f"{c.key or 'not recorded'} · {c.runs} run{'s' if c.runs != 1 else ''}", c.runs)
                for c in self.protocols]

    @property
    def lower_is_better(self) -> bool:
        return self.metric in selectors.LOWER_IS_BETTER

    def params(self) -> dict[str, Any]:
        return {
            "team": self.team.pk if self.team else "",
            "base_model": self.base_model.pk if self.base_model else "",
            "context_length": self.context_length or "",
            "metric": self.metric,
            "protocol": self.protocol.key if self.protocol else "",
        }


def int_param(raw: str | None) -> int | None:
    """A query-string integer, or None when it is missing or malformed (the caller's default applies)."""
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


def team_scope(user: Any, raw: str) -> tuple[QuerySet[Team], Team | None, QuerySet[Team]]:
    """The user's teams, the team *raw* names (by id or name; a team outside theirs is a 404) and the teams to read."""
    my_teams = teams_of(user)
    team = None
    if raw:
        team = my_teams.filter(pk=int_param(raw)).first() if int_param(raw) else my_teams.filter(name=raw).first()
        if team is None:
            raise Http404("No such team.")
    return my_teams, team, my_teams.filter(pk=team.pk) if team else my_teams


def resolve(user: Any, query: QueryDict) -> LeaderboardQuery:
    my_teams, team, teams = team_scope(user, query.get("team") or "")
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
    groups = selectors.leaderboard_groups(teams, base_model, metric) if base_model else {}
    lengths = selectors.leaderboard_lengths(teams, base_model, metric, groups) if base_model else []
    length = int_param(query.get("context_length"))
    if length is None and lengths:
        length = lengths[-1]
    if metric in selectors.LENGTH_FREE_METRICS:
        length = None
    result = LeaderboardQuery(my_teams, team, base_models, base_model, lengths, length, metric)
    if base_model is None or (length is None and not result.length_free):
        return result
    result.protocols = selectors.leaderboard_protocols(teams, base_model, length, metric, groups)
    wanted = query.get("protocol")
    result.protocol = next((c for c in result.protocols if c.key == wanted), None) if wanted is not None else None
    if result.protocol is None and result.protocols:
        result.protocol = result.protocols[0]
    if result.protocol is not None:
        result.rows = selectors.leaderboard_rows(teams, base_model, length, metric, result.protocol.key)
    return result


def csv_response(query: LeaderboardQuery) -> StreamingHttpResponse:
    name = query.base_model.name if query.base_model else ""
    key = query.protocol.key if query.protocol else ""
    rows = csv_export.leaderboard_dicts(query.rows, name, query.context_length, query.metric, key,
                                        query.protocol_description)
    return csv_export.csv_response(f"leaderboard-{name}-{query.context_length or query.metric}",
                                   csv_export.LEADERBOARD_COLUMNS, rows)

"""Helpers shared by the web and browser tests: the one place for the clients, request bodies, page readers and
canned data that more than one test file uses.

A test file never imports from another test file (``tests/test_test_layout.py`` checks it): a helper used by two
files lives here, defined once. ORM object builders (users, methods, experiments) live in
:mod:`tests.web.factories`; pytest fixtures live in the ``conftest.py`` files.
"""

from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from typing import Any

from django.test import Client
from django.urls import reverse

from experiments import services
from experiments.models import BaseModel, Dataset, Measurement, Run
from gpu_workers import protocol
from tests.web.factories import login

# --- clients ----------------------------------------------------------------------------------------------------------


def token_client(user: Any) -> Client:
    _, key = services.create_api_token(user, "test")
    return Client(HTTP_AUTHORIZATION=f"Token {key}")


def csrf_client(user: Any) -> tuple[Client, str]:
    client = login(user, enforce_csrf=True)
    assert client.get(reverse("team_list")).status_code == 200
    return client, client.cookies["csrftoken"].value


def csrf_token(client: Client, url: str) -> str:
    """Load a page (as a browser would) and read the CSRF token it set."""
    response = client.get(url)
    assert response.status_code == 200
    return client.cookies["csrftoken"].value


def post(client: Client, token: str, url: str, data: dict[str, Any] | None = None) -> Any:
    return client.post(url, {**(data or {}), "csrfmiddlewaretoken": token})


def post_json(client: Client, url: str, body: Any) -> Any:
    return client.post(url, json.dumps(body), content_type="application/json")


# --- request bodies ---------------------------------------------------------------------------------------------------


def body(team: Any, base_model: BaseModel, dataset: Dataset, **overrides: Any) -> dict[str, Any]:
    data = {
        "name": "API question", "team": team.name, "base_model": base_model.name, "dataset": dataset.pk,
        "target_length": 1024, "eval_lengths": [256, 1024], "eval_documents": 4,
        "methods": [{"family": "none"}, {"family": "yarn", "params": {"factor": 4, "beta_fast": 16}}],
    }
    data.update(overrides)
    return data


def composer_post(team: Any, base_model: Any, dataset: Any, rows: list[dict[str, str]] | None = None,
                  **fields: Any) -> dict[str, Any]:
    """The POST body the composer page sends."""
    rows = rows if rows is not None else [{"family": "none"}, {"family": "pi"}]
    data: dict[str, Any] = {
        "team": team.pk, "name": "Does YaRN beat PI?", "base_model": base_model.pk, "dataset": dataset.pk,
        "target_length": 1024, "eval_lengths": "", "eval_documents": 4,
        "methods-TOTAL_FORMS": len(rows), "methods-INITIAL_FORMS": 0, "methods-MIN_NUM_FORMS": 0,
        "methods-MAX_NUM_FORMS": 12,
        "eval-suite": ["perplexity", "passkey", "needle"], "eval-protocol": "truncate", "eval-stride": "",
        "eval-passkey_samples": 20, "eval-passkey_depth": "", "eval-needle_depths": "0, 0.5, 1",
        "eval-needle_samples": 2, "eval-needle_format": "passkey", "eval-needle_variant": "single",
        "eval-needle_count": 4,
        "train-mode": "none", "train-steps": 100, "train-learning_rate": 3e-4, "train-warmup_steps": 10,
        "train-batch_size": 1, "train-grad_accum": 1, "train-lora_rank": 8, "train-lora_alpha": 16,
        "train-s2_group_fraction": 0.25, "train-short_fraction": 0.5, "train-data_strategy": "per_source",
        "train-keep_short_p": 0.15, "train-upsample_multiplier": 2.0, "train-passkey_fraction": 0.0,
        "train-checkpoint_every": 50, "train-seed": 0,
    }
    data.update(fields)
    for i, row in enumerate(rows):
        for key, value in row.items():
            data[f"methods-{i}-{key}"] = value
    return data


# --- reading pages ----------------------------------------------------------------------------------------------------


def dashboard(client: Client, **query: Any) -> str:
    response = client.get(reverse("dashboard"), query)
    assert response.status_code == 200
    return response.content.decode()


def names(html: str) -> list[str]:
    return re.findall(r'<td><a href="/experiments/[^"]+/">([^<]+)</a></td>', html)


class FormValues(HTMLParser):
    """What a browser submits from the page's ``#composer`` form, ignoring ``<template>`` contents."""

    def __init__(self) -> None:
        super().__init__()
        self.data: list[tuple[str, str]] = []
        self._in_form = self._in_template = False
        self._select: str | None = None
        self._select_first: str | None = None
        self._select_chosen = False
        self._textarea: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form" and a.get("id") == "composer":
            self._in_form = True
        elif tag == "template":
            self._in_template = True
        if not self._in_form or self._in_template:
            return
        if tag == "input" and a.get("name"):
            self._input(a)
        elif tag == "select":
            self._select, self._select_first, self._select_chosen = a.get("name"), None, False
        elif tag == "option" and self._select:
            self._option(self._select, a)
        elif tag == "textarea":
            self._textarea = a.get("name")
            self.data.append((self._textarea or "", ""))

    def _input(self, a: dict[str, str]) -> None:
        kind = a.get("type", "text")
        if kind in ("checkbox", "radio"):
            if "checked" in a:
                self.data.append((a["name"], a.get("value", "on")))
        elif kind not in ("submit", "button"):
            self.data.append((a["name"], a.get("value", "")))

    def _option(self, select: str, a: dict[str, str]) -> None:
        if self._select_first is None:
            self._select_first = a.get("value", "")
        if "selected" in a:
            self.data.append((select, a.get("value", "")))
            self._select_chosen = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "template":
            self._in_template = False
        elif tag == "form":
            self._in_form = False
        elif tag == "select" and self._select:
            if not self._select_chosen and self._select_first is not None:
                self.data.append((self._select, self._select_first))
            self._select = None
        elif tag == "textarea":
            self._textarea = None

    def handle_data(self, data: str) -> None:
        if self._textarea and self.data and self.data[-1][0] == self._textarea:
            self.data[-1] = (self._textarea, self.data[-1][1] + data)

    def post_data(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, value in self.data:
            out.setdefault(name, []).append(value)
        return {k: v if len(v) > 1 or k == "eval-suite" else v[0] for k, v in out.items()}


def form_values(html: str) -> dict[str, Any]:
    parser = FormValues()
    parser.feed(html)
    return parser.post_data()


# --- query budgets ----------------------------------------------------------------------------------------------------


QUERIES = {"dashboard": 9, "api_experiments": 4}
"""Dashboard: session, user, the three filter selects, count, page, teams, can-submit. API: token lookup,
its last-used stamp, count, page."""


# --- RULER and LongPPL measurements (the ruler pages, web and browser) ------------------------------------------------


LENGTHS = (256, 512, 1024)
SUITE = ["perplexity", "longppl", "ruler"]
SETTINGS = {"suite": SUITE, "ruler_tasks": ["niah_single_1", "niah_multikey_1", "vt", "cwe"], "ruler_samples": 4,
            "ruler_threshold": 0.8, "longppl_gain": 1.5, "longppl_bound": 2.5}
TASK_SCORES = {
    # task: scores at 256, 512, 1024 (None: not measured, e.g. a run cancelled half-way)
    "niah_single_1": (1.0, 1.0, 0.75),
    "niah_multikey_1": (1.0, 0.75, 0.25),
    "vt": (0.5, 0.5, None),
    "cwe": (0.9, 0.3, 0.1),
}


def ruler_rows(run: Run, scale: float = 1.0, effective: int | None = 512) -> list[Measurement]:
    """A run's RULER measurements: tasks, groups, the average, references and effective lengths."""
    rows = []
    for task, scores in TASK_SCORES.items():
        for length, score in zip(LENGTHS, scores, strict=True):
            if score is not None:
                rows.append(Measurement(run=run, metric=f"ruler_{task}", value=score * scale, context_length=length,
                                        samples=4, ci_low=0.0, ci_high=1.0))
    groups = {"retrieval": ("niah_single_1", "niah_multikey_1"), "multi_hop": ("vt",), "aggregation": ("cwe",)}
    for i, length in enumerate(LENGTHS):
        measured = {t: s[i] * scale for t, s in TASK_SCORES.items() if s[i] is not None}
        rows.append(Measurement(run=run, metric="ruler_average", value=sum(measured.values()) / len(measured),
                                context_length=length, samples=4 * len(measured)))
        for group, tasks in groups.items():
            values = [measured[t] for t in tasks if t in measured]
            if values:
                rows.append(Measurement(run=run, metric=f"ruler_group_{group}", value=sum(values) / len(values),
                                        context_length=length))
    rows.append(Measurement(run=run, metric="ruler_reference", value=0.85 * scale, context_length=256))
    if effective is not None:
        rows.append(Measurement(run=run, metric="ruler_effective_length", value=float(effective)))
    for group, value in (("retrieval", 1.0), ("multi_hop", 0.5), ("aggregation", 0.9)):
        rows.append(Measurement(run=run, metric=f"ruler_reference_{group}", value=value * scale, context_length=256))
    rows.append(Measurement(run=run, metric="ruler_effective_length_retrieval", value=1024.0))
    rows.append(Measurement(run=run, metric="ruler_effective_length_multi_hop", value=512.0))
    # aggregation: cwe falls from 0.9 to 0.3 at 512 (< 0.8 × 0.9) → no effective length, a reference all the same
    return rows


def longppl_rows(run: Run, offset: float = 0.0) -> list[Measurement]:
    rows = []
    for length, value, keys in zip(LENGTHS, (8.0, 9.5, 14.0), (31, 67, 140), strict=True):
        rows.append(Measurement(run=run, metric="longppl", value=value + offset, context_length=length, samples=keys,
                                ci_low=value + offset - 0.5, ci_high=value + offset + 0.5))
        rows.append(Measurement(run=run, metric="longppl_key_tokens", value=float(keys), context_length=length))
    return rows


def run_protocol(run: Run, dtype: str = "float32") -> dict[str, Any]:
    spec = services.run_spec_for(run)
    return protocol.build(spec, tokenizer_digest="0123456789abcdef", dtype=dtype, device="cpu",
                          attn_implementation="sdpa", original_context=run.experiment.base_model.original_context,
                          versions={"torch": "2.x", "transformers": "4.x"})


# --- model facts (the model pages, web and browser) -------------------------------------------------------------------


LLAMA31_ROPE: dict[str, Any] = {
    "rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8192,
}
LLAMA31_FACTS: dict[str, Any] = {
    "architecture": "LlamaForCausalLM", "model_type": "llama", "has_rope": True, "head_dim": 64,
    "head_dim_explicit": False, "partial_rotary_factor": 1.0, "rotary_dim": 64, "rope_theta": 500000.0,
    "rope_type": "llama3", "original_context": 8192, "max_position_embeddings": 131072,
    "rope_parameters": LLAMA31_ROPE, "num_layers": 2, "num_heads": 2, "num_kv_heads": 1, "hidden_size": 128,
    "parameters": None,
}

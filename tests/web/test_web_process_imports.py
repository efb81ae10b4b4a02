"""The web process never imports torch or transformers: not when it starts, not on its first composer submit.

Why: torch costs a web process 1.5–3.5 s of start-up and ~200 MB of memory, and the first submit used to
tokenize the whole evaluation corpus on top (issue 14). Each check runs in a fresh interpreter, because
this test process has long imported both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from experiments.models import BaseModel, Dataset, Experiment
from tests.web.helpers import composer_post

ROOT = Path(__file__).resolve().parents[2]
HEAVY = "sorted(m for m in ('torch', 'transformers') if m in sys.modules)"

START = f"""
import sys
import django
django.setup()
import webapp.urls, experiments.forms, experiments.services, experiments.selectors
from django.urls import get_resolver
get_resolver().url_patterns  # every included URLconf: views, API, admin
print({HEAVY})
"""

FIRST_SUBMIT = f"""
import json, sys
import django
django.setup()
from django.test.utils import setup_test_environment
setup_test_environment()  # the test client's 'testserver' host and response.context, nothing else
import webapp.urls
from django.contrib.auth import get_user_model
from django.test import Client
from django.urls import reverse
body = json.loads(sys.argv[1])
client = Client()
client.force_login(get_user_model().objects.get(username=body.pop("__user")))
response = client.post(reverse("experiment_new"), body)
composer = (response.context or {{}}).get("composer") if response.status_code != 302 else None
print(json.dumps({{"status": response.status_code, "errors": composer.errors() if composer else None,
                  "heavy": {HEAVY}}}))
"""


def _run(code: str, env: dict[str, str], *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "DJANGO_SETTINGS_MODULE": "webapp.settings", **env}, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout.strip().splitlines()[-1]


def _database_url() -> str:
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgresql://{auth}@{db['HOST'] or 'localhost'}:{db['PORT'] or 5432}/{db['NAME']}"


def test_starting_the_web_app_imports_neither_torch_nor_transformers(tmp_path: Path) -> None:
    heavy = _run(START, {"CONTEXTLAB_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "filesystem://"})
    assert heavy == "[]", f"imported at start: {heavy}"


def test_a_first_composer_submit_in_a_fresh_process_imports_neither(
    transactional_db: None, owner: Any, team: Any, base_model: BaseModel, dataset: Dataset, tmp_path: Path,
) -> None:
    """A real POST through the test client, on the test database (committed: a transactional test), with the
    default suite plus RULER (whose prompts the composer generates with the model's tokenizer.json)."""
    if connection.vendor != "postgresql":
        pytest.skip("a second process needs the test database on a server (SQLite's is in memory)")
    body = composer_post(team, base_model, dataset, **{
        "eval-suite": ["perplexity", "longppl", "passkey", "needle", "needle_perplexity", "retention", "memory",
                       "ruler"],
        "eval-ruler_samples": 2})
    body["__user"] = owner.username
    env = {"DATABASE_URL": _database_url(), "CONTEXTLAB_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "filesystem://"}
    result = json.loads(_run(FIRST_SUBMIT, env, json.dumps(body)))
    assert result["status"] == 302, result["errors"]
    assert Experiment.objects.filter(name=body["name"]).exists()
    assert result["heavy"] == [], f"imported by the first submit: {result['heavy']}"


WORKER_PARENT = f"""
import sys
import django
from webapp.celery import app
django.setup()
app.loader.import_default_modules()  # what `celery -A webapp worker` imports before it forks its pool
import experiments.tasks
print({HEAVY})
"""


def test_the_celery_worker_parent_imports_neither(tmp_path: Path) -> None:
    """The prefork pool forks its children from this process. A child forked after the parent used torch's
    OpenMP threads hangs or crawls (seen: runs 10x slower in the worker than in-process), so torch may only
    be imported inside the child, by the run itself."""
    heavy = _run(WORKER_PARENT, {"CONTEXTLAB_DATA_DIR": str(tmp_path), "CELERY_BROKER_URL": "filesystem://"})
    assert heavy == "[]", f"imported by the worker's parent process: {heavy}"

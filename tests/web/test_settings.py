"""Settings: typed env helpers, the deploy checklist, the Celery wiring."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from webapp import settings as app_settings
from webapp.celery import app

ROOT = Path(__file__).resolve().parents[2]


def test_env_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("X_BOOL", "yes")
    monkeypatch.setenv("X_LIST", " a.com, ,b.com ")
    monkeypatch.setenv("X_INT", "42")
    assert app_settings.env_bool("X_BOOL", False) is True
    assert app_settings.env_bool("X_MISSING", True) is True
    assert app_settings.env_list("X_LIST") == ["a.com", "b.com"]
    assert app_settings.env_int("X_INT", 1) == 42
    assert app_settings.env_str("X_MISSING", "d") == "d"
    monkeypatch.setenv("X_FLOAT", "0.25")
    assert app_settings.env_float("X_FLOAT", 1.0) == 0.25
    assert app_settings.env_float("X_MISSING", 1.5) == 1.5
    monkeypatch.setenv("X_FLOAT", "fast")
    with pytest.raises(ImproperlyConfigured, match="X_FLOAT='fast' is not a number"):
        app_settings.env_float("X_FLOAT", 1.0)
    monkeypatch.setenv("X_BOOL", "maybe")
    with pytest.raises(ImproperlyConfigured):
        app_settings.env_bool("X_BOOL", False)


def _manage(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CSRF_"))}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120)


def test_check_deploy_is_clean_in_production_mode() -> None:
    result = _manage("check", "--deploy", "--fail-level", "WARNING", DJANGO_DEBUG="0",
                     DJANGO_SECRET_KEY=secrets.token_urlsafe(60), DJANGO_ALLOWED_HOSTS="example.com")
    assert result.returncode == 0, result.stderr + result.stdout
    assert "no issues" in result.stdout


def test_production_refuses_to_start_without_a_secret_key() -> None:
    result = _manage("check", DJANGO_DEBUG="0", DJANGO_ALLOWED_HOSTS="example.com")
    assert result.returncode != 0 and "DJANGO_SECRET_KEY" in result.stderr


def test_celery_configuration() -> None:
    conf = app.conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"] and conf.result_serializer == "json"
    assert conf.task_ignore_result is True and conf.task_acks_late is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_routes["experiments.execute_run"] == {"queue": "gpu"}
    assert conf.task_routes["experiments.sweep_stale_runs"] == {"queue": "control"}
    assert conf.task_default_queue == "control"
    assert conf.beat_schedule["sweep-stale-runs"]["schedule"] == 30.0
    assert "experiments.execute_run" in app.tasks and "experiments.sweep_stale_runs" in app.tasks

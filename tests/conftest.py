"""Fixtures every test that drives a worker shares: the real PostgreSQL test database, Redis and one Celery worker.

They live here, at the root, and nowhere else: a session-scoped fixture defined (or imported) in two conftest files
is two fixtures, so the browser tests and the integration tests each started their own worker on the ``gpu``
queue. The first stayed alive for the whole session beside the second, the two took an experiment's runs
side by side, and on two cores each then ran several times slower (one CI run took 21 minutes for a
two-minute RULER run).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings
from django.db import connection

from gpu_workers.data.builtin_corpus import ensure_built
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.demo import DEMO_MODEL_DIR
from tests.integration.worker import WorkerProcess

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"] != "django.db.backends.postgresql":
        pytest.fail("integration tests need PostgreSQL: set DATABASE_URL=postgres://… (make test does)")
    user = db["USER"] or "postgres"
    auth = f"{user}:{db['PASSWORD']}" if db["PASSWORD"] else user
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def _broker_url() -> str:
    url = settings.CELERY_BROKER_URL
    if not url.startswith("redis://"):
        pytest.fail("integration tests need Redis: set CELERY_BROKER_URL=redis://… (make test does)")
    return url


@pytest.fixture(scope="session")
def demo_assets() -> Path:
    if not (DEMO_MODEL_DIR / "model.safetensors").exists():
        pytest.fail(f"the shipped demo model is missing from {DEMO_MODEL_DIR}")
    ensure_built(builtin_corpus_dir())
    return DEMO_MODEL_DIR


def _purge_broker() -> None:
    import redis

    redis.Redis.from_url(_broker_url()).flushdb()


@pytest.fixture(scope="session")
def worker_factory(django_db_setup, django_db_blocker) -> Iterator[Callable[..., WorkerProcess]]:
    """Start workers against the test database (names resolved after pytest-django created it)."""
    ARTIFACTS.mkdir(exist_ok=True)
    with django_db_blocker.unblock():
        database_url = _database_url()
    started: list[WorkerProcess] = []

    def start(**kwargs: object) -> WorkerProcess:
        worker = WorkerProcess(database_url, _broker_url(), ARTIFACTS, **kwargs)  # type: ignore[arg-type]
        started.append(worker)
        worker.wait_ready()
        return worker

    _purge_broker()
    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def celery_worker(worker_factory: Callable[..., WorkerProcess], demo_assets: Path) -> WorkerProcess:
    """One long-lived worker for the suite: starting one costs seconds (torch import)."""
    return worker_factory(extra_env={"CONTEXTLAB_CORPUS_DIR": str(builtin_corpus_dir())})

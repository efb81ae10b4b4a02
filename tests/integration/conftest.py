"""Integration helpers. The worker fixtures (PostgreSQL, Redis, the one Celery worker) are in ``tests/conftest.py``,
shared with the browser tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable

from gpu_workers.data.documents import builtin_corpus_dir
from tests.integration.worker import WorkerProcess


def wait_for(predicate: Callable[[], object], timeout: float, what: str, worker: WorkerProcess | None = None,
             interval: float = 0.5) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    tail = f"\nworker log:\n{worker.log()[-3000:]}" if worker else ""
    raise AssertionError(f"timed out after {timeout}s waiting for {what}{tail}")


os.environ.setdefault("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))

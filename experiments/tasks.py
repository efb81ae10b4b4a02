"""Celery shims: no logic here, only the bridge from a message to ``experiments.worker`` (runs),
``experiments.services`` (the stale-run sweeper) and ``experiments.length_stats`` (a dataset's token lengths).

Nothing in the app imports this module but Celery (``autodiscover_tasks``): senders name the task
(``webapp.celery``), so the code that enqueues never imports the code that executes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from celery import shared_task

from experiments import length_stats, services, worker
from webapp.celery import LENGTH_STATS_TASK, RUN_TASK, SWEEP_TASK

if TYPE_CHECKING:
    from celery import Task


@shared_task(name=RUN_TASK, bind=True, acks_late=True)
def execute_run(self: Task, run_id: str) -> str:
    return worker.execute_run(run_id, worker=self.request.hostname or "")


@shared_task(name=SWEEP_TASK)
def sweep_stale_runs() -> int:
    return services.sweep_stale_runs()


@shared_task(name=LENGTH_STATS_TASK, bind=True, acks_late=True)
def measure_dataset_lengths(self: Task, task_id: str) -> str:
    return length_stats.measure(task_id, worker=self.request.hostname or "")

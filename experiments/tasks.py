"""Celery shims: no logic here, only the bridge from a message to ``experiments.services`` (runs) and
``experiments.length_stats`` (a dataset's token lengths)."""

from __future__ import annotations

from celery import shared_task

from experiments import length_stats, services


@shared_task(name="experiments.execute_run", bind=True, acks_late=True)
def execute_run(self, run_id: str) -> str:  # type: ignore[no-untyped-def]
    return services.execute_run(run_id, worker=self.request.hostname or "")


@shared_task(name="experiments.sweep_stale_runs")
def sweep_stale_runs() -> int:
    return services.sweep_stale_runs()


@shared_task(name="experiments.measure_dataset_lengths", bind=True, acks_late=True)
def measure_dataset_lengths(self, task_id: str) -> str:  # type: ignore[no-untyped-def]
    return length_stats.measure(task_id, worker=self.request.hostname or "")

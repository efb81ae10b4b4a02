"""The Celery app: one run = one task on queue "gpu"; housekeeping on queue "control".

Settings come from Django's settings (namespace ``CELERY_``) so the broker URL has one home; the
choices below are fixed by the design, so they live here, each with its reason.
"""

from __future__ import annotations

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")

app = Celery("webapp")
app.config_from_object("django.conf:settings", namespace="CELERY")

RUN_TASK = "experiments.execute_run"
SWEEP_TASK = "experiments.sweep_stale_runs"
LENGTH_STATS_TASK = "experiments.measure_dataset_lengths"

app.conf.update(
    # JSON only: a message is plain data (a run id), never a pickled object a worker would execute.
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    # The database is the truth about a run; a result backend would be a second, drifting copy.
    task_ignore_result=True,
    # Ack after the task finishes, so a worker killed mid-run gets its message redelivered
    # (the claim makes the redelivery a no-op and the sweeper fails the orphaned run).
    task_acks_late=True,
    # A worker holding a long GPU run must not sit on other runs another worker could take.
    worker_prefetch_multiplier=1,
    # GPU work and housekeeping scale separately: GPU hosts consume "gpu", a small box "control".
    # Measuring a dataset's token lengths is seconds of CPU when it is registered: the control worker takes it, so
    # it never waits behind an hours-long run on a GPU worker.
    task_routes={RUN_TASK: {"queue": "gpu"}, SWEEP_TASK: {"queue": "control"}, LENGTH_STATS_TASK: {"queue": "control"}},
    # Anything unrouted is cheap bookkeeping, never GPU work.
    task_default_queue="control",
    # Keep retrying the broker at boot (Celery 6 otherwise stops), e.g. when Redis starts later.
    broker_connection_retry_on_startup=True,
    # The sweeper turns runs whose worker died into "failed" within a heartbeat timeout + 30 s.
    beat_schedule={"sweep-stale-runs": {"task": SWEEP_TASK, "schedule": 30.0}},
)

app.autodiscover_tasks()

"""A dataset's token lengths travel for real: the dataset form → PostgreSQL → Redis (queue "control") → a
Celery worker process that measures them → the dataset page reads them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client
from django.urls import reverse

from experiments.models import Dataset, DatasetLengthStats, Team
from tests.integration.conftest import wait_for
from tests.integration.worker import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_a_registered_dataset_is_measured_by_the_worker_and_its_page_shows_it(
    celery_worker: WorkerProcess, demo_assets: Any, tmp_path: Path,
) -> None:
    call_command("seed_demo", verbosity=0)
    from django.contrib.auth import get_user_model

    data = tmp_path / "notes.jsonl"
    data.write_text("".join(f'{{"text": "{" ".join(["the pass key is long"] * (40 * (i + 1)))}", '
                            f'"source": "{"a" if i % 2 else "b"}"}}\n' for i in range(6)))
    client = Client()
    client.force_login(get_user_model().objects.get(username="demo"))
    team = Team.objects.get(name="Demo team")
    response = client.post(reverse("dataset_new"), {"team": team.pk, "name": "Notes", "kind": "local",
                                                    "path": str(data), "text_field": "text", "source_field": "source"})
    assert response.status_code == 302
    dataset = Dataset.objects.get(name="Notes")
    row = wait_for(lambda: DatasetLengthStats.objects.filter(dataset=dataset, status="succeeded").first(), 120,
                   "the worker to measure the new dataset", celery_worker)
    assert row.documents == 6 and set(row.lengths) == {"a", "b"} and row.worker.startswith("test-")
    poll = client.get(reverse("dataset_length_stats", args=[dataset.pk])).json()
    assert poll["pending"] is False and poll["rows"][0]["tokens"] == row.tokens

"""The production compose file names the stack the README describes, and CI runs the README's command."""

from __future__ import annotations

from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_compose_names_postgres_redis_web_and_a_gpu_worker() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"postgres", "redis", "web", "worker", "control"} <= set(services)
    worker = services["worker"]
    assert "-Q gpu" in worker["command"] and "--prefetch-multiplier 1" in worker["command"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["driver"] == "nvidia"
    assert "-B" in services["control"]["command"].split()  # exactly one beat: the sweeper's
    env = compose["x-app"]["environment"]
    assert env["DATABASE_URL"].startswith("postgres://") and env["CELERY_BROKER_URL"].startswith("redis://")


def test_ci_runs_the_readme_test_command() -> None:
    assert "make test" in (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme and "make run" in readme
    assert "torch==2.13.0" in (ROOT / "requirements.txt").read_text()

"""Submit → running: how long a run waits between its submit and an idle worker's claim, per broker.

Run by hand and paste the output into docs/performance.md:

    .venv/bin/python -m benches.submit_latency                    # 20 samples per broker, PostgreSQL
    .venv/bin/python -m benches.submit_latency --samples 5        # quick
    .venv/bin/python -m benches.submit_latency --sqlite           # the embedded defaults of `make run`

It drops and recreates its own PostgreSQL database (``--db``, default ``contextlab_latency``, on the server of
``--admin-url``; or, with ``--sqlite``, a SQLite file in a temporary folder), migrates it and runs
``manage.py seed_demo``. Then, for each broker — the embedded filesystem broker with the poll interval of
``CONTEXTLAB_BROKER_POLL_INTERVAL`` left at its default, the same broker at ``--baseline-poll`` (1.0 s: the
old value, kombu's own default), and Redis (``--redis-url``, a database of its own that is flushed first) —
a fresh process starts a real Celery worker process as ``tests/integration/worker.py`` does (``celery -A
webapp worker -Q gpu,control --concurrency 1 --prefetch-multiplier 1``, no beat, its own temporary data
folder and so its own broker folder), waits for its "ready" line, runs ``--warmup`` unmeasured runs (the
first one imports torch in the pool's child), then ``--samples`` measured ones.

A sample submits an experiment with one method (``none``) through ``experiments.services.submit_experiment``,
the function the composer and the API call: the run is written and committed, and its task is sent from the
on-commit callback. The clock starts when that callback starts (right after COMMIT returned; the bench wraps
``services.enqueue_run`` to take the time, nothing else changes) and stops at the run's ``started_at``,
which the worker's claim writes (``experiments.worker.claim_run``, the queued → running UPDATE): both are
``time.time()`` of processes on the same machine. The submitting process also polls the run's status every
``--poll-ms`` and reports when it first saw ``running`` (the claim's commit, plus up to one poll).

The run then has to end quickly so that the worker is idle for the next sample: it evaluates perplexity at
64 tokens on one document of the built-in corpus with the shipped demo model, and is cancelled
(``services.cancel_run``) as soon as it is seen running, so it stops at the pipeline's first cancel check.
The next submit waits until the run has ended, plus a random pause of ``--idle`` to ``--idle`` + 1 s, so
submits land at random phases of the filesystem broker's poll (which divides 1 s), not always at the same one.

Figures per broker: median, p90 (nearest rank), max and min of submit → claim in ms, the median of
submit → seen running and of the send itself (``send_task``), and the ratios of the medians.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

from benches.web_scale import machine, recreate_database, setup_django

USERNAME = "demo"
MODEL_NAME = "Demo Llama (tiny)"
DATASET_NAME = "Demo corpus (code + prose)"
TARGET_MS = 300
TERMINAL = ("succeeded", "failed", "cancelled")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--samples", type=int, default=20, help="measured submits per broker")
    parser.add_argument("--warmup", type=int, default=2, help="unmeasured submits per broker after the worker "
                        "is ready (the first imports torch in the pool's child)")
    parser.add_argument("--brokers", default="filesystem,filesystem-baseline,redis",
                        help="comma-separated, in this order: filesystem (poll interval left at the setting's "
                        "default), filesystem-baseline (--baseline-poll), redis")
    parser.add_argument("--baseline-poll", type=float, default=1.0,
                        help="CONTEXTLAB_BROKER_POLL_INTERVAL of filesystem-baseline (the old value)")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/14",
                        help="a Redis database for this bench alone: it is flushed before the worker starts")
    parser.add_argument("--idle", type=float, default=0.5, help="seconds between a run's end and the next submit "
                        "(plus a random 0-1 s)")
    parser.add_argument("--poll-ms", type=float, default=5.0, help="how often the submitter reads the run's status")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds a sample may take before the bench "
                        "gives up and prints the worker's log")
    parser.add_argument("--seed", type=int, default=0, help="of the random pauses")
    parser.add_argument("--sqlite", action="store_true", help="a SQLite file instead of PostgreSQL (both processes "
                        "on the one file, as `make run`)")
    parser.add_argument("--db", default="contextlab_latency")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                              "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL URL allowed to drop and create --db")
    parser.add_argument("--child", default="", help="internal: measure this broker in this process")
    parser.add_argument("--database-url", default="", help="internal: the child's database")
    return parser.parse_args(argv)


# --- one broker, in a process of its own (settings are read once per process) ------------------------------


def broker_env(broker: str, args: argparse.Namespace, data_dir: str) -> dict[str, str]:
    """The environment both the submitting process and its worker get for *broker*."""
    from gpu_workers.data.documents import builtin_corpus_dir

    env = {"CONTEXTLAB_DATA_DIR": data_dir, "CONTEXTLAB_CORPUS_DIR": str(builtin_corpus_dir())}
    if broker == "redis":
        env["CELERY_BROKER_URL"] = args.redis_url
    else:
        env["CELERY_BROKER_URL"] = "filesystem://"
    if broker == "filesystem-baseline":
        env["CONTEXTLAB_BROKER_POLL_INTERVAL"] = repr(args.baseline_poll)
    return env


def experiment_data(user: Any) -> dict[str, Any]:
    """What the composer hands ``submit_experiment`` for the cheapest run there is: the baseline method,
    perplexity at 64 tokens on one document of the built-in corpus, no training."""
    from experiments.models import BaseModel, Dataset
    from gpu_workers.methods import validate
    from gpu_workers.spec import EvalSpec, TrainSpec

    model = BaseModel.objects.get(team__isnull=True, name=MODEL_NAME)
    target = model.original_context
    return {
        "team": user.memberships.get().team, "name": "latency", "base_model": model,
        "dataset": Dataset.objects.get(team__isnull=True, name=DATASET_NAME), "target_length": target,
        "evaluation": EvalSpec(lengths=(64,), documents=1, suite=("perplexity",)), "training": TrainSpec(),
        "methods": [{"family": "none", "params": validate("none", {}, model.rope_facts(), target)}],
    }


class Sampler:
    """Submits runs the web's way and times them; ``services.enqueue_run`` wrapped to note the commit."""

    def __init__(self, args: argparse.Namespace, worker: Any) -> None:
        from django.contrib.auth import get_user_model

        from experiments import services

        self.args = args
        self.worker = worker
        self.services = services
        self.user = get_user_model().objects.get(username=USERNAME)
        self.data = experiment_data(self.user)
        self.stamps: dict[str, float] = {}
        send = services.enqueue_run

        def timed_enqueue(run_uuid: str) -> None:  # runs as the on-commit callback, i.e. right after COMMIT
            self.stamps["commit"] = time.time()
            send(run_uuid)
            self.stamps["sent"] = time.time()

        services.enqueue_run = timed_enqueue

    def _wait(self, run_pk: int, done: Any, interval: float, what: str) -> dict[str, Any]:
        from experiments.models import Run

        deadline = time.monotonic() + self.args.timeout
        while True:
            row = Run.objects.filter(pk=run_pk).values("status", "started_at", "finished_at", "error").get()
            if done(row):
                return row
            if time.monotonic() > deadline:
                raise TimeoutError(f"run {run_pk} not {what} after {self.args.timeout} s (status {row['status']}):\n"
                                   f"worker log:\n{self.worker.log()[-4000:]}")
            time.sleep(interval)

    def sample(self) -> dict[str, Any]:
        from experiments.models import Run

        self.stamps.clear()
        experiment = self.services.submit_experiment(self.user, self.data)
        run = Run.objects.get(experiment=experiment)
        row = self._wait(run.pk, lambda r: r["status"] != "queued", self.args.poll_ms / 1000, "claimed")
        seen = time.time()
        self.services.cancel_run(self.user, run)
        end = self._wait(run.pk, lambda r: r["status"] in TERMINAL, 0.02, "ended")
        commit = self.stamps["commit"]
        return {
            "claim_ms": (row["started_at"].timestamp() - commit) * 1000,
            "seen_ms": (seen - commit) * 1000,
            "send_ms": (self.stamps["sent"] - commit) * 1000,
            "run_s": (end["finished_at"] - end["started_at"]).total_seconds(),
            "status": end["status"],
        }


def child(args: argparse.Namespace) -> int:
    """Start a worker on this process's broker, measure, stop it; one JSON line on stdout."""
    from tests.integration.worker import WorkerProcess

    setup_django(args.database_url)
    from django.conf import settings

    transport = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    out: dict[str, Any] = {"broker": args.child, "broker_url": settings.CELERY_BROKER_URL,
                           "poll_s": transport.get("polling_interval"), "samples": [], "warmup": []}
    if args.child == "redis":
        import redis

        redis.Redis.from_url(args.redis_url).flushdb()
    log_dir = Path(os.environ["CONTEXTLAB_DATA_DIR"])
    keep = ("CONTEXTLAB_DATA_DIR", "CONTEXTLAB_CORPUS_DIR", "CONTEXTLAB_BROKER_POLL_INTERVAL")
    worker = WorkerProcess(args.database_url, settings.CELERY_BROKER_URL, log_dir,
                           extra_env={k: os.environ[k] for k in keep if k in os.environ})
    started = time.monotonic()
    rng = random.Random(args.seed)
    try:
        worker.wait_ready()
        out["ready_s"] = time.monotonic() - started
        sampler = Sampler(args, worker)
        for i in range(args.warmup + args.samples):
            time.sleep(args.idle + rng.random())
            figures = sampler.sample()
            (out["warmup"] if i < args.warmup else out["samples"]).append(figures)
            print(f"  {args.child} {'warm-up' if i < args.warmup else 'sample'} {i + 1}: claim "
                  f"{figures['claim_ms']:.0f} ms, seen {figures['seen_ms']:.0f} ms, run {figures['run_s']:.2f} s "
                  f"({figures['status']})", file=sys.stderr, flush=True)
    except Exception as exc:  # report what happened instead of a figure
        out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        worker.stop()
    if "error" in out:
        out["error"] += f" (worker log: {worker.log_path})"
    else:
        shutil.rmtree(log_dir, ignore_errors=True)  # the data folder: broker, runs, worker log
    print(json.dumps(out))
    return 0


# --- the whole bench ---------------------------------------------------------------------------------------


def nearest_rank(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def prepare_database(args: argparse.Namespace) -> tuple[str, str]:
    """Recreate, migrate and seed the bench's database; its URL and a line describing it."""
    if args.sqlite:
        url = f"sqlite:///{tempfile.mkdtemp(prefix='bench-latency-db-')}/db.sqlite3"
        setup_django(url)
        import sqlite3

        described = f"SQLite {sqlite3.sqlite_version} (a temporary file)"
    else:
        url, version = recreate_database(args.admin_url, args.db)
        setup_django(url)
        described = f"PostgreSQL {version} ({args.db}, recreated)"
    import django
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("seed_demo", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115
    return url, f"{described}; Django {django.get_version()}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    print("$ .venv/bin/python -m benches.submit_latency " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"machine: {machine()}")
    print(f"date: {datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}")
    os.environ["CONTEXTLAB_DATA_DIR"] = tempfile.mkdtemp(prefix="bench-latency-seed-")
    os.environ["CELERY_BROKER_URL"] = "filesystem://"  # seed_demo's requests go nowhere a bench worker reads
    url, described = prepare_database(args)
    print(f"database: {described}")
    import celery
    import kombu

    print(f"Celery {celery.__version__}, kombu {kombu.__version__}")
    results = []
    for broker in [b.strip() for b in args.brokers.split(",") if b.strip()]:
        env = {k: v for k, v in os.environ.items() if k != "CONTEXTLAB_BROKER_POLL_INTERVAL"}
        env.update(broker_env(broker, args, tempfile.mkdtemp(prefix=f"bench-latency-{broker}-")))
        command = [sys.executable, "-m", "benches.submit_latency", "--child", broker, "--database-url", url,
                   "--samples", str(args.samples), "--warmup", str(args.warmup), "--redis-url", args.redis_url,
                   "--idle", str(args.idle), "--poll-ms", str(args.poll_ms), "--timeout", str(args.timeout),
                   "--seed", str(args.seed)]
        print(f"{broker}: starting a worker ...", flush=True)
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=False, env=env)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            print(f"{broker}: the measuring process exited with {done.returncode}:\n{done.stdout}", file=sys.stderr)
            return 1
        results.append(json.loads(lines[-1]))
    shutil.rmtree(os.environ["CONTEXTLAB_DATA_DIR"], ignore_errors=True)
    if args.sqlite:
        shutil.rmtree(Path(url.removeprefix("sqlite:///")).parent, ignore_errors=True)
    return report(args, results)


def report(args: argparse.Namespace, results: list[dict[str, Any]]) -> int:
    print(f"\nsubmit → running on an idle worker, {args.samples} samples per broker (after {args.warmup} "
          f"warm-up), ms:")
    print("| broker | poll interval | worker ready | median | p90 | max | min | seen running (median) | "
          "send (median) | run to its end (median) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    medians: dict[str, float] = {}
    verdicts = []
    for result in results:
        name = result["broker"]
        poll = "—" if result["poll_s"] is None else f"{result['poll_s']:g} s"
        if "error" in result and not result["samples"]:
            print(f"| {name} | {poll} | — | failed: {result['error'][:300]} |||||||")
            verdicts.append(f"{name}: no figures ({result['error'].splitlines()[0]})")
            continue
        claim = [s["claim_ms"] for s in result["samples"]]
        medians[name] = statistics.median(claim)
        print(f"| {name} | {poll} | {result['ready_s']:.1f} s | {medians[name]:.0f} | {nearest_rank(claim, 0.9):.0f} "
              f"| {max(claim):.0f} | {min(claim):.0f} | "
              f"{statistics.median(s['seen_ms'] for s in result['samples']):.0f} | "
              f"{statistics.median(s['send_ms'] for s in result['samples']):.1f} | "
              f"{statistics.median(s['run_s'] for s in result['samples']) * 1000:.0f} |")
        statuses = sorted({s["status"] for s in result["samples"]})
        over = sum(c > TARGET_MS for c in claim)
        verdict = "met" if over == 0 else f"not met ({over} of {len(claim)} samples over {TARGET_MS} ms)"
        verdicts.append(f"{name}: ≤ {TARGET_MS} ms on every sample: {verdict}; runs ended {', '.join(statuses)}")
        if "error" in result:
            verdicts.append(f"{name}: stopped early after {len(claim)} samples: {result['error'].splitlines()[0]}")
    print()
    for left, right in (("filesystem", "redis"), ("filesystem-baseline", "redis"),
                        ("filesystem-baseline", "filesystem")):
        if left in medians and right in medians and medians[right] > 0:
            print(f"median {left} / {right}: {medians[left] / medians[right]:.1f}×")
    print()
    for line in verdicts:
        print(line)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The web side at scale: list pages, the API list, the leaderboard, a 50-run experiment and a big CSV.

Run by hand and paste the output into docs/performance.md:

    .venv/bin/python -m benches.web_scale --experiments 10000 --measurements 500000
    .venv/bin/python -m benches.web_scale --experiments 1000 --measurements 50000 --csv-rows 100000   # quick

It drops and recreates its own PostgreSQL database (``--db``, default ``contextlab_bench``, on the server of
``--admin-url``), migrates it, seeds a baseline (``--baseline`` experiments) and times every page, then
seeds up to ``--experiments`` and times them again, so each figure has a ratio to the same page on a small
database measured in the same run. Times are in-process server times (Django's test Client, logged in:
middleware, views, queries, templates; no network), the median of ``--repeats``, with the query count of
one request. The CSV export streams one experiment of ``--csv-rows`` measurements; it reports the time to
the first byte, the whole stream, and the growth of the resident set while streaming (VmRSS sampled every
chunk, and VmHWM after resetting it through /proc/self/clear_refs where the kernel allows).
"""

from __future__ import annotations

import argparse
import gc
import os
import shlex
import statistics
import subprocess
import sys
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

RUN_STATUSES = ("succeeded", "succeeded", "succeeded", "failed", "cancelled", "queued", "running")
LENGTHS = (1024, 2048, 4096, 8192)
METRICS = ("perplexity", "longppl", "passkey_accuracy")
DETAIL_RUNS = 50
COMPARE_RUNS = 20
CSV_RUNS = 10
BATCH = 2000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--experiments", type=int, default=10_000, help="experiments in all (besides the two "
                        "special ones: the 50-run experiment and the CSV experiment)")
    parser.add_argument("--measurements", type=int, default=500_000, help="measurements spread over their runs")
    parser.add_argument("--runs-per-experiment", type=int, default=4)
    parser.add_argument("--csv-rows", type=int, default=1_000_000, help="measurements of the CSV experiment")
    parser.add_argument("--baseline", type=int, default=100, help="experiments of the first, small round")
    parser.add_argument("--teams", type=int, default=5, help="teams; the timed user is in all of them")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--csv-repeats", type=int, default=1)
    parser.add_argument("--db", default="contextlab_bench")
    parser.add_argument("--csv-only", action="store_true", help="internal: stream the CSV of an already seeded "
                        "--db in this (fresh) process and print the figures")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                              "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL URL allowed to drop and create --db")
    return parser.parse_args(argv)


def machine() -> str:
    from benches.machine import cpu_model

    return f"{cpu_model()}, {os.cpu_count()} logical cores, Python {sys.version.split()[0]}"


def recreate_database(admin_url: str, name: str) -> tuple[str, str]:
    import psycopg

    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}"')
        conn.execute(f'CREATE DATABASE "{name}"')
        version = conn.execute("SHOW server_version").fetchone()[0]
    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", "", "")), version


# --- seeding ---------------------------------------------------------------------------------------------


class Seeder:
    def __init__(self, teams: int) -> None:
        from django.contrib.auth import get_user_model

        from experiments.models import BaseModel, Dataset, Membership, Method, Team, params_hash

        self.user = get_user_model().objects.create_user("bench", password="bench-password-long-enough")
        self.teams = Team.objects.bulk_create([Team(name=f"Team {i}") for i in range(teams)])
        Membership.objects.bulk_create([Membership(user=self.user, team=t, role=Membership.Role.ADMIN)
                                        for t in self.teams])
        facts = {"architecture": "LlamaForCausalLM", "model_type": "llama", "has_rope": True, "head_dim": 64,
                 "rope_theta": 10000.0, "original_context": 1024, "rope_type": "default"}
        self.models = []
        for i in range(5):
            model = BaseModel(team=None, name=f"Model {i}", source=f"/models/m{i}")
            model.apply_facts(facts)
            self.models.append(model)
        BaseModel.objects.bulk_create(self.models)
        self.datasets = Dataset.objects.bulk_create([Dataset(team=None, name=f"Data {i}", kind="builtin")
                                                     for i in range(5)])
        methods = []
        for i in range(20):
            params = {"factor": 2.0 + i}
            methods.append(Method(team=None, family="pi", params=params, params_hash=params_hash(params),
                                  name=f"pi ×{2 + i}"))
        self.methods = Method.objects.bulk_create(methods)
        self.experiments = 0

    def experiments_with_runs(self, count: int, runs_each: int, prefix: str = "Exp") -> list[Any]:
        """*count* experiments of *runs_each* runs, in batches; returns the runs' ids."""
        from django.utils import timezone

        from experiments.models import Experiment, Run

        run_ids: list[int] = []
        now = timezone.now()
        for start in range(0, count, BATCH):
            batch = []
            for i in range(start, min(count, start + BATCH)):
                n = self.experiments + i
                batch.append(Experiment(
                    team=self.teams[n % len(self.teams)], created_by=self.user, name=f"{prefix} {n:06d}",
                    base_model=self.models[n % len(self.models)], dataset=self.datasets[n % len(self.datasets)],
                    target_length=max(LENGTHS), eval_lengths=list(LENGTHS), eval_documents=4,
                    training={"mode": "none"}, evaluations={"suite": ["perplexity"]}))
            made = Experiment.objects.bulk_create(batch)
            runs = [
                Run(experiment=e, method=self.methods[(e.pk + r) % len(self.methods)],
                    status=RUN_STATUSES[(e.pk + r) % len(RUN_STATUSES)], queued_at=now, started_at=now,
                    finished_at=now, progress=1.0, protocol={})
                for e in made for r in range(runs_each)
            ]
            run_ids += [run.pk for run in Run.objects.bulk_create(runs, batch_size=BATCH)]
        self.experiments += count
        return run_ids

    @staticmethod
    def measurements(run_ids: list[int], total: int) -> None:
        """*total* measurements round-robin over *run_ids* (metric × length grid), generated by PostgreSQL."""
        from django.db import connection

        if not run_ids or total <= 0:
            return
        with connection.cursor() as cursor:
            for start in range(0, total, 200_000):
                n = min(total, start + 200_000) - start
                cursor.execute(
                    """
                    INSERT INTO experiments_measurement
                        (run_id, metric, value, context_length, depth, samples, ci_low, ci_high, step, protocol_key)
                    SELECT (%(runs)s::bigint[])[1 + (g %% %(nruns)s)],
                           (%(metrics)s::text[])[1 + ((g / %(nruns)s) %% %(nmetrics)s)],
                           10 + (g %% 97) / 10.0,
                           (%(lengths)s::int[])[1 + ((g / (%(nruns)s * %(nmetrics)s)) %% %(nlengths)s)],
                           NULL, 4, 9 + (g %% 97) / 10.0, 11 + (g %% 97) / 10.0, NULL, 'k1'
                    FROM generate_series(%(start)s, %(stop)s) AS g
                    """,
                    {"runs": run_ids, "nruns": len(run_ids), "metrics": list(METRICS), "nmetrics": len(METRICS),
                     "lengths": list(LENGTHS), "nlengths": len(LENGTHS), "start": start,
                     "stop": start + n - 1},
                )

    @staticmethod
    def spread_dates() -> None:
        """Experiments one minute apart, newest last (bulk_create stamps them all with the same instant)."""
        from django.db import connection

        with connection.cursor() as cursor:
            cursor.execute("UPDATE experiments_experiment SET created = now() - (100000 - id) * interval '1 minute'")
            cursor.execute("ANALYZE")


# --- timing ---------------------------------------------------------------------------------------------


def timed(client: Any, url: str, repeats: int) -> tuple[float, float, int, int]:
    """(median ms, min ms, queries of one request, response bytes)."""
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    def body(response: Any) -> bytes:
        """The whole response, a streamed one (a CSV) read to its end inside the timing."""
        return b"".join(response.streaming_content) if response.streaming else response.content

    with CaptureQueriesContext(connection) as captured:
        response = client.get(url)
        content = body(response)
    assert response.status_code == 200, (url, response.status_code)
    queries, size = len(captured), len(content)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        body(client.get(url))
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times), min(times), queries, size


def rss_kb(field: str = "VmRSS") -> int:
    with open("/proc/self/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


def stream_csv(client: Any, url: str) -> dict[str, Any]:
    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    gc.collect()
    peak_reset = reset_peak()
    before = rss_kb()
    top = before
    size = lines = 0
    with CaptureQueriesContext(connection) as captured:
        started = time.perf_counter()
        response = client.get(url)
        first = None
        for i, chunk in enumerate(response.streaming_content):
            if first is None:
                first = time.perf_counter() - started
            size += len(chunk)
            lines += chunk.count(b"\n")
            if i % 200 == 0:
                top = max(top, rss_kb())
        total = time.perf_counter() - started
    top = max(top, rss_kb())
    return {"status": response.status_code, "first_byte_s": first, "total_s": total, "bytes": size,
            "lines": lines, "rss_before_mb": before / 1024, "rss_growth_mb": (top - before) / 1024,
            "hwm_growth_mb": (rss_kb("VmHWM") - before) / 1024 if peak_reset else None,
            "queries": len(captured)}


def setup_django(url: str) -> None:
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "webapp.settings")
    os.environ["DJANGO_DEBUG"] = "0"
    os.environ.setdefault("DJANGO_SECRET_KEY", "bench-only-not-secret-" + "x" * 40)
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"
    os.environ["DJANGO_SECURE_SSL_REDIRECT"] = "0"
    os.environ.setdefault("CONTEXTLAB_MANIFEST_STATIC", "0")
    import django

    django.setup()


def print_csv(client: Any, url: str, repeats: int, where: str) -> None:
    for attempt in range(repeats):
        figures = stream_csv(client, url)
        hwm = "n/a" if figures["hwm_growth_mb"] is None else f"{figures['hwm_growth_mb']:.1f} MB"
        print(f"  {where} #{attempt + 1}: status {figures['status']}, first byte {figures['first_byte_s']:.3f} s, "
              f"whole {figures['total_s']:.1f} s, {figures['lines']:,} lines, {figures['bytes'] / 2**20:.1f} MiB, "
              f"RSS before {figures['rss_before_mb']:.1f} MB, peak growth {figures['rss_growth_mb']:.1f} MB "
              f"(VmRSS sampled), VmHWM growth {hwm}, {figures['queries']} queries", flush=True)


def csv_only(args: argparse.Namespace) -> int:
    """The CSV figures in a process that did not seed: its heap holds no freed seeding memory to reuse."""
    parts = urlsplit(args.admin_url)
    setup_django(urlunsplit((parts.scheme, parts.netloc, f"/{args.db}", "", "")))
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from experiments.models import Experiment

    client = Client()
    client.force_login(get_user_model().objects.get(username="bench"))
    big = Experiment.objects.get(name__startswith="Big CSV")
    client.get(reverse("dashboard"))  # warm the URLconf, templates and connection
    print_csv(client, reverse("experiment_csv", args=[big.uuid]), args.csv_repeats, "fresh process")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.csv_only:
        return csv_only(args)
    print("$ .venv/bin/python -m benches.web_scale " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"machine: {machine()}")
    url, pg_version = recreate_database(args.admin_url, args.db)
    setup_django(url)
    import django
    from django.conf import settings
    from django.core.management import call_command
    from django.test import Client
    from django.urls import reverse

    print(f"database: PostgreSQL {pg_version} ({args.db}, recreated); Django {django.get_version()}; "
          f"page size {settings.CONTEXTLAB_PAGE_SIZE}")
    started = time.perf_counter()
    call_command("migrate", verbosity=0)
    print(f"migrate: {time.perf_counter() - started:.1f} s")

    seeder = Seeder(args.teams)
    started = time.perf_counter()
    detail_runs = seeder.experiments_with_runs(1, DETAIL_RUNS, prefix="Fifty runs")
    seeder.measurements(detail_runs, DETAIL_RUNS * len(METRICS) * len(LENGTHS))
    csv_runs = seeder.experiments_with_runs(1, CSV_RUNS, prefix="Big CSV")
    seeder.measurements(csv_runs, args.csv_rows)
    from experiments.models import Experiment, Measurement, Run

    detail = Experiment.objects.get(name__startswith="Fifty runs")
    big = Experiment.objects.get(name__startswith="Big CSV")
    Run.objects.filter(experiment__in=[detail, big]).update(status="succeeded")
    baseline = max(0, min(args.baseline, args.experiments))
    share = args.measurements / max(args.experiments, 1)
    runs = seeder.experiments_with_runs(baseline, args.runs_per_experiment)
    seeder.measurements(runs, round(share * baseline))
    seeder.spread_dates()
    print(f"seed baseline: {time.perf_counter() - started:.1f} s")

    client = Client()
    client.force_login(seeder.user)
    half = COMPARE_RUNS // 2  # the big CSV experiment's runs hold 100,000 measurements each: not compared
    compared = [*Run.objects.filter(experiment=detail).order_by("id").values_list("uuid", flat=True)[:half],
                *Run.objects.filter(experiment__name__startswith="Exp").order_by("id")
                .values_list("uuid", flat=True)[:half]]
    compare_url = reverse("run_compare") + "?" + "&".join(f"runs={u}" for u in compared)
    pages: list[tuple[str, str]] = [
        ("dashboard, page 1", reverse("dashboard")),
        ("dashboard, filtered (status=failed, q=0, model)", reverse("dashboard")
         + f"?status=failed&q=0&base_model={seeder.models[1].pk}"),
        ("dashboard, last page", reverse("dashboard") + "?page=999999"),
        ("API list, page 1", reverse("api_experiments")),
        ("API list, filtered page 2", reverse("api_experiments") + "?status=failed&q=0&page=2"),
        ("leaderboard", reverse("leaderboard")),
        ("pivot leaderboard, by length", reverse("leaderboard_pivot")),
        ("pivot leaderboard, summary", reverse("leaderboard_pivot") + "?view=summary"),
        ("pivot leaderboard CSV", reverse("leaderboard_pivot_csv")),
        (f"compare page ({COMPARE_RUNS} runs, 4 experiments)", compare_url),
        (f"experiment page ({DETAIL_RUNS} runs)", reverse("experiment_detail", args=[detail.uuid])),
        ("experiment status JSON", reverse("experiment_status", args=[detail.uuid])),
    ]

    def measure_all(label: str) -> dict[str, tuple[float, float, int, int]]:
        counts = (Experiment.objects.count(), Run.objects.count(), Measurement.objects.count())
        print(f"\n{label}: {counts[0]:,} experiments, {counts[1]:,} runs, {counts[2]:,} measurements "
              f"(the CSV experiment's {args.csv_rows:,} included)")
        print(f"{'page':<52} {'median ms':>10} {'min ms':>8} {'queries':>8} {'bytes':>9}")
        results = {}
        for name, url in pages:
            results[name] = timed(client, url, args.repeats)
            median, low, queries, size = results[name]
            print(f"{name:<52} {median:>10.1f} {low:>8.1f} {queries:>8} {size:>9,}")
        return results

    small = measure_all(f"baseline ({baseline} experiments)")

    started = time.perf_counter()
    rest = args.experiments - baseline
    runs = seeder.experiments_with_runs(rest, args.runs_per_experiment)
    seeder.measurements(runs, args.measurements - round(share * baseline))
    seeder.spread_dates()
    print(f"\nseed the rest: {time.perf_counter() - started:.1f} s")
    full = measure_all(f"full ({args.experiments} experiments)")

    print(f"\n{'page':<52} {'ms ratio':>9} {'queries small → full':>22}")
    for name, _ in pages:
        ratio = full[name][0] / small[name][0] if small[name][0] else float("nan")
        print(f"{name:<52} {ratio:>9.2f} {small[name][2]:>10} → {full[name][2]}")

    csv_url = reverse("experiment_csv", args=[big.uuid])
    print(f"\nCSV of the experiment with {args.csv_rows:,} measurements ({CSV_RUNS} runs), streamed:")
    print_csv(client, csv_url, args.csv_repeats, "this process (after seeding)")
    sys.stdout.flush()
    subprocess.run([sys.executable, "-m", "benches.web_scale", "--csv-only", "--db", args.db, "--admin-url",
                    args.admin_url, "--csv-repeats", str(args.csv_repeats)], check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The first experiment submit in a fresh web process: what it imports, how long it takes, how big it gets.

Run by hand and paste the output into docs/performance.md:

    .venv/bin/python -m benches.first_submit                 # 3 fresh processes, the composer's default suite
    .venv/bin/python -m benches.first_submit --ruler         # RULER ticked too (its prompts are generated)

It drops and recreates its own PostgreSQL database (``--db``, on the server of ``--admin-url``), migrates
it and runs ``manage.py seed_demo`` (the demo model, the built-in corpus and, where this checkout has them,
the corpus's stored length statistics). Then, ``--processes`` times, a fresh Python process does what a
web worker does when it starts and takes its first composer POST: ``django.setup()``, ``import
webapp.urls`` (every view, the API, the admin), one POST of the composer's default form to
``/experiments/new/`` with Django's test ``Client`` (logged in; middleware, form, services, the run
enqueued on a filesystem broker in a temporary folder; no network), then a second POST. It reports each
step's time, whether ``torch`` / ``transformers`` were imported by then, and the resident set size.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from benches.web_scale import machine, recreate_database, rss_kb, setup_django

HEAVY = ("torch", "transformers")
MODEL_NAME = "Demo Llama (tiny)"
DATASET_NAME = "Demo corpus (code + prose)"
USERNAME = "demo"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--processes", type=int, default=3, help="fresh web processes, one first submit each")
    parser.add_argument("--ruler", action="store_true", help="tick RULER in the suite (its settings are checked by "
                        "generating its prompts with the model's tokenizer)")
    parser.add_argument("--db", default="contextlab_bench_submit")
    parser.add_argument("--child", action="store_true", help="internal: be the fresh web process")
    parser.add_argument("--admin-url", default=os.environ.get("BENCH_ADMIN_URL",
                                                              "postgres://postgres@127.0.0.1:5432/postgres"),
                        help="a PostgreSQL URL allowed to drop and create --db")
    return parser.parse_args(argv)


def composer_post(team: int, base_model: int, dataset: int, name: str, ruler: bool) -> dict[str, Any]:
    """What the composer page posts when nothing is changed but the name: the default suite and recipe, the
    four initial method rows (none, PI, dynamic NTK, YaRN) and a target of 4 × the demo's 256 tokens."""
    from gpu_workers.spec import EvalSpec  # the web process imports it for the composer anyway

    suite = ["perplexity", "longppl", "passkey", "needle", "needle_perplexity", "retention", "memory"]
    rows = ["none", "pi", "dynamic_ntk", "yarn"]
    data: dict[str, Any] = {
        "team": team, "name": name, "base_model": base_model, "dataset": dataset, "target_length": 1024,
        "eval_lengths": "", "eval_documents": 8,
        "methods-TOTAL_FORMS": len(rows), "methods-INITIAL_FORMS": 0, "methods-MIN_NUM_FORMS": 0,
        "methods-MAX_NUM_FORMS": 12,
        "eval-suite": suite + (["ruler"] if ruler else []), "eval-protocol": "truncate", "eval-stride": "",
        "eval-passkey_samples": 20, "eval-passkey_depth": "", "eval-needle_depths": "0, 0.25, 0.5, 0.75, 1",
        "eval-needle_samples": 2, "eval-needle_format": "passkey", "eval-needle_variant": "single",
        "eval-needle_count": 4, "eval-ruler_samples": EvalSpec.ruler_samples, "eval-ruler_threshold": 0.85,
        "eval-ruler_max_new_tokens": 0, "eval-longppl_short_window": 0, "eval-longppl_gain": 2.0,
        "eval-longppl_bound": 2.0,
        "train-preset": "none", "train-mode": "none", "train-steps": 100, "train-learning_rate": 3e-4,
        "train-warmup_steps": 10, "train-batch_size": 1, "train-grad_accum": 1, "train-lora_rank": 8,
        "train-lora_alpha": 16, "train-train_embeddings_and_norms": "on", "train-s2_group_fraction": 0.25,
        "train-short_fraction": 0.5, "train-data_strategy": "per_source", "train-keep_short_p": 0.15,
        "train-upsample_multiplier": 2.0, "train-passkey_fraction": 0.0, "train-checkpoint_every": 50,
        "train-seed": 0,
    }
    for i, family in enumerate(rows):
        data[f"methods-{i}-family"] = family
    return data


def child(args: argparse.Namespace) -> int:
    """One fresh web process: start, first submit, second submit; one JSON line on stdout."""
    started = time.perf_counter()
    parts = urlsplit(args.admin_url)
    setup_django(urlunsplit((parts.scheme, parts.netloc, f"/{args.db}", "", "")))
    import webapp.urls  # noqa: F401 - what a web worker imports before its first request

    out: dict[str, Any] = {"start_ms": (time.perf_counter() - started) * 1000,
                           "heavy_after_start": [m for m in HEAVY if m in sys.modules]}
    from django.contrib.auth import get_user_model
    from django.test import Client
    from django.urls import reverse

    from experiments.models import BaseModel, Dataset, Experiment

    user = get_user_model().objects.get(username=USERNAME)
    team = user.memberships.get().team_id
    model = BaseModel.objects.get(team__isnull=True, name=MODEL_NAME)
    dataset = Dataset.objects.get(team__isnull=True, name=DATASET_NAME)
    client = Client()
    client.force_login(user)
    url = reverse("experiment_new")
    for label in ("first", "second"):
        name = f"bench {label} {os.getpid()}"
        data = composer_post(team, model.pk, dataset.pk, name, args.ruler)
        began = time.perf_counter()
        response = client.post(url, data)
        out[f"{label}_ms"] = (time.perf_counter() - began) * 1000
        out[f"{label}_status"] = response.status_code
        out[f"{label}_saved"] = Experiment.objects.filter(name=name).exists()
        if response.status_code != 302:
            context = response.context or {}
            composer = context.get("composer")
            out[f"{label}_errors"] = composer.errors() if composer is not None else response.content[:2000].decode()
    out["heavy_after_submits"] = [m for m in HEAVY if m in sys.modules]
    out["rss_mb"] = rss_kb() / 1024
    print(json.dumps(out, default=str))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    data_dir = tempfile.mkdtemp(prefix="bench-submit-")
    os.environ["CONTEXTLAB_DATA_DIR"] = data_dir  # the filesystem broker's folders live here
    os.environ["CELERY_BROKER_URL"] = "filesystem://"
    if args.child:
        return child(args)
    print("$ .venv/bin/python -m benches.first_submit " + " ".join(shlex.quote(a) for a in sys.argv[1:]))
    print(f"machine: {machine()}")
    url, pg_version = recreate_database(args.admin_url, args.db)
    setup_django(url)
    import django
    from django.core.management import call_command

    print(f"database: PostgreSQL {pg_version} ({args.db}, recreated); Django {django.get_version()}")
    call_command("migrate", verbosity=0)
    began = time.perf_counter()
    call_command("seed_demo", verbosity=0, stdout=open(os.devnull, "w"))  # noqa: SIM115
    print(f"seed_demo (in this process, as an operator runs it): {time.perf_counter() - began:.1f} s")
    from experiments.models import Dataset

    if "length_stats" in {f.name for f in Dataset._meta.get_fields()}:
        stored = Dataset.objects.get(name=DATASET_NAME).length_stats.filter(status="succeeded").count()
        print(f"stored length statistics of the demo corpus: {stored}")
    else:
        print("stored length statistics of the demo corpus: none (this checkout has no such table)")

    rows = []
    command = [sys.executable, "-m", "benches.first_submit", "--child", "--db", args.db,
               "--admin-url", args.admin_url] + (["--ruler"] if args.ruler else [])
    for _ in range(args.processes):
        done = subprocess.run(command, capture_output=True, text=True, check=False,
                              env={**os.environ, "DATABASE_URL": url})
        if done.returncode != 0:
            print(done.stdout, done.stderr, file=sys.stderr)
            return 1
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    suite = "default suite + RULER" if args.ruler else "default suite (everything but RULER)"
    print(f"\n{args.processes} fresh processes, {suite}; times in ms:")
    print("| process | start (setup + import webapp.urls) | first submit | second submit | status | "
          "torch / transformers imported | RSS after |")
    print("|---|---:|---:|---:|---|---|---:|")
    for i, row in enumerate(rows, 1):
        heavy = ", ".join(row["heavy_after_submits"]) or "neither"
        print(f"| #{i} | {row['start_ms']:.0f} | {row['first_ms']:.0f} | {row['second_ms']:.0f} | "
              f"{row['first_status']} / {row['second_status']} | {heavy} "
              f"(after start: {', '.join(row['heavy_after_start']) or 'neither'}) | {row['rss_mb']:.0f} MB |")
        for key in ("first_errors", "second_errors"):
            if key in row:
                print(f"    {key}: {row[key]}")
    for key in ("start_ms", "first_ms", "second_ms"):
        print(f"median {key.removesuffix('_ms')}: {statistics.median(r[key] for r in rows):.0f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

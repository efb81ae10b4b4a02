#!/usr/bin/env bash
# `make run`: set up, migrate, register the demo model/corpus/methods, then start a real Celery
# worker (with the sweeper's beat) and the web server. Embedded defaults: SQLite + the kombu
# filesystem broker under var/. Set DATABASE_URL / CELERY_BROKER_URL for PostgreSQL / Redis.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_venv requirements.txt
mkdir -p var
"$PY" manage.py migrate --noinput
"$PY" manage.py seed_demo
PORT="${PORT:-8000}"
"$VENV/bin/celery" -A webapp worker -B -Q gpu,control --concurrency 1 --prefetch-multiplier 1 \
  --loglevel INFO --schedule var/celerybeat-schedule -n "worker@%h" > var/worker.log 2>&1 &
WORKER=$!
trap 'kill $WORKER 2>/dev/null; wait $WORKER 2>/dev/null' EXIT INT TERM
echo
echo "  Context Lab is up:  http://127.0.0.1:$PORT/   (log in as demo / demo)"
echo "  Celery worker pid $WORKER, log in var/worker.log.  Ctrl-C stops both."
echo
"$PY" manage.py runserver "0.0.0.0:$PORT"

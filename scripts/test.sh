#!/usr/bin/env bash
# `make test`: everything CI checks, from a fresh machine. Starts PostgreSQL and Redis when they
# are down, installs Debian's Chromium for the browser tests, then lint + Django checks + pytest.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"

start_services() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
    echo "==> starting PostgreSQL"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql)" main start
  fi
  if ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
    echo "==> starting Redis"
    redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/ci.log
  fi
  for _ in $(seq 1 30); do
    if pg_isready -q -h 127.0.0.1 -p 5432 && redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
      # The app database itself (pytest creates its own test_ copy; the Django checks read this one).
      psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='contextlab'" | grep -q 1 \
        || createdb -h 127.0.0.1 -U postgres contextlab
      return 0
    fi
    sleep 1
  done
  echo "PostgreSQL or Redis did not come up" >&2
  return 1
}

ensure_chromium() {
  if [ ! -x /usr/bin/chromium ]; then
    echo "==> installing Debian's chromium for the browser tests"
    apt-get update -q >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null
  fi
}

ensure_venv requirements-dev.txt
ensure_chromium
start_services

export DATABASE_URL="${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/contextlab}"
export CELERY_BROKER_URL="${TEST_CELERY_BROKER_URL:-redis://127.0.0.1:6379/15}"

echo "==> ruff"
"$VENV/bin/ruff" check .
echo "==> mypy"
"$VENV/bin/mypy"  # gpu_workers and experiments, as [tool.mypy] in pyproject.toml says
echo "==> django checks"
"$PY" manage.py makemigrations --check --dry-run
DJANGO_DEBUG=0 DJANGO_SECRET_KEY="ci-only-$(printf 'x%.0s' $(seq 1 60))" DJANGO_ALLOWED_HOSTS=contextlab.example \
  "$PY" manage.py check --deploy --fail-level WARNING
if command -v docker-compose >/dev/null 2>&1; then
  echo "==> docker-compose config"
  DJANGO_SECRET_KEY=config-check docker-compose -f docker-compose.yml config -q
elif docker compose version >/dev/null 2>&1; then
  echo "==> docker compose config"
  DJANGO_SECRET_KEY=config-check docker compose -f docker-compose.yml config -q
fi
echo "==> pytest"
"$VENV/bin/pytest" "$@"

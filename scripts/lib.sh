# Shared by scripts/run.sh and scripts/test.sh: set up the virtualenv once per requirements change.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

ensure_venv() {
  local reqs="$1"
  local nodeps=""
  if [ "$reqs" = "requirements-dev.txt" ]; then nodeps="$ROOT/requirements-nodeps.txt"; fi
  local stamp="$VENV/.installed-$reqs-$(cat "$ROOT/requirements.txt" "$ROOT/$reqs" $nodeps | sha1sum | cut -c1-12)"
  if [ ! -x "$PY" ]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ]; then
    echo "==> installing $reqs (torch comes from the pinned 2.13.0 wheel)"
    "$PY" -m pip install -q --disable-pip-version-check --upgrade pip
    "$PY" -m pip install -q --disable-pip-version-check -r "$ROOT/$reqs"
    if [ -n "$nodeps" ]; then
      "$PY" -m pip install -q --disable-pip-version-check --no-deps -r "$nodeps"
    fi
    rm -f "$VENV/.installed-$reqs-"*
    touch "$stamp"
  fi
}

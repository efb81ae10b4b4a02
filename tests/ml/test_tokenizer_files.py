"""The web side's tokenizer without transformers, tokenizer identity from files, and stored length statistics.

The web process reads ``tokenizer.json`` with the ``tokenizers`` library (``gpu_workers.tokenizer_files``) for
RULER's prompt checks and the mixture preview; these tests pin that it cuts and joins text as transformers'
``AutoTokenizer`` does, so the composer and a run agree. Length statistics are measured with the run's
tokenizer and answered by bisection (``gpu_workers.data.length_stats``).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from gpu_workers.data import ruler
from gpu_workers.data.documents import DatasetError, builtin_corpus_dir, load_documents, long_documents
from gpu_workers.data.length_stats import LengthStats, measure
from gpu_workers.data.ruler import HaystackText, RulerCache
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.spec import DatasetSpec
from gpu_workers.tokenizer_files import JsonTokenizer, load_json_tokenizer, tokenizer_key

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_texts() -> list[str]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
        docs = load_documents(DatasetSpec())
    return [d["text"][:3000] for d in docs[:: max(1, len(docs) // 40)]] + [
        "<|endoftext|> a special token, digits 0123456789, 'quotes' , spaces  and\ttabs.\n\nNew paragraph."]


@pytest.fixture(scope="module")
def pair() -> tuple[JsonTokenizer, object]:
    return load_json_tokenizer(str(DEMO_MODEL_DIR)), AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR))


def test_json_tokenizer_encodes_and_decodes_as_transformers(pair, demo_texts: list[str]) -> None:
    light, full = pair
    assert light(demo_texts, add_special_tokens=False)["input_ids"] == full(
        demo_texts, add_special_tokens=False)["input_ids"]
    assert light(demo_texts[0], add_special_tokens=False)["input_ids"] == full(
        demo_texts[0], add_special_tokens=False)["input_ids"]
    ids = full(demo_texts[-1], add_special_tokens=False)["input_ids"]
    assert light.decode(ids) == full.decode(ids)
    singles = [[i] for i in ids] + [[0, i] for i in ids]
    assert light.batch_decode(singles) == full.batch_decode(singles)
    assert light.get_vocab() == full.get_vocab() and len(light) == len(full)
    assert ruler.tokenizer_hash(light) == ruler.tokenizer_hash(full), "the RULER cache key is the same"


def test_ruler_builds_the_same_prompts_with_either_tokenizer(pair, demo_texts: list[str]) -> None:
    light, full = pair
    haystack = HaystackText(tuple(demo_texts))
    for task in ("niah_single_2", "niah_multikey_2", "vt", "cwe", "fwe"):
        made = [ruler.generate(task, tok, haystack, 512, 0, 3, cache=RulerCache()) for tok in (light, full)]
        assert [s.to_json() for s in made[0]] == [s.to_json() for s in made[1]], task


def test_tokenizer_key_follows_the_files_not_the_folder(tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(DEMO_MODEL_DIR / name, copy / name)
    assert tokenizer_key(str(copy)) == tokenizer_key(str(DEMO_MODEL_DIR))
    config = json.loads((copy / "tokenizer_config.json").read_text())
    (copy / "tokenizer_config.json").write_text(json.dumps({**config, "model_max_length": 7}))
    assert tokenizer_key(str(copy)) != tokenizer_key(str(DEMO_MODEL_DIR)), "a changed file is a new key"
    with pytest.raises(FileNotFoundError, match="No tokenizer"):
        tokenizer_key(str(tmp_path))
    with pytest.raises(FileNotFoundError, match="No model directory"):
        tokenizer_key(str(tmp_path / "missing"))


def test_length_stats_answer_what_long_documents_finds(tiny_model_dir: Path, tiny_corpus: Path) -> None:
    spec = DatasetSpec(kind="local", path=str(tiny_corpus))
    tok = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    seen: list[float] = []
    stats = measure(spec, tok, seen.append, batch=2)
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) == 4
    assert stats.documents == 7 and set(stats.lengths_by_source) == {"greek", "letters"}
    assert all(list(v) == sorted(v) for v in stats.lengths_by_source.values())
    for min_tokens in (1, 100, 256, 600, 10_000):
        found = stats.documents_at_least(min_tokens)
        if found:
            assert len(long_documents(spec, tok, min_tokens, found)) == found
        with pytest.raises(DatasetError):
            long_documents(spec, tok, min_tokens, found + 1)
    assert stats.haystack_tokens("all") == stats.tokens == sum(stats.tokens_by_source.values())
    assert stats.haystack_tokens("greek") == sum(stats.lengths_by_source["greek"])
    with pytest.raises(DatasetError, match=r"no documents from source 'poems'.*its sources: greek, letters"):
        stats.haystack_tokens("poems")
    assert LengthStats.from_json(json.loads(json.dumps(stats.to_json()))) == stats


def test_the_web_side_gpu_workers_modules_import_without_torch() -> None:
    """The modules the web imports from this package stay torch-free (the web test checks the whole app)."""
    code = ("import sys; import gpu_workers.tokenizer_files, gpu_workers.data.length_stats, gpu_workers.data.ruler, "
            "gpu_workers.data.mixture_preview, gpu_workers.protocol, gpu_workers.spec, gpu_workers.methods; "
            "t = gpu_workers.tokenizer_files.load_json_tokenizer(sys.argv[1]); t('some text'); "
            "print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code, str(DEMO_MODEL_DIR)], cwd=ROOT, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr

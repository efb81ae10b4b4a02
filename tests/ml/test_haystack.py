"""Needle haystacks: natural prose by default, a seeded shuffled order, and needles that stay whole tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from gpu_workers.data import builtin_corpus
from gpu_workers.data.documents import (
    DatasetError,
    builtin_corpus_dir,
    haystack_documents,
    inspect_dataset,
    load_documents,
)
from gpu_workers.data.length_stats import count_tokens
from gpu_workers.data.needle import NeedleBuilder, haystack_order, haystack_stream
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.spec import DatasetSpec, EvalSpec, MethodSpec, RunSpec


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR))


@pytest.fixture(scope="module")
def demo_corpus():
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
        yield DatasetSpec()


def _contains(ids: list[int], part: list[int]) -> bool:
    return any(ids[i : i + len(part)] == part for i in range(len(ids) - len(part) + 1))


# --- which text -------------------------------------------------------------------------------------------


def test_the_demo_corpus_haystack_is_its_prose_with_no_code_file_in_it(tok, demo_corpus: DatasetSpec) -> None:
    assert demo_corpus.haystack == "prose"
    assert set(inspect_dataset(demo_corpus).docs_by_source) == set(builtin_corpus.SOURCES)
    assert {d["source"] for d in haystack_documents(demo_corpus)} == {"prose"}
    text = tok.decode(haystack_stream(demo_corpus, tok, 8192, seed=0))
    code = [d["text"] for d in load_documents(demo_corpus) if d["source"] == "code"]
    assert code, "the held-out split has code documents to keep out"
    # A distinctive line of every held-out code file: none of them is in the haystack.
    for source in code:
        line = max(source.splitlines()[:40], key=len)
        assert len(line) > 20 and line not in text
    assert "def " not in text and "import " not in text.replace("important", "")


def test_the_order_is_seeded_reproducible_and_differs_by_seed(tok, demo_corpus: DatasetSpec) -> None:
    assert haystack_order(50, 3) == haystack_order(50, 3) != haystack_order(50, 4)
    assert sorted(haystack_order(50, 3)) == list(range(50))
    first = haystack_stream(demo_corpus, tok, 2048, seed=0)
    assert haystack_stream(demo_corpus, tok, 2048, seed=0) == first
    other = haystack_stream(demo_corpus, tok, 2048, seed=1)
    assert other != first and len(other) == len(first) == 2048
    # Not the file order the held-out split lists them in.
    in_file_order = tok(haystack_documents(demo_corpus)[0]["text"], add_special_tokens=False)["input_ids"]
    assert first[:64] != in_file_order[:64] or other[:64] != in_file_order[:64]


def test_a_user_dataset_picks_any_of_its_sources_or_all(tmp_path: Path, tok) -> None:
    path = tmp_path / "docs.jsonl"
    rows = [{"text": f"Story {i}. The ship sailed on. " * 30, "source": "stories"} for i in range(3)]
    rows += [{"text": f"x{i} = compute({i})\n" * 60, "source": "code"} for i in range(3)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    local = DatasetSpec(kind="local", path=str(path))
    assert local.haystack == "all" and len(haystack_documents(local)) == 6
    stories = DatasetSpec(kind="local", path=str(path), haystack_source="stories")
    assert [d["source"] for d in haystack_documents(stories)] == ["stories"] * 3
    assert "compute" not in tok.decode(haystack_stream(stories, tok, 400, seed=2))
    with pytest.raises(DatasetError, match=r"no documents from source 'poems'.*code, stories"):
        haystack_documents(DatasetSpec(kind="local", path=str(path), haystack_source="poems"))
    with pytest.raises(DatasetError, match="'stories' documents hold only"):
        haystack_stream(stories, tok, 100_000)


def test_count_tokens_counts_only_the_haystack_source(tok, tmp_path: Path) -> None:
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"text": "one two three four. " * 10, "source": "a"}, {"text": "five six. " * 50, "source": "b"},
    ]) + "\n")
    everything = count_tokens(DatasetSpec(kind="local", path=str(path)), str(DEMO_MODEL_DIR))
    only_a = count_tokens(DatasetSpec(kind="local", path=str(path), haystack_source="a"), str(DEMO_MODEL_DIR))
    only_b = count_tokens(DatasetSpec(kind="local", path=str(path), haystack_source="b"), str(DEMO_MODEL_DIR))
    assert 0 < only_a < only_b and only_a + only_b == everything
    with pytest.raises(DatasetError, match="its sources: a, b"):
        count_tokens(DatasetSpec(kind="local", path=str(path), haystack_source="c"), str(DEMO_MODEL_DIR))


def test_the_haystack_source_travels_in_the_run_spec_and_old_specs_still_load() -> None:
    spec = RunSpec(run_id="r", model_source="m", dataset=DatasetSpec(kind="local", path="/d", haystack_source="news"),
                   method=MethodSpec("none"), target_length=512, eval=EvalSpec(lengths=(256,)))
    data = json.loads(json.dumps(spec.to_json()))
    assert data["dataset"]["haystack_source"] == "news"
    assert RunSpec.from_json(data) == spec
    del data["dataset"]["haystack_source"]  # a spec written before the field existed
    old = RunSpec.from_json(data)
    assert old.dataset.haystack_source == "" and old.dataset.haystack == "all"
    assert DatasetSpec().haystack == "prose" and DatasetSpec(haystack_source=" all ").haystack == "all"


# --- where the needle goes ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "variant"), [("passkey", "single"), ("magic_number", "single"),
                                              ("magic_number", "multikey"), ("magic_number", "multivalue")])
def test_every_needle_is_intact_when_the_prompt_is_decoded_and_tokenized_again(
    tok, demo_corpus: DatasetSpec, fmt: str, variant: str,
) -> None:
    """The model must read each needle as a tokenizer would cut it in real text: its tokens appear unchanged
    in the re-tokenized prompt, so no haystack word was split around it."""
    stream = haystack_stream(demo_corpus, tok, 1024, seed=5)
    builder = NeedleBuilder(tok, fmt=fmt, variant=variant, count=3)
    for depth in (0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0):
        for sample in range(2):
            task = builder.task(stream, 512, depth, sample)
            prompt = task.prompt(builder.prefix(stream))
            assert len(prompt) + len(task.answer_ids) == 512
            retokenized = tok(tok.decode(prompt), add_special_tokens=False)["input_ids"]
            for value in task.values:
                needle = next(n for n in _needles(builder, task, fmt, variant) if value in tok.decode(n))
                assert _contains(prompt, needle), (depth, sample)
                assert _contains(retokenized, needle), (depth, sample, tok.decode(prompt))


def _needles(builder: NeedleBuilder, task, fmt: str, variant: str) -> list[list[int]]:
    """The needle sentences of *task*, re-encoded the way the builder encodes them."""
    if fmt == "passkey":
        value = task.values[0]
        return [builder._enc(f" The pass key is {value}. Remember it. {value} is the pass key.")]
    text = builder.tokenizer.decode(task.rest)
    keys = [w for w in text.split() if w.rstrip(":").isalpha()]
    found = []
    for value in task.values:
        key = next(k for k in keys if f"for {k} is: {value}." in text)
        found.append(builder._enc(f" One of the special magic numbers for {key} is: {value}."))
    return found


def test_a_needle_aimed_into_a_word_moves_to_the_nearest_sentence_end(tok) -> None:
    text = "The harbour was quiet that morning. Fishermen mended their nets beside the boats. " * 6
    stream = tok(text, add_special_tokens=False)["input_ids"]
    builder = NeedleBuilder(tok, fmt="passkey")
    pieces = tok.batch_decode([[t] for t in stream])
    inside = next(i for i in range(40, len(stream)) if not pieces[i][:1].isspace() and pieces[i - 1][-1:].isalpha())
    needle = builder._enc(" The pass key is 12345. Remember it. 12345 is the pass key.")
    question = builder._enc(" What is the pass key?")
    at = builder._insertion_point(stream, inside, len(stream), needle, question)
    assert at != inside and abs(at - inside) <= 20
    assert tok.decode(stream[:at]).endswith(".")
    assert tok.decode(stream[at : at + 1]).startswith(" ")

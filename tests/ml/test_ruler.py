"""RULER tasks: prompts that fit their length exactly, answers that are where RULER says they are, determinism,
clear errors, string-match scoring, effective length, and an end-to-end pass on the demo model."""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from pathlib import Path

import pytest
import torch
from transformers import AutoTokenizer

from gpu_workers.data import ruler
from gpu_workers.data.documents import builtin_corpus_dir
from gpu_workers.data.ruler import TASK_NAMES, TASKS, HaystackText, RulerCache, RulerError, RulerSample
from gpu_workers.demo import DEMO_MODEL_DIR
from gpu_workers.device import place
from gpu_workers.evaluate import ruler as scoring
from gpu_workers.loading import load
from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.spec import DatasetSpec, MethodSpec, SpecError

LENGTHS = (256, 512, 1024)
SAMPLES = 4
NEEDLE = re.compile(r"One of the special magic (?:numbers|uuids|words) for ([\w-]+) is: ([\w-]+)\.")
VT_LINE = re.compile(r"VAR ([A-Z]+) = (?:VAR ([A-Z]+)|(\d+))\.")
ESSAY_TASKS = [n for n, t in TASKS.items() if dict(t.params).get("haystack") == "essay"]
LINE_TASKS = [n for n, t in TASKS.items() if dict(t.params).get("haystack") == "needles"]
NIAH_TASKS = [n for n, t in TASKS.items() if t.generator is TASKS["niah_single_1"].generator]


@pytest.fixture(scope="module")
def tok():
    return AutoTokenizer.from_pretrained(str(DEMO_MODEL_DIR))


@pytest.fixture(scope="module")
def haystack() -> HaystackText:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CONTEXTLAB_CORPUS_DIR", str(builtin_corpus_dir()))
        return HaystackText.from_dataset(DatasetSpec())


@pytest.fixture(scope="module")
def samples(tok, haystack) -> dict[tuple[str, int], list[RulerSample]]:
    return {(name, n): ruler.generate(name, tok, haystack, n, 0, SAMPLES) for name in TASK_NAMES for n in LENGTHS}


def _context(tok, sample: RulerSample) -> str:
    return tok.decode(sample.context_ids())


# --- the registry and the prompts' lengths ------------------------------------------------------------------


def test_the_registry_has_thirteen_tasks_in_rulers_groups() -> None:
    assert len(TASKS) == 13 and TASK_NAMES[:11] == (
        "niah_single_1", "niah_single_2", "niah_single_3", "niah_multikey_1", "niah_multikey_2", "niah_multikey_3",
        "niah_multivalue", "niah_multiquery", "vt", "cwe", "fwe")
    assert {t.group for t in TASKS.values()} == {"retrieval", "multi_hop", "aggregation"}
    assert [n for n, t in TASKS.items() if t.mirrors.startswith("replaces")] == ["niah_single_word",
                                                                                 "niah_multikey_word"]
    with pytest.raises(RulerError) as error:
        ruler.get_task("qa_1")
    assert error.value.field == "ruler_tasks"


@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_prompt_fits_its_length_and_fills_at_least_90_percent_of_it(samples, name: str) -> None:
    for n in LENGTHS:
        group = samples[(name, n)]
        assert len(group) == SAMPLES and [s.index for s in group] == list(range(SAMPLES))
        for s in group:
            assert 0.9 * n <= len(s.prompt_ids) <= n, (name, n, len(s.prompt_ids))
            assert s.task == name and s.length == n and s.answers and s.answer_tokens > 0
            start, end = s.context_span
            assert 0 < start < end < len(s.prompt_ids)
            assert all(0 <= d <= 1 for d in s.depths)
        # Every sample's shared prefix is the same tokens, so one prefilled cache serves them all.
        head = max(group, key=lambda s: s.prefix_len)
        for s in group:
            assert s.context_span[0] <= s.prefix_len <= s.context_span[1]
            assert s.prompt_ids[: s.prefix_len] == head.prompt_ids[: s.prefix_len]


def test_essay_and_line_haystacks_fill_the_length_exactly(samples) -> None:
    for name in ESSAY_TASKS + LINE_TASKS:
        assert {len(s.prompt_ids) for n in LENGTHS for s in samples[(name, n)]} == set(LENGTHS), name


def test_noise_haystack_samples_share_their_prefix_up_to_the_first_needle(tok, samples) -> None:
    for name, needle in (("niah_single_1", " One of the special magic"), ("vt", " VAR ")):
        for s in samples[(name, 1024)]:
            assert s.prefix_len > s.context_span[0]  # the instructions and the filler before the first needle
            assert needle.strip() not in tok.decode(s.prompt_ids[s.context_span[0] : s.prefix_len])
            assert tok.decode(s.prompt_ids[s.prefix_len :]).startswith(needle)


def test_a_reserve_keeps_room_for_the_answer(tok, haystack) -> None:
    for name in ("niah_single_2", "cwe", "vt"):
        for s in ruler.generate(name, tok, haystack, 512, 0, 2, reserve=40):
            assert 0.9 * 472 <= len(s.prompt_ids) <= 472 and s.length == 512


# --- where the answers are ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NIAH_TASKS)
def test_needle_answers_occur_exactly_once_with_distractors_where_rulers_task_has_them(tok, samples, name: str
                                                                                     ) -> None:
    params = dict(TASKS[name].params)
    keys, values, queries = params.get("keys", 1), params.get("values", 1), params.get("queries", 1)
    for n in LENGTHS:
        for s in samples[(name, n)]:
            text = _context(tok, s)
            for value in s.answers:
                assert text.count(value) == 1, (name, n, value)
            found: dict[str, list[str]] = {}
            for key, value in NEEDLE.findall(text):
                found.setdefault(key, []).append(value)
            asked = [k for k, vs in found.items() if set(vs) & set(s.answers)]
            assert len(asked) == queries and sorted(v for k in asked for v in found[k]) == sorted(s.answers)
            assert all(len(found[k]) == values for k in asked)
            distractors = {k: vs for k, vs in found.items() if k not in asked}
            assert not any(set(vs) & set(s.answers) for vs in distractors.values())
            if params["haystack"] == "needles":
                # A haystack of needles: every line but the cut first one is a distractor with its own key.
                # At 256 tokens a UUID task has room for the asked line and the fragment of one other only.
                assert len(distractors) >= (0 if n == 256 and name == "niah_multikey_3" else 2)
                assert all(len(vs) == 1 for vs in distractors.values())
            else:
                assert len(distractors) == keys - queries
            assert len(s.depths) == len(s.answers)


@pytest.mark.parametrize("name", ESSAY_TASKS)
def test_essay_needles_sit_between_sentences_of_the_dataset_text(tok, samples, name: str) -> None:
    for s in samples[(name, 1024)]:
        text = _context(tok, s)
        for match in NEEDLE.finditer(text):
            before, after = text[: match.start()], text[match.end() :]
            assert before == " " or before.endswith(("\n ", ". ", "! ", "? ")), repr(before[-20:])
            assert after == "" or after[:1].isspace(), repr(after[:20])
        assert len(NEEDLE.sub("", text)) > 0.5 * len(text)  # mostly dataset text, not needles


def test_essay_samples_read_different_stretches_of_the_text(tok, samples) -> None:
    contexts = [set(NEEDLE.sub("", _context(tok, s)).split("\n")) for s in samples[("niah_single_2", 1024)]]
    for a in range(len(contexts)):
        for b in range(a + 1, len(contexts)):
            overlap = {line for line in contexts[a] & contexts[b] if len(line) > 40}
            assert len(overlap) <= 2, overlap  # boilerplate lines may recur across documents, stretches do not


def test_variable_tracking_chain_is_complete_and_distractor_chains_never_hold_the_value(tok, haystack) -> None:
    task = ruler.RulerTask("vt_3x4", "multi_hop", TASKS["vt"].generator, (("chains", 3), ("hops", 4)))
    for n in LENGTHS:
        three = task.generate(tok, haystack, n, 1, SAMPLES) if n >= 512 else []  # 15 assignments need > 256
        for s in three + ruler.generate("vt", tok, haystack, n, 1, SAMPLES):
            text = _context(tok, s)
            assignments = VT_LINE.findall(text)
            question = tok.decode(s.prompt_ids[s.context_span[1] :])
            value = re.search(r"assigned the value (\d+)", question).group(1)
            assert text.count(value) == 1
            holding = set()
            for target, source, number in assignments:  # in text order: a chain is assigned before it is used
                if number == value or source in holding:
                    holding.add(target)
            assert sorted(holding) == sorted(s.answers) and len(s.answers) == 5
            starts = [t for t, _, number in assignments if number]
            assert len(starts) == (3 if s.task == "vt_3x4" else 1)
            others = {t for t, _, _ in assignments} - holding
            assert len(others) == len(assignments) - 5


def test_common_words_are_strictly_more_frequent_than_every_distractor(tok, samples) -> None:
    for n in LENGTHS:
        for s in samples[("cwe", n)]:
            entries = re.findall(r"(\d+)\. (\S+)", _context(tok, s))
            assert [int(i) for i, _ in entries] == list(range(1, len(entries) + 1))
            counts = Counter(w for _, w in entries)
            asked = re.search(r"the (\d+) most common words", tok.decode(s.prompt_ids[s.context_span[1] :]))
            assert asked and int(asked.group(1)) == len(s.answers)
            distractors = [c for w, c in counts.items() if w not in s.answers]
            assert distractors and min(counts[w] for w in s.answers) > max(distractors)
            assert not any(a in w for a in s.answers for w in counts if w != a)


def test_the_three_frequent_words_are_the_three_most_frequent(tok, samples) -> None:
    for n in LENGTHS:
        for s in samples[("fwe", n)]:
            ranked = Counter(_context(tok, s).split()).most_common()
            assert [w for w, _ in ranked[:3]] == s.answers and ranked[2][1] > ranked[3][1]


# --- determinism, the cache, errors ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", TASK_NAMES)
def test_same_seed_same_samples_other_seed_other_samples(tok, haystack, name: str) -> None:
    first = ruler.generate(name, tok, haystack, 256, 7, 2, cache=None)
    again = ruler.generate(name, tok, haystack, 256, 7, 2, cache=None)
    other = ruler.generate(name, tok, haystack, 256, 8, 2, cache=None)
    assert first == again
    assert [s.prompt_ids for s in first] != [s.prompt_ids for s in other]
    assert [s.answers for s in first] != [s.answers for s in other]


def test_the_cache_is_keyed_by_tokenizer_and_survives_on_disk(tok, haystack, tmp_path: Path) -> None:
    digest = ruler.tokenizer_hash(tok)
    assert digest == hashlib.sha256(tok.backend_tokenizer.to_str().encode()).hexdigest()
    cache = RulerCache(tmp_path)
    built = ruler.generate("niah_multikey_2", tok, haystack, 256, 3, 2, cache=cache)
    assert ruler.generate("niah_multikey_2", tok, haystack, 256, 3, 2, cache=cache) is built and cache.hits == 1
    assert len(list(tmp_path.glob("ruler-*.json"))) == 1
    fresh = RulerCache(tmp_path)
    assert ruler.generate("niah_multikey_2", tok, haystack, 256, 3, 2, cache=fresh) == built and fresh.hits == 1
    assert ruler.generate("niah_multikey_2", tok, haystack, 256, 4, 2, cache=fresh) != built
    key = TASKS["niah_multikey_2"].cache_key(digest, haystack.digest, 256, 3, 2, 0)
    assert key != TASKS["niah_multikey_2"].cache_key("another tokenizer", haystack.digest, 256, 3, 2, 0)


def test_pieces_are_the_ids_the_tokenizer_gives(tok) -> None:
    kit, _ = ruler._kit(tok)
    texts = [" One of the special magic numbers for a-b is: 1234567.", "\nWhat is it?", " 12.", " VAR ABCDE = 1."]
    assert kit.encode_many(texts) == tok(texts, add_special_tokens=False)["input_ids"]


@pytest.mark.parametrize("name", TASK_NAMES)
def test_a_length_too_short_for_the_instructions_names_lengths(tok, haystack, name: str) -> None:
    with pytest.raises(RulerError, match="too short") as error:
        ruler.generate(name, tok, haystack, 96, 0, 1, cache=None)
    assert error.value.field == "lengths" and isinstance(error.value, SpecError)
    shortest = ruler.minimum_length(name, tok, haystack)
    assert shortest <= 256
    ruler.generate(name, tok, haystack, shortest, 5, 3, cache=None)


def test_more_samples_than_the_text_can_fill_without_reuse_names_ruler_samples(tok) -> None:
    small = HaystackText(tuple(f"Document {i}. The river ran past the old mill every spring. " * 12 for i in range(4)))
    assert len(ruler.generate("niah_single_2", tok, small, 256, 0, 2, cache=None)) == 2
    with pytest.raises(RulerError, match=r"only \d+ samples of 256 tokens fit") as error:
        ruler.generate("niah_single_2", tok, small, 256, 0, 40, cache=None)
    assert error.value.field == "ruler_samples"
    with pytest.raises(RulerError) as error:
        ruler.generate("cwe", tok, small, 256, 0, 0)
    assert error.value.field == "ruler_samples"


# --- scoring and effective length -----------------------------------------------------------------------------


def test_string_match_all_is_the_share_of_references_found_ignoring_case() -> None:
    assert scoring.string_match_all("The magic number is 1234567.", ["1234567"]) == 1.0
    assert scoring.string_match_all("nothing here", ["1234567"]) == 0.0
    assert scoring.string_match_all(" QJRZV, nsrny and VMSBB", ["QJRZV", "NSRNY", "VMSBB", "MKQYW"]) == 0.75
    assert scoring.string_match_all("123456", ["1234567"]) == 0.0  # a near miss is a miss
    with pytest.raises(ValueError):
        scoring.string_match_all("x", [])


def _answer(task: str, length: int, score: float) -> scoring.RulerAnswer:
    sample = RulerSample(task, length, 0, [1, 2, 3], ["x"], [], 0, (1, 2), 1)
    return scoring.RulerAnswer(sample, [], "", score)


def test_scores_by_task_and_length_and_the_average() -> None:
    answers = [_answer("vt", 256, 1.0), _answer("vt", 256, 0.5), _answer("cwe", 256, 0.0), _answer("vt", 512, 0.2)]
    out = scoring.score_by_task_and_length(answers)
    got = {(m.metric, m.context_length): m for m in out}
    assert set(got) == {("ruler_vt", 256), ("ruler_cwe", 256), ("ruler_vt", 512), ("ruler_average", 256),
                        ("ruler_average", 512)}
    assert got[("ruler_vt", 256)].value == 0.75 and got[("ruler_vt", 256)].samples == 2
    assert got[("ruler_average", 256)].value == pytest.approx(0.375) and got[("ruler_average", 256)].samples == 3
    assert 0 <= got[("ruler_vt", 256)].ci_low <= 0.75 <= got[("ruler_vt", 256)].ci_high <= 1
    assert scoring.scores_by_length(out) == {256: pytest.approx(0.375), 512: pytest.approx(0.2)}


def test_effective_length_monotone_dip_then_recovery_and_none_passing() -> None:
    monotone = {256: 0.95, 512: 0.9, 1024: 0.8, 2048: 0.3}
    assert scoring.effective_length(monotone, reference=1.0) == 512
    assert scoring.effective_length(monotone, reference=1.0, threshold=0.8) == 1024
    assert scoring.effective_length(monotone, reference=0.95, threshold=1.0) == 256
    dip = {256: 0.9, 512: 0.4, 1024: 0.9, 2048: 0.9}
    assert scoring.effective_length(dip, reference=0.9) == 256  # a failing length ends the usable context
    assert scoring.effective_length({256: 0.1, 512: 0.9}, reference=0.9) is None
    assert scoring.effective_length({}, reference=0.9) is None
    assert scoring.effective_length({256: 0.0, 512: 0.0}, reference=0.0) is None
    assert scoring.effective_length({4096: 1.0, 256: 1.0}, reference=1.0) == 4096


@pytest.mark.parametrize("threshold", [0.0, -0.5, 1.01, math.nan])
def test_a_threshold_outside_zero_one_names_ruler_threshold(threshold: float) -> None:
    with pytest.raises(RulerError, match="threshold") as error:
        scoring.effective_length({256: 1.0}, 1.0, threshold)
    assert error.value.field == "ruler_threshold"


def test_effective_length_measurements_take_the_reference_at_the_original_context() -> None:
    ms = [Measurement("ruler_average", v, context_length=n) for n, v in ((128, 0.5), (256, 1.0), (512, 0.9),
                                                                           (1024, 0.5))]
    out = scoring.effective_length_measurements(ms, original_length=256)
    assert [(m.metric, m.value, m.context_length) for m in out] == [("ruler_reference", 1.0, 256)]  # 128 fails
    out = scoring.effective_length_measurements(ms[1:], original_length=300)
    assert out[-1].metric == "ruler_effective_length" and out[-1].value == 512
    assert scoring.effective_length_measurements(ms[2:], original_length=256) == []


# --- on the demo model -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def demo():
    return load(str(DEMO_MODEL_DIR), MethodSpec("none"), 1024, place("cpu"))


def test_end_to_end_on_the_demo_model_gives_named_measurements_in_zero_one(demo, haystack) -> None:
    tasks = ("niah_single_1", "vt", "niah_multikey_2")
    samples = ruler.generate_suite(demo.tokenizer, haystack, [256], 0, 2, tasks=tasks)
    ticks = []
    answers = scoring.answer_samples(demo.model, demo.tokenizer, samples, device=torch.device("cpu"),
                                     on_sample=lambda: ticks.append(1))
    assert len(answers) == len(ticks) == 6 and [a.sample for a in answers] == samples
    out = scoring.score_by_task_and_length(answers)
    assert {m.metric for m in out} == {"ruler_niah_single_1", "ruler_vt", "ruler_niah_multikey_2", "ruler_average"}
    assert all(0 <= m.value <= 1 and m.context_length == 256 for m in out)
    assert all(m.samples == 2 for m in out if m.metric != "ruler_average")
    for a in answers:
        assert len(a.tokens) == a.sample.answer_tokens + scoring.ANSWER_SLACK_TOKENS
    with pytest.raises(Cancelled):
        scoring.answer_samples(demo.model, demo.tokenizer, samples, device=torch.device("cpu"),
                               should_stop=lambda: True)


def test_the_shared_prefix_cache_gives_the_same_answers_as_from_scratch(demo, haystack) -> None:
    samples = ruler.generate("niah_single_1", demo.tokenizer, haystack, 512, 2, 6)
    assert any(scoring._reusable(s) for s in samples) and not all(scoring._reusable(s) for s in samples)
    kwargs = dict(device=torch.device("cpu"), max_new_tokens={"niah_single_1": 6})
    shared = scoring.answer_samples(demo.model, demo.tokenizer, samples, **kwargs)
    scratch = scoring.answer_samples(demo.model, demo.tokenizer, samples, reuse_prefix=False, **kwargs)
    assert [a.tokens for a in shared] == [a.tokens for a in scratch]
    assert all(len(a.tokens) == 6 for a in shared)

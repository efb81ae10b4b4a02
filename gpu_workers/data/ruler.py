"""RULER's synthetic long-context tasks, generated offline from the dataset's text with the model's tokenizer.

Why: a needle grid asks one kind of question, and single-needle retrieval saturates long before a model
really uses its context. RULER (Hsieh et al., 2024, "What's the real context size of your long-context
language models?") adds needles of other shapes (distractor keys, several values, several queries, a
haystack made of needles), multi-hop tracing (variable tracking) and aggregation (common and frequent
words), all scored by string matching. The tasks are rebuilt here from RULER's task *definitions*:

* every prompt is assembled from token pieces measured with the model's own tokenizer (as the passkey and
  needle prompts are), so its length is exact: at most ``length`` tokens, the answer prefix included, and
  filled to within one haystack unit (a filler sentence, a list entry, a word) of it, or exactly;
* essay haystacks are the dataset's own text (its haystack source, laid out in the seeded document order
  of :func:`gpu_workers.data.needle.haystack_order`), each sample reading its *own* stretch of it, so the
  samples of one cell are independent looks at the text and not one essay with the needle moved;
* noise haystacks (repeated filler sentences) are the same for every sample of a length, so those samples
  share a token prefix up to their first needle and an evaluation can prefill it once (``prefix_len``);
* everything is seeded per (task, seed, length, sample) and cached by (task, tokenizer hash, haystack
  digest, length, seed, samples): the same inputs give the same token lists in any process.

The 13 tasks (``TASKS``), with the RULER task each one mirrors:

=====================  ===========  =====================================================================
name                   group        what it is
=====================  ===========  =====================================================================
niah_single_1          retrieval    noise haystack, word key, 7-digit number value (~ passkey retrieval)
niah_single_2          retrieval    essay haystack, word key, number value (~ vanilla needle in a haystack)
niah_single_3          retrieval    essay haystack, word key, UUID value
niah_multikey_1        retrieval    essay haystack, 4 number needles with distinct keys, one asked
niah_multikey_2        retrieval    haystack made only of key-value needle lines (word keys, numbers)
niah_multikey_3        retrieval    haystack of needle lines with UUID keys and UUID values
niah_multivalue        retrieval    essay haystack, one key holding 4 values, all asked
niah_multiquery        retrieval    essay haystack, 4 keys, all 4 asked at once
vt                     multi_hop    variable tracking: ``VAR X = VAR Y`` chains from a number
cwe                    aggregation  common words extraction from a numbered word list
fwe                    aggregation  frequent words extraction from Zipf-distributed "coded text"
niah_single_word       retrieval    essay haystack, word key, *word* value (replaces RULER's qa_1)
niah_multikey_word     retrieval    essay haystack, 4 word-valued needles, one asked (replaces qa_2)
=====================  ===========  =====================================================================

RULER's two QA tasks (qa_1 on SQuAD, qa_2 on HotpotQA) need question-answering datasets a run does not
have; the two word-valued needle tasks take their places so the set keeps 13 tasks, as RULER's average
does. They use RULER's third value type (words) on the dataset's text, so they are not QA: an average over
these 13 is *not* comparable with RULER's published averages, only between runs of this app.

Word keys and values are two different words of the haystack text joined by a hyphen (RULER draws
adjective-noun pairs from a word list; the dataset's own vocabulary keeps this offline). Prompts are token
lists, not text: decoding one and tokenizing it again may merge pieces differently, which is why lengths
are never measured on text.
"""

from __future__ import annotations

import bisect
import contextlib
import hashlib
import json
import os
import random
import re
import uuid
import weakref
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from functools import cached_property, lru_cache
from itertools import accumulate
from pathlib import Path
from typing import Any

from gpu_workers.catalog import RULER_GROUPS, RULER_TASKS
from gpu_workers.data import passkey as passkey_format
from gpu_workers.data.documents import DatasetError, haystack_documents
from gpu_workers.data.needle import DOCUMENT_SEPARATOR, haystack_order
from gpu_workers.spec import DatasetSpec, SpecError

GENERATOR_VERSION = 1
"""Part of every cache key: bump it whenever a generator's output changes, so stale caches are not read."""
DEPTH_CHOICES = tuple(i / 39 for i in range(40))
"""Needle depths are drawn (without replacement) from 40 evenly spaced fractions of the context, as RULER."""
MIN_HAYSTACK_TOKENS = 16
"""A prompt must keep at least this many haystack tokens besides instructions, needles and question."""
NUMBER_DIGITS = 7
VT_VALUE_DIGITS = 5
VAR_NAME_LETTERS = 5
CODED_WORD_POOL = 4096
"""Made-up words the frequent-words task draws its vocabulary from (per sample)."""
MAX_VOCABULARY = 20_000
MIN_VOCABULARY = 200
"""Below this many distinct words in the haystack text, made-up words complete the key/word vocabulary."""
NOISE_SENTENCES = passkey_format.FILLER
"""RULER's noise haystack is these five repeated sentences; the demo model was taught them for passkeys."""


class RulerError(SpecError):
    """A RULER setting that cannot be honoured; ``field`` names the setting (``lengths``, ``ruler_samples``,
    ``ruler_threshold``, ``ruler_tasks``) so a form or a failed run can put the message beside it."""


# --- the haystack text and the tokenizer ------------------------------------------------------------------


@dataclass(frozen=True)
class HaystackText:
    """The documents haystacks and word vocabularies are cut from, with a digest for cache keys.

    Build it once per run (:meth:`from_dataset`) and pass it to every generator: a :class:`DatasetSpec`
    given directly is read again on every call.
    """

    documents: tuple[str, ...]
    name: str = "text"

    def __post_init__(self) -> None:
        docs = tuple(str(d) for d in self.documents if str(d).strip())
        if not docs:
            raise DatasetError(f"The {self.name!r} haystack text is empty.")
        object.__setattr__(self, "documents", docs)

    @classmethod
    def from_dataset(cls, spec: DatasetSpec) -> HaystackText:
        """The dataset's haystack-source documents (the same ones the needle grid reads)."""
        return cls(tuple(d["text"] for d in haystack_documents(spec)), spec.haystack)

    @cached_property
    def digest(self) -> str:
        h = hashlib.sha256()
        for doc in self.documents:
            h.update(doc.encode("utf-8", "surrogatepass"))
            h.update(b"\x00")
        return h.hexdigest()


HaystackLike = HaystackText | DatasetSpec | str | Sequence[str]


def as_haystack(source: HaystackLike) -> HaystackText:
    if isinstance(source, HaystackText):
        return source
    if isinstance(source, DatasetSpec):
        return HaystackText.from_dataset(source)
    if isinstance(source, str):
        return HaystackText((source,))
    return HaystackText(tuple(source))


_TOKENIZER_HASHES: dict[int, tuple[Any, str]] = {}


def tokenizer_hash(tokenizer: Any) -> str:
    """sha256 of the tokenizer's full definition (``backend_tokenizer.to_str()``: vocabulary, merges,
    normalizer, pre-tokenizer, added tokens), else of its vocabulary: the cache key of everything that
    depends on how the model cuts text. Memoised per tokenizer object (a large vocabulary costs ~0.1 s)."""
    hit = _TOKENIZER_HASHES.get(id(tokenizer))
    if hit is not None and hit[0]() is tokenizer:
        return hit[1]
    backend = getattr(tokenizer, "backend_tokenizer", None)
    payload = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    digest = hashlib.sha256(payload.encode("utf-8")).hexdigest()
    with contextlib.suppress(TypeError):  # an object that cannot be weakly referenced: hash it again next time
        _TOKENIZER_HASHES[id(tokenizer)] = (weakref.ref(tokenizer), digest)
    return digest


def _ends_sentence(text: str) -> bool:
    return text.endswith("\n") or text.rstrip(" \t").endswith((".", "!", "?"))


class _Stream:
    """The haystack documents' tokens end to end in the seeded order, tokenized only as far as asked.

    Each document is tokenized whole and followed by a blank line, as in the needle grid's stream, and the
    positions where a needle may go (after a sentence or line end) are found once per stream.
    """

    CHUNK = 8

    def __init__(self, kit: _Kit, haystack: HaystackText, seed: int) -> None:
        self.kit, self.haystack = kit, haystack
        self.order = haystack_order(len(haystack.documents), seed)
        self.next_doc = 0
        self.ids: list[int] = []
        self.boundaries: list[int] = []
        """Positions p where a needle may go right before ``ids[p]``."""
        self.separator = list(kit.enc(DOCUMENT_SEPARATOR))

    def ensure(self, tokens: int) -> int:
        """Tokenize further documents until the stream holds *tokens* tokens or the text is used up."""
        while len(self.ids) < tokens and self.next_doc < len(self.order):
            picked = self.order[self.next_doc : self.next_doc + self.CHUNK]
            self.next_doc += len(picked)
            start = len(self.ids)
            for ids in self.kit.encode_many([self.haystack.documents[i] for i in picked]):
                self.ids += ids + self.separator
            self.boundaries += self.kit.boundaries(self.ids, max(1, start), len(self.ids))
        return len(self.ids)


class _Kit:
    """Per-tokenizer memo: encoded pieces, each token's text, and the haystack streams (by digest and seed)."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.enc = lru_cache(maxsize=1 << 16)(self._encode)
        self._text: dict[int, str] = {}
        self._space: dict[int, bool] = {}
        self._cost: dict[str, int] = {}
        self._anchor = self._encode("a")[:1] or (0,)
        self._anchor_text = tokenizer.decode(list(self._anchor))
        self.streams: OrderedDict[tuple[str, int], _Stream] = OrderedDict()

    def _encode(self, text: str) -> tuple[int, ...]:
        return tuple(self.encode_many([text])[0])

    def encode_many(self, texts: list[str]) -> list[list[int]]:
        """Token ids of each text, no special tokens. A fast tokenizer's Rust backend is called directly: the
        same ids as ``tokenizer(texts, add_special_tokens=False)`` (tested) without its per-call overhead."""
        if not texts:
            return []
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return [e.ids for e in backend.encode_batch(texts, add_special_tokens=False)]
        return [list(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids))

    def rough_text(self, ids: Sequence[int]) -> str:
        """The tokens' texts joined: the decoded text up to spaces a lone SentencePiece token loses (and bytes
        of a split character), enough to ask whether a key or value already occurs in a haystack."""
        self._learn(ids)
        text = self._text
        return "".join([text[i] for i in ids])

    def costs(self, words: Sequence[str]) -> dict[str, int]:
        """Tokens of ``" " + word`` for each word (memoised, one batch for the new ones)."""
        new = [w for w in dict.fromkeys(words) if w not in self._cost]
        for word, ids in zip(new, self.encode_many([" " + w for w in new]), strict=True):
            self._cost[word] = len(ids)
        return self._cost

    def _learn(self, ids: Iterable[int]) -> None:
        new = sorted({i for i in ids if i not in self._text})
        if not new:
            return
        texts = self.tokenizer.batch_decode([[i] for i in new])
        # A lone SentencePiece token loses its leading space when decoded: decode it after an anchor instead.
        pairs = self.tokenizer.batch_decode([[*self._anchor, i] for i in new])
        for i, text, pair in zip(new, texts, pairs, strict=True):
            self._text[i] = text
            self._space[i] = pair[len(self._anchor_text) :][:1].isspace()

    def starts_word(self, token: int) -> bool:
        """Whether *token*'s text begins with whitespace (a new word or line), learned once per token."""
        self._learn([token])
        return self._space[token]

    def ends_sentence(self, token: int) -> bool:
        """Whether *token*'s text ends a sentence or a line."""
        self._learn([token])
        return _ends_sentence(self._text[token])

    def boundaries(self, ids: list[int], start: int, stop: int) -> list[int]:
        """Positions p in [start, stop) right after a sentence or line end, before a token that starts a word."""
        self._learn(ids[max(0, start - 1) : stop])
        text, space = self._text, self._space
        out = []
        for p in range(start, stop):
            # The needle is followed by whitespace too, so it never runs into the next line's first word.
            if space[ids[p]] and _ends_sentence(text[ids[p - 1]]):
                out.append(p)
        return out

    def stream(self, haystack: HaystackText, seed: int) -> _Stream:
        key = (haystack.digest, seed)
        if key not in self.streams:
            self.streams[key] = _Stream(self, haystack, seed)
            while len(self.streams) > 4:
                self.streams.popitem(last=False)
        self.streams.move_to_end(key)
        return self.streams[key]


_KITS: OrderedDict[str, _Kit] = OrderedDict()


def _kit(tokenizer: Any) -> tuple[_Kit, str]:
    digest = tokenizer_hash(tokenizer)
    kit = _KITS.get(digest)
    if kit is None:
        kit = _KITS[digest] = _Kit(tokenizer)
        while len(_KITS) > 4:
            _KITS.popitem(last=False)
    _KITS.move_to_end(digest)
    return kit, digest


_VOCABULARIES: OrderedDict[str, tuple[str, ...]] = OrderedDict()
_WORD = re.compile(r"(?<![\w-])[a-z]{4,10}(?![\w-])")


def _coded_words(count: int, rng: random.Random) -> list[str]:
    """Distinct made-up five-letter words (consonant-vowel-consonant-vowel-consonant): all the same length,
    so none is a substring of another and string matching cannot confuse them."""
    consonants, vowels = "bcdfghjklmnprstvwz", "aeiou"
    words: set[str] = set()
    while len(words) < count:
        words.add("".join(rng.choice(consonants if i % 2 == 0 else vowels) for i in range(5)))
    return sorted(words)


def vocabulary(haystack: HaystackText) -> tuple[str, ...]:
    """Distinct lower-case words (4–10 letters) of the haystack text, in file order until MAX_VOCABULARY, sorted.

    Keys, word values and the common-words lists are drawn from it, so they are words of the dataset's
    language; a text with too few (code, numbers) is completed with made-up words.
    """
    hit = _VOCABULARIES.get(haystack.digest)
    if hit is not None:
        return hit
    words: dict[str, None] = {}
    for doc in haystack.documents:
        for word in _WORD.findall(doc):
            words.setdefault(word)
        if len(words) >= MAX_VOCABULARY:
            break
    found = sorted(list(words)[:MAX_VOCABULARY])
    if len(found) < MIN_VOCABULARY:
        extra = [w for w in _coded_words(MIN_VOCABULARY, random.Random("ruler:vocabulary")) if w not in words]
        found = sorted(found + extra[: MIN_VOCABULARY - len(found)])
    _VOCABULARIES[haystack.digest] = result = tuple(found)
    while len(_VOCABULARIES) > 8:
        _VOCABULARIES.popitem(last=False)
    return result


# --- samples, tasks and the cache -----------------------------------------------------------------------


@dataclass(frozen=True)
class RulerSample:
    """One prompt of one task at one length. Treat the lists as read-only: the cache hands out the same objects."""

    task: str
    length: int
    index: int
    prompt_ids: list[int]
    """Instructions, context and question with its answer prefix: at most ``length`` tokens (less ``reserve``)."""
    answers: list[str]
    """Every string a correct answer contains (scored by :func:`gpu_workers.evaluate.ruler.string_match_all`)."""
    depths: list[float] = field(default_factory=list)
    """Where the answers' needles (vt: the asked chain's assignments) start, as fractions of the context;
    empty for the aggregation tasks, whose answers are spread over the whole context."""
    prefix_len: int = 0
    """Leading tokens every sample of this task and length shares (the noise haystack before the first
    needle, else the instructions): a shared-prefix KV cache of that many tokens is exact for this prompt."""
    context_span: tuple[int, int] = (0, 0)
    """``prompt_ids[start:end]`` is the haystack part (context), between the instructions and the question."""
    answer_tokens: int = 0
    """Tokens of the reference answer ``" " + ", ".join(answers)``: what the decoding budget is sized from."""

    @property
    def depth(self) -> float | None:
        return self.depths[0] if self.depths else None

    def context_ids(self) -> list[int]:
        return self.prompt_ids[self.context_span[0] : self.context_span[1]]

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["context_span"] = list(self.context_span)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RulerSample:
        return cls(**{**data, "context_span": tuple(data["context_span"])})


@dataclass(frozen=True)
class _Job:
    """What a generator is asked for; ``rng(i)`` seeds sample i from (task, seed, length, i) alone."""

    task: str
    kit: _Kit
    haystack: HaystackText
    length: int
    seed: int
    samples: int
    reserve: int

    @property
    def budget(self) -> int:
        return self.length - self.reserve

    def rng(self, index: int) -> random.Random:
        return random.Random(f"ruler:{self.task}:{self.seed}:{self.length}:{index}")

    def room(self, intro: Sequence[int], question: Sequence[int], fixed: int, minimum: int = MIN_HAYSTACK_TOKENS
             ) -> int:
        """Context tokens left beside instructions, question and *fixed* (needles); too few is a 'lengths' error."""
        room = self.budget - len(intro) - len(question) - fixed
        if room < minimum:
            self.too_short(self.length - room + minimum)
        return room

    def too_short(self, need: int) -> None:
        raise RulerError(f"RULER task {self.task} needs prompts of at least {need} tokens for its instructions, "
                         f"question and needles; {self.length} is too short.", "lengths")

    def sample(self, index: int, intro: Sequence[int], context: list[int], question: Sequence[int],
               answers: list[str], depths: list[float], shared: int) -> RulerSample:
        prompt = list(intro) + context + list(question)
        assert len(prompt) <= self.budget, (self.task, len(prompt), self.budget)
        answer_tokens = len(self.kit.enc(" " + ", ".join(answers)))
        return RulerSample(self.task, self.length, index, prompt, answers, depths, len(intro) + shared,
                           (len(intro), len(intro) + len(context)), answer_tokens)


class RulerCache:
    """Generated task sets by (task, params, tokenizer hash, haystack digest, length, seed, samples, reserve).

    In memory an LRU of *maxsize* sets; with *directory*, also one JSON file per set, so the next run of an
    experiment (or a retried attempt, given a work directory) does not build them again.
    """

    def __init__(self, directory: str | Path | None = None, maxsize: int = 256) -> None:
        self.directory = Path(directory) if directory else None
        self.maxsize = maxsize
        self._memory: OrderedDict[str, list[RulerSample]] = OrderedDict()
        self.hits = self.misses = 0

    def _path(self, key: str) -> Path:
        assert self.directory is not None
        return self.directory / f"ruler-{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def get(self, key: str) -> list[RulerSample] | None:
        if key in self._memory:
            self._memory.move_to_end(key)
            self.hits += 1
            return self._memory[key]
        if self.directory is not None:
            path = self._path(key)
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                data = None
            if isinstance(data, dict) and data.get("key") == key:
                samples = [RulerSample.from_json(s) for s in data["samples"]]
                self._remember(key, samples)
                self.hits += 1
                return samples
        self.misses += 1
        return None

    def put(self, key: str, samples: list[RulerSample]) -> None:
        self._remember(key, samples)
        if self.directory is not None:
            self.directory.mkdir(parents=True, exist_ok=True)
            path = self._path(key)
            temporary = path.with_suffix(f".{os.getpid()}.tmp")
            temporary.write_text(json.dumps({"key": key, "samples": [s.to_json() for s in samples]}),
                                 encoding="utf-8")
            temporary.replace(path)  # atomic: a concurrent reader sees the old file or the whole new one

    def _remember(self, key: str, samples: list[RulerSample]) -> None:
        self._memory[key] = samples
        self._memory.move_to_end(key)
        while len(self._memory) > self.maxsize:
            self._memory.popitem(last=False)

    def clear(self) -> None:
        self._memory.clear()


DEFAULT_CACHE = RulerCache()
"""Memory-only cache shared by callers that pass none: a pipeline reusing its tokenizer pays generation once."""


@dataclass(frozen=True)
class RulerTask:
    """One task of the registry: a generator with its parameters (part of the cache key)."""

    name: str
    group: str
    """``retrieval``, ``multi_hop`` or ``aggregation`` (RULER's categories; its fourth, QA, is not built)."""
    generator: Callable[..., list[RulerSample]]
    params: tuple[tuple[str, Any], ...] = ()
    description: str = ""
    mirrors: str = ""
    """The RULER task this one reproduces, or what it replaces."""

    def cache_key(self, tokenizer_digest: str, haystack_digest: str, length: int, seed: int, samples: int,
                  reserve: int) -> str:
        return json.dumps([GENERATOR_VERSION, self.name, sorted(self.params), tokenizer_digest, haystack_digest,
                           length, seed, samples, reserve])

    def generate(self, tokenizer: Any, haystack: HaystackLike, length: int, seed: int, samples: int, *,
                 reserve: int = 0, cache: RulerCache | None = DEFAULT_CACHE) -> list[RulerSample]:
        """*samples* prompts of at most ``length - reserve`` tokens (reserve: room kept for the generated answer,
        as RULER counts its ``tokens_to_generate`` inside the length; 0 = the prompt may fill the length)."""
        length, seed, samples, reserve = int(length), int(seed), int(samples), int(reserve)
        if samples < 1:
            raise RulerError("ask for at least one RULER sample per task and length", "ruler_samples")
        if not 0 <= reserve < length:
            raise RulerError(f"the answer reserve must be between 0 and the length ({length})", "lengths")
        text = as_haystack(haystack)
        kit, digest = _kit(tokenizer)
        key = self.cache_key(digest, text.digest, length, seed, samples, reserve)
        if cache is not None and (hit := cache.get(key)) is not None:
            return hit
        kit.tokenizer = tokenizer
        job = _Job(self.name, kit, text, length, seed, samples, reserve)
        out = self.generator(job, **dict(self.params))
        if cache is not None:
            cache.put(key, out)
        return out


# --- needle tasks ------------------------------------------------------------------------------------------

_VALUE_NOUNS = {"number": "numbers", "uuid": "uuids", "word": "words"}


def _draw_value(kind: str, rng: random.Random, vocab: Sequence[str], avoid: set[str]) -> str | None:
    """One draw of a key or value of *kind*; None when a word pair would reuse a word of *avoid*."""
    if kind == "number":
        return str(rng.randint(10 ** (NUMBER_DIGITS - 1), 10**NUMBER_DIGITS - 1))
    if kind == "uuid":
        return str(uuid.UUID(int=rng.getrandbits(128), version=4))
    first, second = rng.sample(vocab, 2)
    return None if first in avoid or second in avoid else f"{first}-{second}"


def _random_value(kind: str, rng: random.Random, vocab: Sequence[str], taken: set[str]) -> str:
    """A fresh key or value of *kind*; word pairs use words no other key or value of the sample uses."""
    while True:
        value = _draw_value(kind, rng, vocab, taken)
        if value is not None and value not in taken:
            taken.add(value)
            taken.update(value.split("-") if kind == "word" else ())
            return value


def _join_keys(keys: Sequence[str]) -> str:
    return keys[0] if len(keys) == 1 else ", ".join(keys[:-1]) + ", and " + keys[-1]


def _niah_texts(kind: str, asked: Sequence[str], answers: int) -> tuple[str, str]:
    """(intro, question with its answer prefix): plural wording when more than one value is asked."""
    plural, singular = _VALUE_NOUNS[kind], kind
    intro = f"Some special magic {plural} are hidden in the text below. Remember them: a question follows.\n"
    keys = _join_keys(asked)
    if answers == 1:
        question = (f"\nWhat is the special magic {singular} for {keys} in the text above? "
                    f"The special magic {singular} for {keys} is")
    elif len(asked) == 1:
        question = (f"\nWhat are all the special magic {plural} for {keys} in the text above? "
                    f"The special magic {plural} for {keys} are")
    else:  # the keys once: four word pairs twice over would not fit a short prompt
        question = (f"\nWhat are all the special magic {plural} for {keys} in the text above? "
                    f"The special magic {plural} asked for are")
    return intro, question


def _needle_text(kind: str, key: str, value: str) -> str:
    return f"One of the special magic {_VALUE_NOUNS[kind]} for {key} is: {value}."


def _noise(job: _Job, room: int) -> tuple[list[tuple[int, ...]], list[int]]:
    """As many whole filler sentences as fit in *room* tokens, and their cumulative token offsets."""
    pieces = [job.kit.enc(s) for s in NOISE_SENTENCES]
    cycle = sum(map(len, pieces))
    count, used = (room // cycle) * len(pieces), (room // cycle) * cycle
    for piece in pieces:
        if used + len(piece) > room:
            break
        used, count = used + len(piece), count + 1
    sentences = [pieces[i % len(pieces)] for i in range(count)]
    return sentences, [0, *accumulate(map(len, sentences))]


def _splice(tokens: list[int], inserts: Sequence[tuple[int, int, Sequence[int]]]) -> tuple[list[int], list[int]]:
    """*tokens* with each insert ``(position, order, ids)`` put before ``tokens[position]`` (ties by *order*),
    and where each insert starts in the result, in the order given."""
    out: list[int] = []
    starts = [0] * len(inserts)
    cursor = 0
    for i in sorted(range(len(inserts)), key=lambda i: (inserts[i][0], inserts[i][1])):
        position, _, ids = inserts[i]
        out += tokens[cursor:position]
        cursor = position
        starts[i] = len(out)
        out += ids
    return out + tokens[cursor:], starts


def _flatten(units: Sequence[Sequence[int]]) -> list[int]:
    return [t for unit in units for t in unit]


@dataclass(frozen=True)
class _NeedleDraw:
    """One sample's keys and values, and the token pieces they make."""

    asked: list[str]
    answers: list[str]
    needles: list[tuple[str, str]]
    intro: tuple[int, ...]
    question: tuple[int, ...]
    pieces: list[list[int]]

    @property
    def tokens(self) -> int:
        return sum(map(len, self.pieces))


def _draw_needles(job: _Job, rng: random.Random, vocab: Sequence[str], haystack: str, key_kind: str,
                  value_kind: str, keys: int, values: int, queries: int) -> tuple[_NeedleDraw, set[str]]:
    taken: set[str] = set()
    key_list = [_random_value(key_kind, rng, vocab, taken) for _ in range(keys)]
    value_lists = [[_random_value(value_kind, rng, vocab, taken) for _ in range(values)] for _ in key_list]
    asked = key_list[:queries]
    answers = [v for vs in value_lists[:queries] for v in vs]
    needles = [(k, v) for k, vs in zip(key_list, value_lists, strict=True) for v in vs]
    intro_text, question_text = _niah_texts(value_kind, asked, len(answers))
    # Lines of their own (a newline, then the sentence), or a sentence after a sentence end.
    lead = "" if haystack == "needles" else " "
    question, *pieces = job.kit.encode_many([question_text] + [lead + _needle_text(value_kind, k, v)
                                                               for k, v in needles])
    if haystack == "needles":
        separator = list(job.kit.enc("\n"))
        pieces = [separator + p for p in pieces]
    return _NeedleDraw(asked, answers, needles, job.kit.enc(intro_text), tuple(question), pieces), taken


def _generate_niah(job: _Job, *, haystack: str, key_kind: str, value_kind: str, keys: int = 1, values: int = 1,
                   queries: int = 1) -> list[RulerSample]:
    """Needle tasks: *keys* keys with *values* values each go in as needle sentences, *queries* keys are asked.

    ``haystack``: ``noise`` (filler sentences, the same for every sample), ``essay`` (the dataset's text, a
    fresh stretch per sample; each needle at the sentence end nearest its depth) or ``needles`` (lines of
    distractor needles with fresh keys and values, cut from the front to fit exactly).
    """
    kit = job.kit
    vocab = vocabulary(job.haystack)
    stream = kit.stream(job.haystack, job.seed) if haystack == "essay" else None
    cursor = 0
    out = []
    for index in range(job.samples):
        rng = job.rng(index)
        draw, taken = _draw_needles(job, rng, vocab, haystack, key_kind, value_kind, keys, values, queries)
        count = len(draw.needles)
        order = list(range(count))
        rng.shuffle(order)  # which needle comes first when two land at the same place
        depths = rng.sample(DEPTH_CHOICES, count)
        room = job.room(draw.intro, draw.question, draw.tokens)
        shared = 0
        if haystack == "noise":
            sentences, offsets = _noise(job, room)
            positions = [offsets[round(d * len(sentences))] for d in depths]
            shared = min(positions)
            context, starts = _splice(_flatten(sentences), [(positions[i], order[i], draw.pieces[i])
                                                              for i in range(count)])
        elif haystack == "essay":
            assert stream is not None
            for attempt in range(100):
                if stream.ensure(cursor + room) < cursor + room:
                    _too_many_samples(job, stream, index, room)
                window = stream.ids[cursor : cursor + room]
                text = kit.rough_text(window)
                if not any(s in text for s in draw.answers + draw.asked):
                    break
                # A value already in the text would make "appears exactly once" false: draw this sample again.
                redraw = random.Random(f"ruler:{job.task}:{job.seed}:{job.length}:{index}:redraw{attempt}")
                draw, taken = _draw_needles(job, redraw, vocab, haystack, key_kind, value_kind, keys, values, queries)
                room = job.room(draw.intro, draw.question, draw.tokens)
            else:
                raise RulerError("the haystack text contains the keys or values of every draw", "ruler_tasks")
            lo = bisect.bisect_right(stream.boundaries, cursor)
            hi = bisect.bisect_left(stream.boundaries, cursor + room)
            # The window's first token follows the instructions' newline: a needle may go there if that token
            # starts a word; at the end, the question starts a new line: if the window ends a sentence.
            head = [0] if kit.starts_word(window[0]) else []
            tail = [room] if kit.ends_sentence(window[-1]) else []
            allowed = head + [p - cursor for p in stream.boundaries[lo:hi]] + tail
            if not allowed:  # no sentence end in the whole stretch (a table, a code listing): any word start
                allowed = [p for p in range(room) if kit.starts_word(window[p])] or [0, room]
            cursor += room
            positions = [_nearest(allowed, round(d * room)) for d in depths]
            context, starts = _splice(window, [(positions[i], order[i], draw.pieces[i]) for i in range(count)])
        else:
            lines = _distractor_lines(job, rng, room, key_kind, value_kind, vocab, taken)
            offsets = [0, *accumulate(map(len, lines))]
            # After the first line, the only one that may be partial.
            positions = [offsets[1 + round(d * (len(lines) - 1))] for d in depths]
            context, starts = _splice(_flatten(lines), [(positions[i], order[i], draw.pieces[i]) for i in range(count)])
        size = max(len(context), 1)
        answer_depths = [round(starts[i] / size, 4) for i in range(count) if draw.needles[i][0] in draw.asked]
        out.append(job.sample(index, draw.intro, context, draw.question, draw.answers, answer_depths, shared))
    return out


def _nearest(allowed: list[int], target: int) -> int:
    i = bisect.bisect_left(allowed, target)
    return min(allowed[max(0, i - 1) : i + 1], key=lambda p: (abs(p - target), p))


def _too_many_samples(job: _Job, stream: _Stream, index: int, room: int) -> None:
    raise RulerError(
        f"The {job.haystack.name!r} haystack text holds {len(stream.ids):,} tokens: only {index} samples of "
        f"{job.length} tokens fit without reusing text for {job.task} ({job.samples} asked, about {room:,} "
        f"tokens of text each). Lower the RULER samples or the longest length, or use a larger haystack source.",
        "ruler_samples")


def _distractor_lines(job: _Job, rng: random.Random, tokens: int, key_kind: str, value_kind: str,
                      vocab: Sequence[str], taken: set[str]) -> list[list[int]]:
    """Needle lines with fresh keys and values, exactly *tokens* tokens in all.

    The lines are generated until they reach *tokens*, then cut from the front: the haystack reads as a
    window of an endless list of needles, so it fills the length exactly (whole lines of ~30–90 tokens
    could not fill a 256-token prompt to 90%). The first line, the only partial one, keeps at most the end
    of a distractor key, which no asked key shares: distractor keys and values are new strings and use no
    word of the sample's own keys and values.
    """
    separator = list(job.kit.enc("\n"))
    used = set(taken)

    def fresh(kind: str) -> str:
        while True:
            value = _draw_value(kind, rng, vocab, taken)
            if value is not None and value not in used:
                used.add(value)
                return value

    estimate = len(job.kit.enc(_needle_text(value_kind, _sample_like(key_kind), _sample_like(value_kind)))) + 1
    lines: list[list[int]] = []
    total = 0
    while total < tokens:
        texts = [_needle_text(value_kind, fresh(key_kind), fresh(value_kind))
                 for _ in range(max(4, (tokens - total) // estimate + 2))]
        for ids in job.kit.encode_many(texts):
            lines.append(separator + ids)
            total += len(lines[-1])
            if total >= tokens:
                break
    excess = total - tokens
    while excess and excess >= len(lines[0]):
        excess -= len(lines.pop(0))
    if excess:
        lines[0] = lines[0][excess:]
    return lines


def _sample_like(kind: str) -> str:
    return {"number": "1" * NUMBER_DIGITS, "uuid": str(uuid.UUID(int=0)), "word": "word-word"}[kind]


# --- variable tracking ----------------------------------------------------------------------------------


def _generate_vt(job: _Job, *, chains: int = 1, hops: int = 4) -> list[RulerSample]:
    """Variable tracking: *chains* chains of *hops* assignments (``VAR B = VAR A.``) after a first one that
    gives a 5-digit number (``VAR A = 12345.``), scattered in order over the noise haystack. The question
    names the first chain's number; the answer is all ``hops + 1`` variables of that chain. The other chains
    hold other numbers: distractors of the same form that never carry the asked value."""
    if chains < 1 or hops < 1:
        raise RulerError("variable tracking needs at least one chain of at least one hop", "ruler_tasks")
    kit = job.kit
    intro = kit.enc("Memorize the chains of variable assignments hidden in the text below: each VAR line gives a "
                    "variable a number or the value of another variable. A question about them follows.\n")
    out = []
    for index in range(job.samples):
        rng = job.rng(index)
        names: set[str] = set()
        while len(names) < chains * (hops + 1):
            names.add("".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(VAR_NAME_LETTERS)))
        ordered = sorted(names)
        rng.shuffle(ordered)
        numbers = rng.sample(range(10 ** (VT_VALUE_DIGITS - 1), 10**VT_VALUE_DIGITS), chains)
        chain_vars = [ordered[c * (hops + 1) : (c + 1) * (hops + 1)] for c in range(chains)]
        statements = [[kit.enc(f" VAR {variables[0]} = {numbers[c]}.")]
                      + [kit.enc(f" VAR {variables[j + 1]} = VAR {variables[j]}.") for j in range(hops)]
                      for c, variables in enumerate(chain_vars)]
        value = numbers[0]
        question = kit.enc(f"\nQuestion: Which variables are assigned the value {value}, directly or through other "
                           f"variables, in the text above? Answer: The variables assigned the value {value} are:")
        fixed = sum(len(s) for chain in statements for s in chain)
        room = job.room(intro, question, fixed)
        sentences, offsets = _noise(job, room)
        if len(sentences) < hops:
            job.too_short(job.length + (hops - len(sentences)) * max(map(len, NOISE_SENTENCES)))
        inserts = []
        for c, chain in enumerate(statements):
            slots = sorted(rng.sample(range(len(sentences) + 1), hops + 1))
            inserts += [(offsets[slot], c * (hops + 1) + j, ids)
                        for j, (slot, ids) in enumerate(zip(slots, chain, strict=True))]
        context, starts = _splice(_flatten(sentences), inserts)
        shared = min(position for position, _, _ in inserts)
        depths = [round(starts[j] / len(context), 4) for j in range(hops + 1)]
        out.append(job.sample(index, intro, context, question, list(chain_vars[0]), depths, shared))
    return out


# --- aggregation ------------------------------------------------------------------------------------------


def _cwe_shape(entries: int, common: int, common_freq: int, rare_freq: int) -> tuple[int, int, int]:
    """(words asked, their frequency, distractor frequency) for a list of about *entries* entries.

    RULER's 10 words × 30 occurrences beside distractors × 3 needs thousands of tokens. Shorter lists keep
    the answer words to at most half the entries by, in turn: lowering their frequency, to no less than
    twice the distractors'; dropping the distractors to one occurrence (answer words then at least 2);
    asking for fewer words, 3 occurrences each. The answer words always stay strictly more frequent.
    """
    k, fc, fu = common, common_freq, rare_freq
    half = entries // 2
    if k * fc > half:
        fc = min(common_freq, max(2 * fu, half // k))
    if k * fc > half:
        fu = 1
        fc = max(2, min(common_freq, half // k))
    if k * fc > half:
        fc = min(common_freq, 3 if half >= 3 else 2)
        k = max(1, half // fc)
    return k, fc, fu


def _cwe_answer_words(rng: random.Random, vocab: Sequence[str], k: int) -> list[str]:
    """*k* distinct words of *vocab*, none part of another (so string matching cannot confuse them)."""
    answer_words: list[str] = []
    while len(answer_words) < k:
        word = rng.choice(vocab)
        if not any(word in a or a in word for a in answer_words):
            answer_words.append(word)
    return answer_words


def _cwe_add_distractors(rng: random.Random, vocab: Sequence[str], answer_words: list[str], multiset: list[str],
                         *, each: int, total: int, room: int, length: int, number: Callable[[int], int],
                         cost: Callable[[str], int]) -> None:
    """Append distractor words to *multiset* (which costs *total* tokens so far), *each* times each, until the
    next occurrence would pass *room*. A distractor is no answer word and contains none; each is drawn once.
    *length* is the sample's target length, for the error when the vocabulary runs out first."""
    seen = set(answer_words)
    for _attempt in range(50 * len(vocab)):
        word = rng.choice(vocab)
        if word in seen or any(a in word for a in answer_words):
            continue
        seen.add(word)
        for _ in range(each):
            step = number(len(multiset) + 1) + cost(word)
            if total + step > room:
                return
            multiset.append(word)
            total += step
    raise RulerError(f"the haystack text has too few distinct words for a {length}-token common-words "
                     f"list", "lengths")


def _generate_cwe(job: _Job, *, common: int = 10, common_freq: int = 30, rare_freq: int = 3) -> list[RulerSample]:
    """Common words extraction: a numbered list ``1. word 2. word ...`` where *common* words appear
    *common_freq* times and every other word *rare_freq* times (fewer at short lengths: :func:`_cwe_shape`),
    shuffled; the answer is the common words. Words come from the dataset's vocabulary; no answer word is
    part of another word of the list, so string matching cannot credit a distractor for it."""
    if not (common >= 1 and common_freq > rare_freq >= 1):
        raise RulerError("common words need a count ≥ 1 and a frequency above the distractors'", "ruler_tasks")
    kit = job.kit
    vocab = vocabulary(job.haystack)
    intro = kit.enc("Below is a numbered list of words. A few of them are repeated many times and the others only "
                    "a few times: remember which words appear most often.\n")
    probe = vocab[:: max(1, len(vocab) // 64)]
    word_cost = sum(len(kit.enc(" " + w)) for w in probe) / len(probe)

    def question_for(k: int) -> tuple[int, ...]:
        return kit.enc(f"\nQuestion: What are the {k} most common words in the numbered list above? "
                       f"Answer: The {k} most common words in the list are:")

    def number(i: int) -> int:
        return len(kit.enc(f" {i}."))

    table = kit.costs(())

    def cost(word: str) -> int:
        known = table.get(word)
        return known if known is not None else kit.costs([word])[word]

    estimate_room = job.room(intro, question_for(common), 0)
    entries, used = 0, 0.0
    while used + number(entries + 1) + word_cost <= estimate_room:
        entries += 1
        used += number(entries) + word_cost
    out = []
    for index in range(job.samples):
        rng = job.rng(index)
        k, fc, fu = _cwe_shape(entries, common, common_freq, rare_freq)
        while True:  # the answer words must leave room for distractors; fewer if the estimate was generous
            question = question_for(k)
            room = job.room(intro, question, 0)
            answer_words = _cwe_answer_words(rng, vocab, k)
            total = sum(number(i + 1) for i in range(k * fc)) + fc * sum(map(cost, answer_words))
            if total < room or k == 1:
                break
            k -= 1
        if total >= room:
            job.too_short(job.length - room + total + 1)
        multiset = [w for w in answer_words for _ in range(fc)]
        _cwe_add_distractors(rng, vocab, answer_words, multiset, each=fu, total=total, room=room, length=job.length,
                             number=number, cost=cost)
        rng.shuffle(multiset)
        context: list[int] = []
        for i, word in enumerate(multiset, 1):
            context += kit.enc(f" {i}.") + kit.enc(" " + word)
        out.append(job.sample(index, intro, context, question, answer_words, [], 0))
    return out


def _zipf_draw(rng: random.Random, words: Sequence[str], weights: Sequence[float], room: int,
               cost: Callable[[str], int]) -> list[str]:
    """Words drawn by rank from the cumulative *weights* until the next one would pass *room* tokens."""
    drawn: list[str] = []
    total = 0
    ranks = range(len(words))
    while True:
        for rank in rng.choices(ranks, cum_weights=weights, k=64):
            word = words[rank]
            if total + cost(word) > room:
                return drawn
            drawn.append(word)
            total += cost(word)


def _generate_fwe(job: _Job, *, alpha: float = 2.0, top: int = 3) -> list[RulerSample]:
    """Frequent words extraction: "coded text" of made-up words drawn from a Zipf distribution (rank r with
    probability ∝ r^-alpha) over a per-sample vocabulary; the answer is the *top* most frequent words. A
    draw whose top-*top* words are not strictly ahead of the next one is drawn again, so the answer is
    unambiguous."""
    if alpha <= 1 or top < 1:
        raise RulerError("frequent words need a Zipf exponent above 1 and at least one word asked", "ruler_tasks")
    kit = job.kit
    pool = _coded_words(CODED_WORD_POOL, random.Random("ruler:coded-words"))
    intro = kit.enc("Read the coded text below and keep count of how often each coded word appears. A question "
                    "about the most frequent ones follows.\n")
    question = kit.enc(f"\nQuestion: Which {top} coded words appear most often in the coded text above? "
                       f"Answer: The {top} most frequent coded words in the text are:")

    cost = kit.costs(pool).__getitem__
    room = job.room(intro, question, 0)
    mean_cost = sum(map(cost, pool[:32])) / 32
    size = max(2 * top + 4, min(2000, int(room / mean_cost) // 3))
    weights = list(accumulate((r + 1) ** -alpha for r in range(size)))
    out = []
    for index in range(job.samples):
        rng = job.rng(index)
        for _attempt in range(200):
            drawn = _zipf_draw(rng, rng.sample(pool, size), weights, room, cost)
            ranked = Counter(drawn).most_common()
            if len(ranked) > top and ranked[top - 1][1] > ranked[top][1]:
                break
        else:
            raise RulerError(f"frequent words: no unambiguous top {top} in {job.length} tokens", "lengths")
        pieces = {w: kit.enc(" " + w) for w in set(drawn)}
        context = [t for w in drawn for t in pieces[w]]
        out.append(job.sample(index, intro, context, question, [w for w, _ in ranked[:top]], [], 0))
    return out


# --- the registry -----------------------------------------------------------------------------------------


def _niah_task(name: str, description: str, mirrors: str, **params: Any) -> RulerTask:
    return RulerTask(name, "retrieval", _generate_niah, tuple(sorted(params.items())), description, mirrors)


TASKS: dict[str, RulerTask] = {t.name: t for t in (
    _niah_task("niah_single_1", "noise haystack, one needle, number value", "niah_single_1",
               haystack="noise", key_kind="word", value_kind="number"),
    _niah_task("niah_single_2", "dataset-text haystack, one needle, number value", "niah_single_2",
               haystack="essay", key_kind="word", value_kind="number"),
    _niah_task("niah_single_3", "dataset-text haystack, one needle, UUID value", "niah_single_3",
               haystack="essay", key_kind="word", value_kind="uuid"),
    _niah_task("niah_multikey_1", "dataset-text haystack, 4 keys, one asked", "niah_multikey_1",
               haystack="essay", key_kind="word", value_kind="number", keys=4),
    _niah_task("niah_multikey_2", "haystack of key-value needle lines (word keys, numbers)", "niah_multikey_2",
               haystack="needles", key_kind="word", value_kind="number"),
    _niah_task("niah_multikey_3", "haystack of key-value needle lines (UUID keys and values)", "niah_multikey_3",
               haystack="needles", key_kind="uuid", value_kind="uuid"),
    _niah_task("niah_multivalue", "dataset-text haystack, one key with 4 values, all asked", "niah_multivalue",
               haystack="essay", key_kind="word", value_kind="number", values=4),
    _niah_task("niah_multiquery", "dataset-text haystack, 4 keys, all asked", "niah_multiquery",
               haystack="essay", key_kind="word", value_kind="number", keys=4, queries=4),
    RulerTask("vt", "multi_hop", _generate_vt, (("chains", 1), ("hops", 4)),
              "variable tracking: 1 chain of 4 hops over the noise haystack", "vt"),
    RulerTask("cwe", "aggregation", _generate_cwe, (("common", 10), ("common_freq", 30), ("rare_freq", 3)),
              "common words extraction from a numbered list", "cwe"),
    RulerTask("fwe", "aggregation", _generate_fwe, (("alpha", 2.0), ("top", 3)),
              "frequent words extraction from Zipf-distributed coded text", "fwe"),
    _niah_task("niah_single_word", "dataset-text haystack, one needle, word value", "replaces qa_1",
               haystack="essay", key_kind="word", value_kind="word"),
    _niah_task("niah_multikey_word", "dataset-text haystack, 4 word-valued keys, one asked", "replaces qa_2",
               haystack="essay", key_kind="word", value_kind="word", keys=4),
)}
TASK_NAMES = tuple(TASKS)
assert TASK_NAMES == RULER_TASKS, "gpu_workers.spec names the same tasks, in the same order"
assert {t.group for t in TASKS.values()} == set(RULER_GROUPS)


def get_task(name: str) -> RulerTask:
    try:
        return TASKS[name]
    except KeyError:
        raise RulerError(f"unknown RULER task {name!r}; the tasks are {', '.join(TASK_NAMES)}", "ruler_tasks") from None


def generate(name: str, tokenizer: Any, haystack: HaystackLike, length: int, seed: int, samples: int, *,
             reserve: int = 0, cache: RulerCache | None = DEFAULT_CACHE) -> list[RulerSample]:
    """The samples of task *name* (see :meth:`RulerTask.generate`)."""
    return get_task(name).generate(tokenizer, haystack, length, seed, samples, reserve=reserve, cache=cache)


def generate_suite(tokenizer: Any, haystack: HaystackLike, lengths: Iterable[int], seed: int, samples: int, *,
                   tasks: Sequence[str] = TASK_NAMES, reserve: int = 0,
                   cache: RulerCache | None = DEFAULT_CACHE) -> list[RulerSample]:
    """Every task at every length, in (length, task) order; the haystack text is read once."""
    text = as_haystack(haystack)
    chosen = [get_task(n) for n in tasks]
    return [s for length in sorted(set(lengths)) for task in chosen
            for s in task.generate(tokenizer, text, length, seed, samples, reserve=reserve, cache=cache)]


def check_settings(tokenizer: Any, dataset: DatasetSpec, lengths: Sequence[int], samples: int,
                   tasks: Sequence[str] = TASK_NAMES, seed: int = 0) -> None:
    """Raise the :class:`RulerError` a run would raise, before it is queued: every task's samples at the
    shortest length (its instructions and question must fit) and, for the tasks that read their own stretch
    of the dataset's text per sample, at the longest length (the text must hold every sample without reuse).
    The generator itself decides, so the composer and the worker cannot disagree; results are cached."""
    text = HaystackText.from_dataset(dataset)
    shortest, longest = min(lengths), max(lengths)
    chosen = [get_task(n) for n in tasks]
    for task in chosen:
        task.generate(tokenizer, text, shortest, seed, samples)
    essay = [t for t in chosen if dict(t.params).get("haystack") == "essay"]
    if essay and longest != shortest:
        essay[0].generate(tokenizer, text, longest, seed, samples)


def minimum_length(name: str, tokenizer: Any, haystack: HaystackLike, *, reserve: int = 0,
                   upper: int = 1 << 20) -> int:
    """The shortest length at which task *name* builds (its first sample, seed 0), plus MIN_HAYSTACK_TOKENS
    for keys and questions that come out longer in other samples: for a composer to reject lengths before
    a run is queued. Doubling, then bisecting, so it never builds a prompt much longer than the answer."""
    task, text = get_task(name), as_haystack(haystack)

    def builds(length: int) -> bool:
        try:
            task.generate(tokenizer, text, length, 0, 1, reserve=reserve, cache=None)
        except RulerError as error:
            if error.field != "lengths":
                raise
            return False
        return True

    low, high = reserve + 1, max(64, reserve + 1)
    while not builds(high):
        if high >= upper:
            raise RulerError(f"RULER task {name} does not build below {upper} tokens", "lengths")
        low, high = high + 1, min(upper, high * 2)
    while low < high:
        middle = (low + high) // 2
        if builds(middle):
            high = middle
        else:
            low = middle + 1
    return low + MIN_HAYSTACK_TOKENS

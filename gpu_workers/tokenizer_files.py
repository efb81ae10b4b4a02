"""A model's tokenizer as files: their identity, and a torch-free tokenizer read from ``tokenizer.json``.

Why: the web process answers questions that depend on how a model cuts text (which stored length
statistics apply to a model, whether RULER's prompts fit, the dataset page's mixture preview) but must not
import transformers, which imports torch (+1.5–3.5 s and ~200 MB per web process). Two things need no
transformers:

* **identity** (:func:`tokenizer_key`): a sha256 over the tokenizer files a checkpoint ships (name and
  content digest of each), read from disk without loading anything. Two models whose tokenizer files are
  byte-identical share the key, and so the length statistics measured for either;
* **a tokenizer** (:func:`load_json_tokenizer`): ``tokenizer.json`` read by the ``tokenizers`` library —
  the Rust backend transformers' fast tokenizers wrap — behind the few methods our prompt builders call
  (``__call__``, ``decode``, ``batch_decode``, ``get_vocab``, ``backend_tokenizer``), decoding the way
  transformers does (special tokens kept, its ``clean_up_tokenization_spaces`` rule). A test pins that it
  encodes and decodes as ``AutoTokenizer`` does on the demo model, and RULER generates the same prompts.

Workers keep loading tokenizers with transformers (what runs use): numbers a run depends on, such as the
stored length statistics, are measured there.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json", "merges.txt", "vocab.txt",
    "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
)
"""Every file transformers may build a tokenizer from; all present ones make up its identity."""
_KEYS: dict[tuple[Any, ...], str] = {}


def tokenizer_dir(source: str) -> Path:
    """The folder holding *source*'s tokenizer: the directory itself, or an HF id's snapshot in the local cache.

    Raises :class:`FileNotFoundError` (an ``OSError``, as transformers raises for a missing tokenizer)."""
    path = Path(source).expanduser()
    if source.startswith(("/", ".", "~")) or path.is_dir():
        if not path.is_dir():
            raise FileNotFoundError(f"No model directory at {source}.")
        return path
    from huggingface_hub import try_to_load_from_cache  # torch-free; only for HF ids

    for name in ("tokenizer_config.json", "config.json", "tokenizer.json"):
        hit = try_to_load_from_cache(source, name)
        if isinstance(hit, str):
            return Path(hit).parent
    raise FileNotFoundError(f"{source} is not in the local Hugging Face cache (downloads are off).")


def _present(directory: Path) -> list[tuple[str, os.stat_result]]:
    out = []
    for name in TOKENIZER_FILES:
        try:
            out.append((name, (directory / name).stat()))
        except OSError:
            continue
    return out


def tokenizer_key(source: str) -> str:
    """sha256 over the tokenizer files of *source* (each file's name and content sha256, in a fixed order).

    Memoised per process by each file's size and modification time, so asking on every composer submit costs
    a few ``stat`` calls; a replaced file is hashed again. Raises :class:`FileNotFoundError` without any."""
    directory = tokenizer_dir(source)
    present = _present(directory)
    if not present:
        raise FileNotFoundError(f"No tokenizer in {directory} (looked for {', '.join(TOKENIZER_FILES)}).")
    memo = (str(directory.resolve()), *((name, st.st_size, st.st_mtime_ns) for name, st in present))
    hit = _KEYS.get(memo)
    if hit is not None:
        return hit
    outer = hashlib.sha256()
    for name, _ in present:
        inner = hashlib.sha256()
        with (directory / name).open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                inner.update(block)
        outer.update(f"{name}\0{inner.hexdigest()}\n".encode())
    digest = outer.hexdigest()
    if len(_KEYS) > 256:
        _KEYS.clear()
    _KEYS[memo] = digest
    return digest


class JsonTokenizer:
    """The part of a transformers fast tokenizer our prompt builders and token counts use, over ``tokenizers``.

    Encoding is the backend's (``add_special_tokens`` passed through); decoding keeps special tokens, as
    transformers' ``decode`` does by default, and applies its ``clean_up_tokenization_spaces`` rule (off unless
    the tokenizer config turns it on, and never for BPE models unless forced, as in transformers 5)."""

    def __init__(self, backend: Any, config: dict[str, Any] | None = None) -> None:
        config = config or {}
        self._backend = backend
        bpe = type(backend.model).__name__ == "BPE"
        force = bool(config.get("clean_up_tokenization_spaces_for_bpe_even_though_it_will_corrupt_output"))
        self.clean_up_tokenization_spaces = bool(config.get("clean_up_tokenization_spaces", False)) and (
            not bpe or force)

    @property
    def backend_tokenizer(self) -> Any:
        """The ``tokenizers.Tokenizer`` (RULER calls its ``encode_batch`` and hashes its ``to_str()``)."""
        return self._backend

    def __call__(self, text: str | Sequence[str], add_special_tokens: bool = True) -> dict[str, Any]:
        if isinstance(text, str):
            return {"input_ids": self._backend.encode(text, add_special_tokens=add_special_tokens).ids}
        encoded = self._backend.encode_batch(list(text), add_special_tokens=add_special_tokens)
        return {"input_ids": [e.ids for e in encoded]}

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        text = self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up(text) if self.clean_up_tokenization_spaces else text

    def batch_decode(self, sequences: Sequence[Sequence[int]], skip_special_tokens: bool = False) -> list[str]:
        texts = self._backend.decode_batch([list(s) for s in sequences], skip_special_tokens=skip_special_tokens)
        return [_clean_up(t) for t in texts] if self.clean_up_tokenization_spaces else list(texts)

    def get_vocab(self) -> dict[str, int]:
        return self._backend.get_vocab(with_added_tokens=True)

    def __len__(self) -> int:
        return self._backend.get_vocab_size(with_added_tokens=True)


def _clean_up(text: str) -> str:
    """transformers' ``clean_up_tokenization`` (spaces before punctuation and English contractions)."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


def has_tokenizer_json(source: str) -> bool:
    try:
        return (tokenizer_dir(source) / "tokenizer.json").is_file()
    except OSError:
        return False


def load_json_tokenizer(source: str) -> JsonTokenizer:
    """*source*'s ``tokenizer.json`` as a :class:`JsonTokenizer`; loaded once per process and tokenizer key.

    Raises ``OSError`` when the model has no ``tokenizer.json`` (see :func:`load_light_tokenizer`)."""
    return _load(str(tokenizer_dir(source)), tokenizer_key(source))


@lru_cache(maxsize=8)
def _load(directory: str, key: str) -> JsonTokenizer:
    from tokenizers import Tokenizer

    path = Path(directory) / "tokenizer.json"
    if not path.is_file():
        raise FileNotFoundError(f"No tokenizer.json in {directory}.")
    config_path = Path(directory) / "tokenizer_config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else {}
    except ValueError:
        config = {}
    try:
        backend = Tokenizer.from_file(str(path))
    except Exception as exc:  # the Rust loader raises a bare Exception for a malformed file
        raise OSError(f"tokenizer.json in {directory} is not readable: {exc}") from None
    return JsonTokenizer(backend, config if isinstance(config, dict) else {})


def load_light_tokenizer(source: str) -> Any:
    """The tokenizer the web side uses: :func:`load_json_tokenizer`, or — only for a checkpoint that ships no
    ``tokenizer.json`` (a bare SentencePiece model, which only transformers can convert) — transformers'
    ``AutoTokenizer``, which imports torch into that process."""
    if has_tokenizer_json(source):
        return load_json_tokenizer(source)
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(source, local_files_only=True)

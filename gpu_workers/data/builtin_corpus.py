"""The demo corpus, built offline from text already on the machine.

Two sources with very different statistics, so that per-source questions (length mixtures, the
share of long documents) have something to bite on:

* ``code``  — the running interpreter's standard-library ``.py`` files;
* ``prose`` — English documentation under ``/usr/share/doc``, the common licences and man pages
  (gzip files are decompressed).

Documents are deduplicated by content hash and split train / held-out by that hash, so the split
does not depend on the order the filesystem lists files in.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PROSE_ROOTS = (Path("/usr/share/doc"), Path("/usr/share/common-licenses"), Path("/usr/share/man"))
MIN_CHARS = 200
MAX_CHARS = 400_000
HELDOUT_PERCENT = 3
SOURCES = ("code", "prose")
"""The source values :func:`iter_documents` gives its documents (what a dataset can pick a haystack from)."""


@dataclass(frozen=True)
class CorpusStats:
    train_docs: int
    heldout_docs: int
    chars_by_source: dict[str, int]


def _code_files() -> Iterator[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(stdlib.rglob("*.py")):
        parts = set(path.relative_to(stdlib).parts)
        if parts & {"site-packages", "dist-packages", "test", "tests", "idlelib"}:
            continue
        yield path


def _prose_files() -> Iterator[Path]:
    for root in PROSE_ROOTS:
        if not root.exists():
            continue
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink():
                yield path


def _read_text(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
        if path.suffix == ".gz":
            raw = gzip.decompress(raw)
        elif path.suffix in {".bz2", ".xz", ".zst", ".png", ".jpg", ".gif", ".pdf", ".zip"}:
            return None
    except (OSError, EOFError, gzip.BadGzipFile):
        return None
    if b"\x00" in raw[:4096]:
        return None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    if not MIN_CHARS <= len(text) <= MAX_CHARS:
        return None
    return text


def iter_documents() -> Iterator[dict[str, str]]:
    """Yield ``{"text", "source", "path"}`` for every usable, unique document on the machine."""
    seen: set[str] = set()
    for source, files in (("code", _code_files()), ("prose", _prose_files())):
        for path in files:
            text = _read_text(path)
            if text is None:
                continue
            digest = hashlib.sha1(text.encode("utf-8")).hexdigest()
            if digest in seen:
                continue
            seen.add(digest)
            yield {"text": text, "source": source, "path": str(path), "sha1": digest}


def is_heldout(sha1: str) -> bool:
    return int(sha1[:8], 16) % 100 < HELDOUT_PERCENT


def build(out_dir: Path) -> CorpusStats:
    """Write ``train.jsonl`` and ``heldout.jsonl`` under *out_dir* (idempotent: rewrites both).

    The temporary files carry the process id, so two processes building at once (a worker and a test run on a
    fresh checkout) each rename their own complete file into place instead of one renaming the other's away.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    chars: dict[str, int] = {}
    counts = {"train": 0, "heldout": 0}
    tmp = {split: out_dir / f"{split}.jsonl.{os.getpid()}.tmp" for split in counts}
    handles = {split: path.open("w", encoding="utf-8") for split, path in tmp.items()}
    try:
        for doc in iter_documents():
            split = "heldout" if is_heldout(doc["sha1"]) else "train"
            handles[split].write(json.dumps(doc, ensure_ascii=False) + "\n")
            counts[split] += 1
            chars[doc["source"]] = chars.get(doc["source"], 0) + len(doc["text"])
    finally:
        for handle in handles.values():
            handle.close()
    for split, path in tmp.items():
        path.replace(out_dir / f"{split}.jsonl")
    return CorpusStats(counts["train"], counts["heldout"], chars)


def ensure_built(out_dir: Path) -> Path:
    """Build the corpus once; later calls reuse the files."""
    if not (out_dir / "heldout.jsonl").exists() or not (out_dir / "train.jsonl").exists():
        build(out_dir)
    return out_dir


def read_jsonl(path: Path) -> Iterator[dict[str, str]]:
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if line.strip():
                yield json.loads(line)

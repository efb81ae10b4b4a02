"""Exported checkpoints on disk: where they live and how one streams out as a zip.

A run's export is a ``save_pretrained`` folder under ``<CONTEXTLAB_DATA_DIR>/exports/<run uuid>/``
(written by ``services.export_checkpoint``). Downloads zip that folder on the fly instead of keeping a
second, zipped copy: the archive is produced chunk by chunk (``zipfile`` writes to an unseekable
stream with data descriptors), so a multi-gigabyte checkpoint never sits in memory. Weights are stored
uncompressed (they barely compress and deflating them costs seconds per gigabyte); the small text files
are deflated.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from django.conf import settings
from django.http import Http404, StreamingHttpResponse

from experiments.csv_export import safe_filename

if TYPE_CHECKING:
    from experiments.models import Artifact, Run

CHECKPOINT = "checkpoint"
"""``Artifact.kind`` of an exported checkpoint."""
CHUNK = 1 << 20
STORED_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")


def exports_root() -> Path:
    return Path(settings.CONTEXTLAB_DATA_DIR) / "exports"


def export_dir(run_uuid: object) -> Path:
    return exports_root() / str(run_uuid)


def servable(path: str) -> Path | None:
    """The folder at *path* if it is an existing export under the exports root, else None.

    Artifact paths are plain strings in the database; only folders this app wrote are ever served.
    """
    folder = Path(path).resolve()
    root = exports_root().resolve()
    if folder.parent != root or not folder.is_dir():
        return None
    return folder


class _Sink(io.RawIOBase):
    """A write-only, unseekable file that collects what ``zipfile`` writes until it is drained."""

    def __init__(self) -> None:
        super().__init__()
        self._chunks: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: bytes) -> int:  # type: ignore[override]
        self._chunks.append(bytes(data))
        return len(data)

    def drain(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def zip_chunks(folder: Path, top: str) -> Iterator[bytes]:
    """The bytes of a zip of *folder*'s files, under one top-level directory *top*, in pieces."""
    sink = _Sink()
    with zipfile.ZipFile(sink, "w") as archive:
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo.from_file(path, f"{top}/{path.relative_to(folder).as_posix()}")
            info.compress_type = zipfile.ZIP_STORED if path.suffix in STORED_SUFFIXES else zipfile.ZIP_DEFLATED
            with path.open("rb") as source, archive.open(info, "w") as target:
                while block := source.read(CHUNK):
                    target.write(block)
                    yield sink.drain()
            yield sink.drain()
    yield sink.drain()


def zip_response(folder: Path, name: str) -> StreamingHttpResponse:
    """A streamed ``<name>.zip`` download whose single top-level folder is also called *name*."""
    stem = safe_filename(name, suffix="")
    response = StreamingHttpResponse((chunk for chunk in zip_chunks(folder, stem) if chunk),
                                     content_type="application/zip")
    response["Content-Disposition"] = f'attachment; filename="{stem}.zip"'
    return response


def download(run: Run, artifact: Artifact | None) -> StreamingHttpResponse:
    """*run*'s exported checkpoint as ``<experiment>-<method>.zip``; 404 when there is none to serve."""
    folder = servable(artifact.path) if artifact is not None else None
    if folder is None:
        raise Http404("This run has no exported checkpoint; export it first.")
    return zip_response(folder, f"{run.experiment.name}-{run.method.name}")

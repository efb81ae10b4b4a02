"""Replay one run outside Context Lab: the same pipeline the Celery worker runs, driven from a shell.

    python -m gpu_workers run --spec spec.json [--out measurements.jsonl] [--work-dir DIR]

``spec.json`` is ``RunSpec.to_json()``: what the run page's "spec.json" link downloads, or one written by
hand. Every measurement goes to stdout as one JSON line (the fields of
:class:`gpu_workers.reporter.Measurement`), so ``| jq`` and scripts read stdout and nothing else; progress,
log lines and artifact paths go to stderr. The spec's own ``work_dir`` names a directory on the Context Lab
server, so the replay writes its artifacts (searched factors, training checkpoints) under ``--work-dir``
instead, by default ``./contextlab-runs/<run_id>``; rerunning the same command resumes from it as a retried
run would.

Exit status: 0 done, 1 the run failed, 2 bad input (the file, its JSON, the spec), 130 stopped by Ctrl-C.
The first Ctrl-C asks the pipeline to stop at its next ``should_stop()`` check (within one forward pass);
a second one aborts at once.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from gpu_workers.reporter import Cancelled, Measurement
from gpu_workers.spec import RunSpec, SpecError

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANCELLED = 130
"""What a shell reports for a process ended by SIGINT, so scripts can tell a stop from a failure."""
DEFAULT_WORK_ROOT = Path("contextlab-runs")
DEVICES = ("auto", "cpu", "cuda")
"""What ``gpu_workers.device.place`` accepts; checked here so a typo fails before torch is imported."""


class BadInput(Exception):
    """The spec cannot be run as given; the message is the one line the user sees."""


def measurement_line(measurement: Measurement) -> str:
    """One measurement as one JSON line; ``Measurement(**json.loads(line))`` gives it back."""
    return json.dumps(asdict(measurement))


class JsonlReporter:
    """The ``Reporter`` protocol for a terminal: measurements as JSON lines, everything else on stderr.

    ``should_stop`` reads an event that the Ctrl-C handler sets, so a stop lands where the worker's
    cancel would land and the run ends through the pipeline's own ``Cancelled`` path.
    """

    def __init__(self, stdout: TextIO, stderr: TextIO, copy: TextIO | None = None,
                 stop: threading.Event | None = None) -> None:
        self.stdout = stdout
        self.stderr = stderr
        self.copy = copy
        self.stop = stop or threading.Event()
        self.measurements = 0
        self.artifacts: list[tuple[str, str]] = []
        self.protocol_facts: dict[str, Any] = {}

    def progress(self, fraction: float, message: str) -> None:
        self._err(f"[{fraction:4.0%}] {message}")

    def log(self, line: str) -> None:
        for part in str(line).splitlines() or [""]:
            self._err(part)

    def measurement(self, measurement: Measurement) -> None:
        line = measurement_line(measurement)
        for stream in (self.stdout, self.copy):
            if stream is not None:
                stream.write(line + "\n")
                stream.flush()  # a reader following the file sees each number as it lands
        self.measurements += 1

    def artifact(self, kind: str, path: str) -> None:
        self.artifacts.append((kind, path))
        self._err(f"artifact {kind}: {path}")

    def protocol(self, facts: dict[str, Any]) -> None:
        self.protocol_facts = facts
        self._err("protocol: " + json.dumps(facts.get("keys", {}), sort_keys=True))

    def should_stop(self) -> bool:
        return self.stop.is_set()

    def _err(self, text: str) -> None:
        self.stderr.write(text + "\n")
        self.stderr.flush()


def _field_error(exc: SpecError) -> str:
    return f"{exc.section}.{exc.field}: {exc}"


def load_spec(path: Path) -> RunSpec:
    """Read and validate a spec file, turning every way it can be wrong into one ``BadInput`` line."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise BadInput(f"spec file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise BadInput(f"cannot read spec file {path}: {exc}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise BadInput(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadInput(f"{path} must hold a JSON object (RunSpec.to_json()), not {type(data).__name__}")
    try:
        spec = RunSpec.from_json(data)
    except KeyError as exc:
        raise BadInput(f"invalid spec: missing field {exc}") from None
    except SpecError as exc:
        raise BadInput(f"invalid spec: {_field_error(exc)}") from None
    except (TypeError, ValueError) as exc:
        raise BadInput(f"invalid spec: {exc}") from None
    _check_method(spec)
    if spec.device not in DEVICES:
        raise BadInput(f"invalid spec: device must be one of {', '.join(DEVICES)}, not {spec.device!r}")
    return spec


def _check_method(spec: RunSpec) -> None:
    """The family is checked before any weights load; its parameters are checked against the model by ``load``."""
    from gpu_workers.methods import MethodError, get

    try:
        get(spec.method.family)
    except MethodError as exc:
        raise BadInput(f"invalid spec: method.{exc.field or 'family'}: {exc}") from None
    if not isinstance(spec.method.params, dict):
        raise BadInput("invalid spec: method.params must be a JSON object")


def prepare(spec: RunSpec, work_dir: Path | None, device: str | None, model_source: str | None) -> RunSpec:
    """The spec as this machine runs it: its own work directory, optionally another device or model path."""
    work = (work_dir or DEFAULT_WORK_ROOT / spec.run_id).resolve()
    changes: dict[str, Any] = {"work_dir": str(work)}
    if device:
        changes["device"] = device
    if model_source:
        changes["model_source"] = model_source
    return replace(spec, **changes)


@contextmanager
def stop_on_interrupt(stop: threading.Event, stderr: TextIO) -> Iterator[None]:
    """First Ctrl-C (or SIGTERM) sets *stop*; a second Ctrl-C raises KeyboardInterrupt to abort now."""

    def handler(signum: int, frame: FrameType | None) -> None:
        if stop.is_set() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        stop.set()
        stderr.write("stopping at the next check (Ctrl-C again to abort now)\n")
        stderr.flush()

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    return f" (at {frames[-1].filename}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""


def run_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO,
                execute: Callable[[RunSpec, JsonlReporter], None] | None = None) -> int:
    """``run``: validate, run the pipeline behind a JsonlReporter, and map how it ended to an exit status."""
    try:
        spec = prepare(load_spec(args.spec), args.work_dir, args.device, args.model_source)
        Path(spec.work_dir).mkdir(parents=True, exist_ok=True)
        copy = args.out.open("w", encoding="utf-8") if args.out else None
    except BadInput as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_BAD_INPUT
    except OSError as exc:
        stderr.write(f"error: {exc}\n")
        return EXIT_BAD_INPUT
    if execute is None:
        from gpu_workers import pipeline

        execute = pipeline.run
    reporter = JsonlReporter(stdout, stderr, copy)
    stderr.write(f"run {spec.run_id}: {spec.method.family} on {spec.model_source}; work dir {spec.work_dir}\n")
    try:
        with stop_on_interrupt(reporter.stop, stderr):
            execute(spec, reporter)
    except Cancelled:
        stderr.write(f"cancelled after {reporter.measurements} measurements\n")
        return EXIT_CANCELLED
    except KeyboardInterrupt:
        stderr.write(f"aborted after {reporter.measurements} measurements\n")
        return EXIT_CANCELLED
    except ValueError as exc:  # the ML side's named errors: model source, dataset, method parameters
        stderr.write(f"error: {type(exc).__name__}: {exc}\n")
        return EXIT_FAILED
    except Exception as exc:
        if args.traceback:
            traceback.print_exc(file=stderr)
        stderr.write(f"error: {type(exc).__name__}: {exc}{_where(exc)}\n")
        return EXIT_FAILED
    finally:
        if copy is not None:
            copy.close()
    where = f" to {args.out}" if args.out else ""
    stderr.write(f"done: {reporter.measurements} measurements{where}, {len(reporter.artifacts)} artifacts "
                 f"under {spec.work_dir}\n")
    return 0


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m gpu_workers", description="Context Lab's ML side from a shell.")
    commands = root.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("run", help="run one RunSpec and print its measurements as JSON lines",
                              description=__doc__.split("\n\n")[0])
    run.add_argument("--spec", type=Path, required=True, help="a RunSpec as JSON (the run page's spec.json)")
    run.add_argument("--out", type=Path, help="also write the measurements to this JSONL file")
    run.add_argument("--work-dir", "--artifacts", dest="work_dir", type=Path,
                     help=f"directory for artifacts, checkpoints and search state (default: "
                          f"{DEFAULT_WORK_ROOT}/<run_id>); the same directory resumes an interrupted run")
    run.add_argument("--device", choices=DEVICES, help="override the spec's device")
    run.add_argument("--model-source", help="override the spec's model path or Hugging Face id "
                                            "(a downloaded spec names the server's path)")
    run.add_argument("--traceback", action="store_true", help="print the traceback when the run fails")
    convert = commands.add_parser("convert-gguf", help="convert a GGUF file to a safetensors checkpoint, once",
                                  description="Prints the checkpoint directory on stdout; errors on stderr.")
    convert.add_argument("gguf", type=Path, help="the .gguf file")
    convert.add_argument("--root", type=Path, required=True, help="directory the checkpoint is written under")
    return root


def convert_command(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """Run by the web app in a subprocess, so de-quantising (torch, ~1 GB) never lands in a web process."""
    from gpu_workers.gguf_import import convert_gguf
    from gpu_workers.model_facts import ModelSourceError

    try:
        out = convert_gguf(args.gguf, args.root)
    except ModelSourceError as exc:
        print(f"error: {exc}", file=stderr)
        return 2
    print(out, file=stdout)
    return 0


def main(argv: list[str] | None = None, stdout: TextIO | None = None, stderr: TextIO | None = None) -> int:
    args = parser().parse_args(argv)
    out, err = stdout or sys.stdout, stderr or sys.stderr
    if args.command == "run":
        return run_command(args, out, err)
    if args.command == "convert-gguf":
        return convert_command(args, out, err)
    raise AssertionError(args.command)  # argparse refuses unknown commands

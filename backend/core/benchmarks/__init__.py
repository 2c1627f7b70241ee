"""Benchmarks as data: InternVL's evaluation-guide benchmarks (``catalog``), read from their
release layouts (``layouts``) and registered as a folder the evaluation program reads:
``benchmark.json`` (the card: prompt, tiling, generation settings, metrics, source, counts),
``samples.jsonl`` (the studio's evaluation records, prompts built) and ``images/`` (images that
the layout carried as base64). All or nothing: a layout with any problem leaves nothing."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from backend.core.benchmarks.catalog import CATALOG, Benchmark, get_benchmark
from backend.core.benchmarks.layouts import READERS, Images, Problems

__all__ = ["CATALOG", "Benchmark", "BenchmarkError", "get_benchmark", "load_registered", "register_benchmark"]

CARD = "benchmark.json"
SAMPLES = "samples.jsonl"


class BenchmarkError(ValueError):
    """A layout that cannot be registered: every problem, each with its file, line and field."""

    def __init__(self, message: str, problems: list[dict]) -> None:
        lines = [f"{p['file']}" + (f":{p['line']}" if p.get("line") else "") + (f" [{p['field']}]" if p.get("field")
                 else "") + f": {p['message']}" for p in problems]
        super().__init__(message + ("\n" + "\n".join(lines[:50]) if lines else ""))
        self.problems = problems


def register_benchmark(name: str, source: Path, dest_root: Path, *, replace: bool = False) -> dict:
    """Read benchmark ``name``'s release layout in ``source`` and write it registered under
    ``dest_root/name``; returns the card. Raises BenchmarkError (nothing written) on any problem."""
    bench = get_benchmark(name)
    source = Path(source).resolve()
    final = Path(dest_root) / name
    if final.exists() and not replace:
        raise BenchmarkError(f"benchmark {name!r} is already registered at {final}", [])
    if not source.is_dir():
        raise BenchmarkError(f"{source} is not a folder", [])
    staging = Path(dest_root) / f".staging-{name}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        problems = Problems(source)
        records = READERS[bench.layout](source, bench, Images(source, staging / "images", problems), problems)
        if not problems.items and not records:
            problems.add(source, None, None, "no samples found")
        if problems.items:
            raise BenchmarkError(f"cannot register {name!r} from {source}: {len(problems.items)} problem(s)",
                                 problems.items)
        with open(staging / SAMPLES, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        card = {**bench.card(), "source_dir": str(source), "samples": len(records),
                "images": sum(1 for _ in (staging / "images").glob("*")) if (staging / "images").is_dir() else 0}
        (staging / CARD).write_text(json.dumps(card, indent=2, ensure_ascii=False))
        if final.exists():
            shutil.rmtree(final)
        staging.rename(final)
        return card
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def load_registered(folder: Path) -> tuple[dict, Path]:
    """(card, samples path) of a registered benchmark folder."""
    folder = Path(folder)
    return json.loads((folder / CARD).read_text(encoding="utf-8")), folder / SAMPLES

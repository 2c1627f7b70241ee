"""Benchmark suites (issue 23, part 3): one evaluation runs several registered benchmarks
(InternVL's evaluation guide, ``backend.core.benchmarks``) for a base model and its fine-tunes,
each benchmark with its own prompt, tiling, generation settings and metrics, and shows one table
(rows: each benchmark's published figures, columns: the models; ``backend.core.suite``),
exportable as CSV or JSON.

A suite is an evaluation like any other (same request, queue, runtime, logs and results): its
``benchmarks`` column records the benchmarks resolved at submission (their cards' settings and
sample files), and the evaluation program runs them as parts, one after the other per model.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from backend.core.benchmarks import CATALOG
from backend.core.eval_spec import EvalPart, card_part
from backend.core.suite import POINTS, published, suite_table, table_csv, table_json
from backend.db.models import Evaluation
from backend.services.errors import Conflict, InvalidInput

#: what a suite records of each benchmark's card (the settings it runs with)
CARD_KEYS = ("name", "title", "dynamic", "max_num", "max_new_tokens", "min_new_tokens", "metrics", "samples",
             "source_dir")
FORMATS = {"csv": ("text/csv", table_csv), "json": ("application/json", table_json)}


def resolve_benchmarks(store: Path, names: Sequence[str]) -> dict[str, Any]:
    """Registered benchmark names -> ``{request, benchmarks: [card settings + folder, annotation],
    lines}``; InvalidInput lists every problem with its field (``benchmarks.K``)."""
    problems: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    if not names:
        problems.append({"field": "benchmarks", "message": "at least one registered benchmark (GET /api/benchmarks)"})
    for k, name in enumerate(names):
        field = f"benchmarks.{k}"
        folder = Path(store) / name
        if name not in CATALOG:
            problems.append({"field": field, "message": f"unknown benchmark {name!r}; known: {', '.join(CATALOG)}"})
        elif name in names[:k]:
            problems.append({"field": field, "message": f"benchmark {name!r} is named twice"})
        elif not (folder / "benchmark.json").is_file():
            problems.append({"field": field, "message": f"benchmark {name!r} is not registered: register it from "
                             "its release folder first (POST /api/benchmarks or `vlstudio benchmarks register`)"})
        else:
            card = json.loads((folder / "benchmark.json").read_text(encoding="utf-8"))
            rows.append({**{key: card.get(key) for key in CARD_KEYS}, "folder": str(folder),
                         "annotation": str(folder / "samples.jsonl")})
    if problems:
        raise InvalidInput("invalid benchmark suite", problems)
    return {"request": {"benchmarks": list(names)}, "benchmarks": rows, "lines": sum(r["samples"] or 0 for r in rows)}


def suite_parts(record: dict[str, Any]) -> list[EvalPart]:
    """The evaluation program's parts: each benchmark as recorded at submission."""
    return [card_part(b, b["folder"]) for b in record["benchmarks"]]


def _scored(ev: Evaluation) -> list[dict[str, Any]]:
    if not ev.summary:
        state = "has no scores yet" if not ev.status.finished else "ended without scores"
        raise Conflict(f"evaluation {ev.id} is {ev.status.value}: it {state} (the table is made of a finished "
                       "evaluation's scores)")
    return ev.summary


def table(ev: Evaluation) -> dict[str, Any]:
    """The suite table of a finished evaluation (a suite's benchmarks; a mixture's datasets; one
    split's row), each row with its values as stored and as published (percent for fractions;
    MME points and OCRBench counts as they are)."""
    t = suite_table(_scored(ev))
    titles = {b["name"]: b.get("title") for b in (ev.benchmarks or {}).get("benchmarks", [])}
    for r in t["rows"]:
        r["title"] = titles.get(r["benchmark"])
        r["unit"] = ("count" if r["figure"] == "ocrbench" else "points") if r["figure"] in POINTS else "percent"
        r["published"] = [published(r["figure"], v) for v in r["values"]]
    return {"evaluation_id": ev.id, "status": ev.status.value, **t}


def export(ev: Evaluation, fmt: str) -> tuple[str, str, str]:
    """(body, media type, file name) of the table as CSV or JSON (the stored values)."""
    if fmt not in FORMATS:
        raise InvalidInput("invalid format", [{"field": "format", "message": f"unknown format {fmt!r}; known: "
                                               f"{', '.join(FORMATS)}"}])
    media, write = FORMATS[fmt]
    return write(suite_table(_scored(ev))), media, f"evaluation-{ev.id}-table.{fmt}"


def request_problems(split: str, metrics: Sequence[str] | None, params: dict[str, Any]) -> list[dict[str, Any]]:
    """What a suite request may not set: each benchmark runs on its own samples, with its own
    metrics and generation lengths (the evaluation's tiling override and limit still apply)."""
    out = []
    if split != "validation":
        out.append({"field": "split", "message": "a benchmark suite runs each benchmark's own samples: leave split "
                    "out"})
    if metrics:
        out.append({"field": "metrics", "message": "each benchmark is scored with its own (official) metrics: leave "
                    "metrics out"})
    if "max_new_tokens" in params:
        out.append({"field": "params.max_new_tokens", "message": "each benchmark generates with its own lengths "
                    "(its card's min/max new tokens): leave max_new_tokens out"})
    return out

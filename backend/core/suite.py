"""The benchmark-suite table: one row per benchmark figure, one column per model, from an
evaluation's summary (``summary[m].datasets[].metrics``, one dataset per benchmark), and its
CSV/JSON exports. Values are the figures as stored (fractions for mean metrics, MME points,
OCRBench counts); ``published`` gives them in the units the benchmarks publish (percent for
fractions), as the UI shows them."""

from __future__ import annotations

import csv
import io
import json
from typing import Any

#: the figures a benchmark publishes, per metric, in order
HEADLINE: dict[str, tuple[str, ...]] = {
    "exact_match": ("exact_match",), "vqa_accuracy": ("vqa_accuracy",), "anls": ("anls",),
    "relaxed_accuracy": ("relaxed_accuracy",), "multiple_choice": ("multiple_choice",),
    "mmbench_circular": ("mmbench_circular",), "pope": ("pope_f1", "pope_accuracy"),
    "mme": ("mme_perception", "mme_cognition"), "ocrbench": ("ocrbench",),
}
#: figures not in [0, 1]: published as they are
POINTS = {"mme_perception", "mme_cognition", "mme_total", "ocrbench"}


def published(figure: str, value: float | None) -> float | None:
    if value is None:
        return None
    return value if figure in POINTS else 100.0 * value


def _figures(metrics: dict[str, float]) -> list[str]:
    """The headline figures present in a dataset's metrics, in the catalogue's order."""
    out = [f for names in HEADLINE.values() for f in names if f in metrics]
    return out or list(metrics)


def suite_table(summary: list[dict[str, Any]]) -> dict[str, Any]:
    """``{"models": [label], "rows": [{"benchmark", "figure", "n", "values": [per model]}]}``:
    rows in the order of the benchmarks, then their headline figures; a model that lacks a
    benchmark (an evaluation cut short) has None there."""
    models = [s["label"] for s in summary]
    benches: dict[str, dict[str, Any]] = {}
    for col, s in enumerate(summary):
        for d in s.get("datasets") or [{"name": "", "n": s.get("n"), "metrics": s.get("metrics", {})}]:
            b = benches.setdefault(d["name"], {"n": d.get("n"), "figures": [], "values": {}})
            for f in _figures(d.get("metrics", {})):
                if f not in b["figures"]:
                    b["figures"].append(f)
                b["values"][(f, col)] = d["metrics"][f]
    rows = [{"benchmark": name, "figure": f, "n": b["n"], "values": [b["values"].get((f, c)) for c in range(len(models))]}
            for name, b in benches.items() for f in b["figures"]]
    return {"models": models, "rows": rows}


def table_csv(table: dict[str, Any]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["benchmark", "figure", "samples", *table["models"]])
    for r in table["rows"]:
        w.writerow([r["benchmark"], r["figure"], r["n"], *("" if v is None else repr(v) for v in r["values"])])
    return buf.getvalue()


def table_json(table: dict[str, Any]) -> str:
    return json.dumps(table, indent=2, ensure_ascii=False)

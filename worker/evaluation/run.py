"""vlstudio's evaluation program: every model of the spec generates on every sample
(greedy, batched, dynamic tiling, the training template and pipeline), then it scores.

Run by the worker (the exact command is in the run folder's ``command.txt``)::

    python -m worker.evaluation.run --spec RUN/spec.json

Writes ``outputs.jsonl`` (one JSON line per model and sample, appended as batches finish,
so the worker streams them) and ``results.json`` (per model, per metric). It never touches
the database, Celery or the web stack.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
from pathlib import Path

from PIL import Image

from backend.core.eval_metrics import mean, score, summarise
from backend.core.eval_spec import EvaluationSpec, default_metrics, question_text, sample_meta, split_record
from backend.core.model_card import ModelCard, Tiling, layered_tiling
from backend.core.samples import image_paths

STOP_REQUESTED = False


def _on_sigterm(signum, frame):  # noqa: ARG001
    global STOP_REQUESTED
    STOP_REQUESTED = True


def load_records(annotation: str, limit: int | None) -> list[dict]:
    with open(annotation, encoding="utf-8-sig") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[:limit] if limit else records


def evaluate_model(gen, records: list[dict], root: Path, spec: EvaluationSpec, metrics: list[str],
                   model_index: int, out, first_index: int = 0, dataset: str = "",
                   max_new_tokens: int | None = None, min_new_tokens: int = 0) -> list[dict]:
    """Generate and score ``records`` (numbered from ``first_index``: a mixture's parts follow
    each other); rows carry ``dataset`` (the part's name) in a mixture evaluation."""
    rows: list[dict] = []
    where = f"{gen_label(spec, model_index)}" + (f" · {dataset}" if dataset else "")
    t0 = time.monotonic()
    for start in range(0, len(records), spec.batch_size):
        if STOP_REQUESTED:
            break
        batch, prompts, metas = records[start:start + spec.batch_size], [], []
        for k, rec in enumerate(batch):
            turns, answers, options = split_record(rec)
            images = []
            for rel in image_paths(rec):
                with Image.open(root / rel) as im:
                    images.append(im.convert("RGB"))
            prompts.append(gen.prompt(turns, images))
            metas.append((first_index + start + k, rec, turns, answers, options))
        preds = gen.generate(prompts, max_new_tokens=max_new_tokens or spec.max_new_tokens,
                             min_new_tokens=min_new_tokens)
        done = start + len(batch)
        # this model's rate on this part so far (images read, prompts built, generated; not its loading)
        rate = done / max(time.monotonic() - t0, 1e-9)
        for (index, rec, turns, answers, options), pred in zip(metas, preds, strict=True):
            meta = sample_meta(rec)
            row = {"model": model_index, "index": index, "id": str(rec.get("id", index)),
                   "question": question_text(turns), "answers": answers, "prediction": pred,
                   "scores": {m: score(m, pred, answers, options, meta) for m in metrics}, "meta": meta,
                   "samples_per_second": round(rate, 4)}
            if dataset:
                row["dataset"] = dataset
            rows.append(row)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        print(f"[{where}] {done}/{len(records)} samples | {rate:.2f} samples/s | "
              f"{metrics[0]} so far {mean([r['scores'][metrics[0]] for r in rows]):.3f}", flush=True)
    return rows


def trained_tiling(card: ModelCard | Tiling, trained: dict | None, max_dynamic_patch: int | None,
                   dynamic: bool | None = None) -> Tiling:
    """The model card's tiling (or ``card``, a tiling), then the one it was trained with, then the
    evaluation's (or a benchmark's) override."""
    return layered_tiling(card, ("trained", trained), ("override", {"max_dynamic_patch": max_dynamic_patch,
                                                                    "dynamic_image_size": dynamic}))[0]


def gen_label(spec: EvaluationSpec, i: int) -> str:
    return spec.models[i].label


def model_summary(label: str, rows: list[dict], metrics: list[str], parts: list[str],
                  part_metrics: dict[str, list[str]] | None = None) -> dict:
    """Per model: the metrics over every sample (a mixture's overall score is sample-weighted:
    each sample counts once, whatever its dataset) and, for a mixture, per dataset; a benchmark
    metric with categories (POPE, MME, OCRBench) adds them under ``breakdown``. Benchmarks each
    have their own metrics (``part_metrics``): their figures are per dataset only."""
    part_metrics = part_metrics or {}
    overall = [] if part_metrics else metrics
    figures, breakdown = summarise(overall, rows)
    out = {"label": label, "n": len(rows), "metrics": figures}
    if breakdown:
        out["breakdown"] = breakdown
    if any(parts):
        out["datasets"] = []
        for p in parts:
            mine = [r for r in rows if r.get("dataset") == p]
            figs, per = summarise(part_metrics.get(p, metrics), mine)
            out["datasets"].append({"name": p, "n": len(mine), "metrics": figs, **({"breakdown": per} if per else {})})
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    spec = EvaluationSpec.read(args.spec)
    out_dir = Path(spec.output_dir)
    parts = [(p, load_records(p.annotation, spec.limit)) for p in spec.data_parts()]
    records = [r for _, recs in parts for r in recs]
    metrics = spec.metrics or default_metrics(records)
    source = ", ".join(f"{p.name} ({len(recs)})" for p, recs in parts) if spec.parts else spec.annotation
    own = all(p.metrics for p, _ in parts)  # benchmarks: each scored with its own metrics
    print(f"evaluation {spec.evaluation_id}: {len(records)} samples from {source}; metrics "
          + ("each benchmark's own" if own else ", ".join(metrics)) + f"; {len(spec.models)} model(s)", flush=True)

    from worker.evaluation.generation import Generator

    summary = []
    with open(out_dir / "outputs.jsonl", "w", encoding="utf-8") as out:
        for i, m in enumerate(spec.models):
            gen = Generator(Path(m.path), template=m.template)
            rows: list[dict] = []
            for part, recs in parts:
                # the evaluation's override, then the dataset's own budget in the mixture (or the benchmark's)
                gen.tiling = trained_tiling(gen.card, m.tiling, spec.max_dynamic_patch or part.max_dynamic_patch,
                                            part.dynamic)
                new_tokens = part.max_new_tokens or spec.max_new_tokens
                print(f"model {i + 1}/{len(spec.models)}: {m.label} ({m.path})" + (f" on {part.name}" if part.name
                      else "") + f", template {gen.template.name}, tiling "
                      f"{'dynamic' if gen.tiling.dynamic_image_size else 'one tile'} max {gen.tiling.max_dynamic_patch} tiles, "
                      f"greedy, {part.min_new_tokens}-{new_tokens} new tokens", flush=True)
                rows += evaluate_model(gen, recs, Path(part.root), spec, part.metrics or metrics, i, out, len(rows),
                                       part.name, new_tokens, part.min_new_tokens)
                if STOP_REQUESTED:
                    break
            summary.append(model_summary(m.label, rows, metrics, [p.name for p, _ in parts],
                                         {p.name: p.metrics for p, _ in parts if p.metrics}))
            print(f"model {m.label}: " + ", ".join(f"{k} {v:.4f}" for k, v in summary[-1]["metrics"].items()),
                  flush=True)
            for d in summary[-1].get("datasets", []):
                print(f"model {m.label} on {d['name']} ({d['n']} samples): "
                      + ", ".join(f"{k} {v:.4f}" for k, v in d["metrics"].items()), flush=True)
            del gen
            if STOP_REQUESTED:
                print("stopped on request", flush=True)
                return 143
    (out_dir / "results.json").write_text(json.dumps({"metrics": metrics, "models": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

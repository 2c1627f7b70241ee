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

from backend.core.eval_metrics import mean, score
from backend.core.eval_spec import EvaluationSpec, default_metrics, question_text, split_record
from backend.core.samples import image_paths

STOP_REQUESTED = False


def _on_sigterm(signum, frame):  # noqa: ARG001
    global STOP_REQUESTED
    STOP_REQUESTED = True


def load_records(spec: EvaluationSpec) -> list[dict]:
    with open(spec.annotation, encoding="utf-8-sig") as f:
        records = [json.loads(line) for line in f if line.strip()]
    return records[: spec.limit] if spec.limit else records


def evaluate_model(gen, records: list[dict], root: Path, spec: EvaluationSpec, metrics: list[str],
                   model_index: int, out) -> list[dict]:
    rows: list[dict] = []
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
            metas.append((start + k, rec, turns, answers, options))
        preds = gen.generate(prompts, max_new_tokens=spec.max_new_tokens)
        for (index, rec, turns, answers, options), pred in zip(metas, preds, strict=True):
            row = {"model": model_index, "index": index, "id": str(rec.get("id", index)),
                   "question": question_text(turns), "answers": answers, "prediction": pred,
                   "scores": {m: score(m, pred, answers, options) for m in metrics}}
            rows.append(row)
            out.write(json.dumps(row, ensure_ascii=False) + "\n")
        out.flush()
        done = start + len(batch)
        rate = done / max(time.monotonic() - t0, 1e-9)
        print(f"[{gen_label(spec, model_index)}] {done}/{len(records)} samples | {rate:.1f} samples/s | "
              f"exact match so far {mean([r['scores'].get('exact_match', 0) for r in rows]):.3f}", flush=True)
    return rows


def trained_tiling(default, trained: dict | None, max_dynamic_patch: int | None):  # noqa: ANN001, ANN201
    """The model config's tiling, then the one it was trained with, then the evaluation's override."""
    from worker.evaluation.generation import Tiling

    t = trained or {}
    return Tiling(max_dynamic_patch=max_dynamic_patch or t.get("max_dynamic_patch", default.max_dynamic_patch),
                  min_dynamic_patch=t.get("min_dynamic_patch", default.min_dynamic_patch),
                  use_thumbnail=t.get("use_thumbnail", default.use_thumbnail),
                  dynamic=t.get("dynamic_image_size", default.dynamic))


def gen_label(spec: EvaluationSpec, i: int) -> str:
    return spec.models[i].label


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _on_sigterm)
    spec = EvaluationSpec.read(args.spec)
    out_dir = Path(spec.output_dir)
    records = load_records(spec)
    metrics = spec.metrics or default_metrics(records)
    print(f"evaluation {spec.evaluation_id}: {len(records)} samples from {spec.annotation}; "
          f"metrics {', '.join(metrics)}; {len(spec.models)} model(s)", flush=True)

    from worker.evaluation.generation import Generator

    summary = []
    with open(out_dir / "outputs.jsonl", "w", encoding="utf-8") as out:
        for i, m in enumerate(spec.models):
            gen = Generator(Path(m.path), template=m.template)
            gen.tiling = trained_tiling(gen.tiling, m.tiling, spec.max_dynamic_patch)
            print(f"model {i + 1}/{len(spec.models)}: {m.label} ({m.path}), template {gen.template.name}, "
                  f"tiling max {gen.tiling.max_dynamic_patch} tiles, greedy, max {spec.max_new_tokens} new tokens",
                  flush=True)
            rows = evaluate_model(gen, records, Path(spec.root), spec, metrics, i, out)
            values = {name: mean([r["scores"][name] for r in rows]) for name in metrics}
            summary.append({"label": m.label, "n": len(rows), "metrics": values})
            print(f"model {m.label}: " + ", ".join(f"{k} {v:.4f}" for k, v in values.items()), flush=True)
            del gen
            if STOP_REQUESTED:
                print("stopped on request", flush=True)
                return 143
    (out_dir / "results.json").write_text(json.dumps({"metrics": metrics, "models": summary}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

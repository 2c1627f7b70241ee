"""The evaluation-job spec: written resolved into the run folder by the worker, read by the
evaluation program (``python -m worker.evaluation.run --spec RUN/spec.json``)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from backend.core.samples import IMAGE_PLACEHOLDER, normalise_conversations


class EvalModel(BaseModel):
    label: str
    path: str
    template: str
    #: the tiling it was trained with (max_dynamic_patch, min_dynamic_patch, use_thumbnail,
    #: dynamic_image_size); None: the model's config
    tiling: dict | None = None


class EvalPart(BaseModel):
    """One dataset of a mixture evaluation: its held-out JSONL, image root and tile budget."""

    model_config = ConfigDict(extra="forbid")

    name: str
    annotation: str
    root: str
    #: the dataset's own ``max_dynamic_patch`` in the mixture (None: the model's tiling)
    max_dynamic_patch: int | None = None
    #: a registered benchmark's own settings (None: the evaluation's): dynamic tiling on or off,
    #: generation lengths, its metrics
    dynamic: bool | None = None
    max_new_tokens: int | None = None
    min_new_tokens: int = 0
    metrics: list[str] | None = None


class EvaluationSpec(BaseModel):
    """One dataset split (``annotation`` + ``root``) or, with ``parts``, a mixture's held-out
    parts, evaluated one after the other; ``limit`` applies to each part."""

    model_config = ConfigDict(extra="forbid")

    evaluation_id: int
    annotation: str = ""
    root: str = ""
    parts: list[EvalPart] = Field(default_factory=list, description="a mixture's parts (then annotation is unused)")
    output_dir: str
    models: list[EvalModel]
    metrics: list[str] = Field(default_factory=list, description="empty: chosen from the data")
    max_new_tokens: int = 32
    batch_size: int = 8
    max_dynamic_patch: int | None = None
    limit: int | None = None

    def data_parts(self) -> list[EvalPart]:
        """The parts to evaluate: the mixture's, or the one split (named ``""``)."""
        return self.parts or [EvalPart(name="", annotation=self.annotation, root=self.root)]

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.model_dump(mode="json"), indent=2))

    @classmethod
    def read(cls, path: Path) -> EvaluationSpec:
        return cls.model_validate_json(path.read_text())


def benchmark_part(folder: str | Path, name: str | None = None) -> EvalPart:
    """A registered benchmark (``backend.core.benchmarks``) as a part: its samples, its tiling,
    generation settings and metrics, as InternVL's evaluation guide runs it."""
    card = json.loads((Path(folder) / "benchmark.json").read_text(encoding="utf-8"))
    return card_part(card, folder, name)


def card_part(card: dict, folder: str | Path, name: str | None = None) -> EvalPart:
    """A benchmark's card (as registered, or as an evaluation recorded it) as a part."""
    return EvalPart(name=name or card["name"], annotation=str(Path(folder) / "samples.jsonl"), root=str(folder),
                    max_dynamic_patch=card["max_num"], dynamic=card["dynamic"], max_new_tokens=card["max_new_tokens"],
                    min_new_tokens=card["min_new_tokens"], metrics=list(card["metrics"]))


def default_metrics(records: list[dict]) -> list[str]:
    """Every text metric; multiple choice too when the records carry ``options``."""
    names = ["exact_match", "vqa_accuracy", "anls", "relaxed_accuracy"]
    if any(r.get("options") for r in records):
        names.append("multiple_choice")
    return names


def split_record(record: dict) -> tuple[list[dict], list[str], list[str] | None]:
    """(prompt turns, acceptable answers, options) of an evaluation record: the prompt is the
    conversation up to its last assistant turn, whose text is the reference answer unless the
    record lists ``answers`` (VQA-style, several human answers)."""
    convs = normalise_conversations(record)
    last = max((i for i, t in enumerate(convs) if t.get("from") == "gpt"), default=None)
    if last is None:
        raise ValueError(f"record {record.get('id')!r} has no assistant turn to compare with")
    answers = record.get("answers") or [convs[last]["value"]]
    return convs[:last], [str(a) for a in answers], record.get("options")


def sample_meta(record: dict) -> dict:
    """What a benchmark's scoring reads besides the answers: ``category`` (POPE's category, MME's
    subtask, OCRBench's category), ``image`` (MME's acc+ pairs the questions of an image),
    ``group`` and ``main`` (MMBench's circular groups: the rotations of one question)."""
    meta: dict = {}
    if record.get("category") is not None:
        meta["category"] = str(record["category"])
    image = record.get("image")
    if image:
        meta["image"] = image if isinstance(image, str) else "|".join(image)
    if record.get("group") is not None:
        meta["group"] = record["group"]
        meta["main"] = bool(record.get("main", True))
    return meta


def question_text(prompt: list[dict]) -> str:
    human = [t["value"] for t in prompt if t.get("from") == "human"]
    return human[-1].replace(IMAGE_PLACEHOLDER, "").strip() if human else ""

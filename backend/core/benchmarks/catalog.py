"""The benchmarks of InternVL's evaluation guide, as data: where each one's files are in its
release layout, how its prompt is built, its tiling, generation settings and metrics.

Sources (the values are theirs; ``tests/eval/test_benchmarks.py`` checks the prompts and the
generation settings against the scripts' own outputs, ``tests/data/reference/benchmarks``):
OpenGVLab/InternVL ``internvl_chat/eval/`` at 2410d1dbf208f0e799459aff9376e5747dbf41a2
(``vqa/evaluate_vqa.py``, ``mmbench/evaluate_mmbench.py``, ``scienceqa/evaluate_scienceqa.py``,
``seed/evaluate_seed.py``, ``pope/evaluate_pope.py``, ``mme/eval.py``; the guide's commands
run them with ``--dynamic`` and the default ``--max-num 6``), and for OCRBench, which InternVL
evaluates with VLMEvalKit, open-compass/VLMEvalKit at e8e78f05f3080fe28154f2130321f17951c3be94
(``vlmeval/vlm/internvl/internvl_chat.py``: its prompt, ``max_num`` 24 and ``max_new_tokens`` 4096).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

SHORT = "Answer the question using a single word or phrase."
LETTER = "Answer with the option's letter from the given choices directly."
LETTER_CN = "请直接回答选项字母。"
InternVL = "OpenGVLab/InternVL@2410d1db internvl_chat/eval/"


@dataclass(frozen=True)
class Benchmark:
    name: str
    title: str
    #: the reader of its release layout (``backend.core.benchmarks.layouts``)
    layout: str
    #: the files the layout reads, relative to the benchmark's folder (the guide's names)
    files: dict[str, str]
    metrics: tuple[str, ...]
    max_new_tokens: int
    min_new_tokens: int = 1
    #: dynamic tiling and its tile budget (the guide: ``--dynamic``, ``--max-num 6``)
    dynamic: bool = True
    max_num: int = 6
    #: text added to the question, and what joins them (the scripts differ)
    suffix: str = SHORT
    joiner: str = " "
    source: str = ""
    extra: dict = field(default_factory=dict)

    def card(self) -> dict:
        return asdict(self)


def _vqa(name: str, title: str, test: str, metrics: tuple[str, ...], max_new_tokens: int,
         annotation: str | None = None, suffix: str = SHORT) -> Benchmark:
    files = {"questions": test} | ({"annotations": annotation} if annotation else {})
    return Benchmark(name, title, "vqa_jsonl" if not annotation else "vqa_jsonl_annotations", files, metrics,
                     max_new_tokens, suffix=suffix, source=InternVL + "vqa/evaluate_vqa.py")


CATALOG: dict[str, Benchmark] = {b.name: b for b in [
    _vqa("vqav2_val", "VQAv2 val", "vqav2_val.jsonl", ("vqa_accuracy",), 10,
         "v2_mscoco_val2014_annotations.json"),
    _vqa("textvqa_val", "TextVQA val", "textvqa_val.jsonl", ("vqa_accuracy",), 10, "textvqa_val_annotations.json"),
    _vqa("docvqa_val", "DocVQA val", "val.jsonl", ("anls",), 100),
    _vqa("infovqa_val", "InfoVQA val", "val.jsonl", ("anls",), 100),
    _vqa("chartqa_test_human", "ChartQA test (human)", "test_human.jsonl", ("relaxed_accuracy",), 100),
    _vqa("chartqa_test_augmented", "ChartQA test (augmented)", "test_augmented.jsonl", ("relaxed_accuracy",), 100),
    # the question of InternVL's AI2D file carries its options and instruction: no suffix
    _vqa("ai2d_test", "AI2D test", "test_vlmevalkit.jsonl", ("multiple_choice",), 10, suffix=""),
    Benchmark("mmbench_dev_en", "MMBench dev (en)", "mmbench_tsv", {"questions": "mmbench_dev_20230712.tsv"},
              ("multiple_choice", "mmbench_circular"), 100, suffix=LETTER, joiner="\n",
              source=InternVL + "mmbench/evaluate_mmbench.py"),
    Benchmark("mmbench_dev_cn", "MMBench dev (cn)", "mmbench_tsv", {"questions": "mmbench_dev_cn_20231003.tsv"},
              ("multiple_choice", "mmbench_circular"), 100, suffix=LETTER_CN, joiner="\n",
              source=InternVL + "mmbench/evaluate_mmbench.py"),
    Benchmark("scienceqa_test", "ScienceQA test (image)", "scienceqa_jsonl", {"questions": "scienceqa_test_img.jsonl"},
              ("multiple_choice",), 100, suffix=LETTER, joiner="\n", source=InternVL + "scienceqa/evaluate_scienceqa.py"),
    # seed.jsonl's text carries the options and the instruction
    Benchmark("seed_image", "SEED-Bench (image)", "seed_jsonl", {"questions": "seed.jsonl"}, ("multiple_choice",), 100,
              suffix="", source=InternVL + "seed/evaluate_seed.py"),
    Benchmark("pope", "POPE (COCO)", "pope", {"questions": "llava_pope_test.jsonl", "labels": "coco",
                                               "images": "val2014"},
              ("pope",), 100, source=InternVL + "pope/evaluate_pope.py"),
    Benchmark("mme", "MME", "mme_folders", {"root": "MME_Benchmark_release_version"}, ("mme",), 20,
              min_new_tokens=0, source=InternVL + "mme/eval.py"),
    Benchmark("ocrbench", "OCRBench", "ocrbench_tsv", {"questions": "OCRBench.tsv"}, ("ocrbench",), 4096,
              min_new_tokens=0, max_num=24, joiner="\n",
              source="open-compass/VLMEvalKit@e8e78f05 vlmeval/vlm/internvl/internvl_chat.py"),
]}


def get_benchmark(name: str) -> Benchmark:
    if name not in CATALOG:
        raise KeyError(f"unknown benchmark {name!r}; known: {', '.join(CATALOG)}")
    return CATALOG[name]

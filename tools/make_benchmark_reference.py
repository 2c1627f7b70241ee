"""Generate tests/data/reference/benchmarks/prompts.json: the prompts and generation settings of
InternVL's evaluation-guide scripts, run on the tiny benchmarks of tests/eval/benchmark_layouts.py.

References (from git clones, ``git show COMMIT:PATH``; nothing of them is copied here):
OpenGVLab/InternVL at 2410d1dbf208f0e799459aff9376e5747dbf41a2, ``internvl_chat/eval/``: the dataset
classes of ``vqa/evaluate_vqa.py`` (``VQADataset``, with the prompt its ``evaluate_chat_model``
picks per dataset), ``mmbench/evaluate_mmbench.py`` (``MMBenchDataset``), ``scienceqa/
evaluate_scienceqa.py`` (``ScienceQADataset``), ``seed/evaluate_seed.py`` (``MultipleChoiceDataset``),
``pope/evaluate_pope.py`` (``VQADataset``), ``mme/eval.py`` (its ``prompt`` and
``question + ' ' + prompt``), and each script's ``ds_collections`` (max/min new tokens);
open-compass/VLMEvalKit at e8e78f05f3080fe28154f2130321f17951c3be94, ``vlmeval/vlm/internvl/
internvl_chat.py`` (``InternVLChat.build_prompt`` for OCRBench).

The classes' ``__getitem__`` run unchanged, with the image transforms stubbed (identity: only the
question is kept). Run in the side environment of tools/make_eval_reference.py (plus pillow)::

    /work/side/evalref/venv/bin/python tools/make_benchmark_reference.py tests/data/reference/benchmarks \\
        --internvl /work/.mirror/OpenGVLab+InternVL/repo --vlmevalkit /work/.mirror/open-compass+VLMEvalKit/repo
"""

from __future__ import annotations

import argparse
import ast
import base64
import json
import os
import sys
import tempfile
import types
from io import BytesIO
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "eval"))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchmark_layouts import LAYOUTS, write_all  # noqa: E402
from make_eval_reference import COMMITS, REPOS, functions, git_show  # noqa: E402


def classes(source: str, names: list[str], ns: dict) -> dict:
    tree = ast.parse(source)
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name in names:
            node.bases = []
            exec(compile(ast.Module(body=[node], type_ignores=[]), node.name, "exec"), ns)  # noqa: S102
    return ns


def literal(source: str, name: str):  # noqa: ANN201
    """The value of a module-level assignment ``name = {...}`` (or inside ``if __name__``)."""
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == name for t in node.targets):
            try:
                return ast.literal_eval(node.value)
            except ValueError:
                continue
    raise SystemExit(f"{name} not found")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--internvl", type=Path, required=True)
    p.add_argument("--vlmevalkit", type=Path, required=True)
    a = p.parse_args()
    a.out = a.out.resolve()
    import pandas as pd
    from PIL import Image

    iv = lambda f: git_show(a.internvl, COMMITS["internvl"], "internvl_chat/eval/" + f)  # noqa: E731
    torch = types.SimpleNamespace(stack=lambda xs: xs, utils=types.SimpleNamespace(
        data=types.SimpleNamespace(Dataset=object)))
    ns = {"json": json, "os": os, "random": __import__("random"), "pd": pd, "Image": Image, "base64": base64,
          "BytesIO": BytesIO, "torch": torch, "build_transform": lambda **k: (lambda im: im),
          "dynamic_preprocess": lambda image, **k: [image]}
    out: dict = {"generated_by": "tools/make_benchmark_reference.py",
                 "references": {k: {"repository": REPOS[k], "commit": COMMITS[k]} for k in ("internvl", "vlmevalkit")},
                 "prompts": {}, "generation": {}}
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        write_all(base)
        os.chdir(base)  # the scripts open data/... from InternVL's internvl_chat/ folder
        vqa_src = iv("vqa/evaluate_vqa.py")
        vqa = classes(vqa_src, ["VQADataset"], dict(ns))["VQADataset"]
        coll = literal(vqa_src, "ds_collections")
        # evaluate_chat_model: the prompt per dataset name
        base_prompt = "Answer the question using a single word or phrase."
        for name, ds, prompt in (("textvqa_val", "textvqa_val", base_prompt), ("docvqa_val", "docvqa_val", base_prompt),
                                 ("ai2d_test", "ai2diagram_test", "")):
            test = {"textvqa_val": "data/textvqa/textvqa_val.jsonl", "docvqa_val": "data/docvqa/val.jsonl",
                    "ai2d_test": "data/ai2diagram/test_vlmevalkit.jsonl"}[name]
            d = vqa(train=None, test=test, prompt=prompt, few_shot=0)
            out["prompts"][name] = {str(d[i]["question_id"]): d[i]["question"] for i in range(len(d))}
            out["generation"][name] = {"max_new_tokens": coll[ds]["max_new_tokens"], "min_new_tokens": 1}
        for key, ds in (("docvqa_val", "docvqa_val"), ("infovqa_val", "infographicsvqa_val"),
                        ("chartqa_test_human", "chartqa_test_human"), ("chartqa_test_augmented", "chartqa_test_augmented"),
                        ("vqav2_val", "vqav2_val"), ("ai2d_test", "ai2diagram_test")):
            out["generation"][key] = {"max_new_tokens": coll[ds]["max_new_tokens"], "min_new_tokens": 1}

        mmb_src = iv("mmbench/evaluate_mmbench.py")
        mmb = classes(mmb_src, ["MMBenchDataset"], dict(ns))["MMBenchDataset"]
        prompt = literal(mmb_src, "prompt")
        d = mmb(root="data/mmbench/mmbench_dev_20230712.tsv", prompt=prompt, language="en")
        out["prompts"]["mmbench_dev_en"] = {str(d[i]["index"]): d[i]["question"] for i in range(len(d))}
        c = literal(mmb_src, "ds_collections")["mmbench_dev_20230712"]
        out["generation"]["mmbench_dev_en"] = {k: c[k] for k in ("max_new_tokens", "min_new_tokens")}
        c = literal(mmb_src, "ds_collections")["mmbench_dev_cn_20231003"]
        out["generation"]["mmbench_dev_cn"] = {k: c[k] for k in ("max_new_tokens", "min_new_tokens")}

        sqa_src = iv("scienceqa/evaluate_scienceqa.py")
        sqa = classes(sqa_src, ["ScienceQADataset"], dict(ns))["ScienceQADataset"]
        d = sqa(root="data/scienceqa/scienceqa_test_img.jsonl",
                prompt="Answer with the option's letter from the given choices directly.")
        out["prompts"]["scienceqa_test"] = {str(i + 1): d[i]["question"] for i in range(len(d))}
        c = literal(sqa_src, "ds_collections")["sqa_test"]
        out["generation"]["scienceqa_test"] = {k: c[k] for k in ("max_new_tokens", "min_new_tokens")}

        seed_src = iv("seed/evaluate_seed.py")
        seed = classes(seed_src, ["MultipleChoiceDataset"], dict(ns))["MultipleChoiceDataset"]
        d = seed(root="data/SEED/", annotation="data/SEED/seed.jsonl")
        out["prompts"]["seed_image"] = {str(d[i]["index"]): d[i]["question"] for i in range(len(d))}
        c = literal(seed_src, "ds_collections")["SEEDv1"]
        out["generation"]["seed_image"] = {k: c[k] for k in ("max_new_tokens", "min_new_tokens")}

        pope_src = iv("pope/evaluate_pope.py")
        pope = classes(pope_src, ["VQADataset"], dict(ns))["VQADataset"]
        c = literal(pope_src, "ds_collections")["pope"]
        d = pope(root=c["root"], data=c["question"], prompt=base_prompt)
        out["prompts"]["pope"] = {str(d[i]["question_id"]): d[i]["question"] for i in range(len(d))}
        out["generation"]["pope"] = {k: c[k] for k in ("max_new_tokens", "min_new_tokens")}

        mme_src = iv("mme/eval.py")
        mme_prompt = literal(mme_src, "prompt")
        mme = {}
        root = Path("data/mme/MME_Benchmark_release_version")
        for txt in sorted(root.rglob("*.txt")):
            task = txt.relative_to(root).parts[0]
            for n, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
                question = line.split("\t")[0]
                mme[f"{task}/{txt.stem}/{n}"] = question + " " + mme_prompt  # eval.py's join
        out["prompts"]["mme"] = mme
        gen = [n for n in ast.walk(ast.parse(mme_src)) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "dict"
               and any(k.arg == "max_new_tokens" for k in n.keywords)][0]
        out["generation"]["mme"] = {"max_new_tokens": next(ast.literal_eval(k.value) for k in gen.keywords
                                                           if k.arg == "max_new_tokens"), "min_new_tokens": 0}

        vk_src = git_show(a.vlmevalkit, COMMITS["vlmevalkit"], "vlmeval/vlm/internvl/internvl_chat.py")
        fns = functions(vk_src, ["build_prompt", "set_max_num"], {
            "os": os, "listinstr": lambda lst, s: any(x in s for x in lst), "DATASET_TYPE": lambda d: "VQA",
            "DATASET_MODALITY": lambda d: "IMAGE"}, cls="InternVLChat")
        me = types.SimpleNamespace(use_mpo_prompt=False, use_custom_prompt=lambda d: True,
                                   dump_image=lambda line, d: ["x.png"])
        df = pd.read_csv("data/OCRBench/OCRBench.tsv", sep="\t")
        out["prompts"]["ocrbench"] = {str(r["index"]): fns["build_prompt"](me, r, "OCRBench")[0]["value"]
                                      for _, r in df.iterrows()}
        fns["set_max_num"](me, "OCRBench")
        out["generation"]["ocrbench"] = {"max_num": me.max_num}
    a.out.mkdir(parents=True, exist_ok=True)
    (a.out / "prompts.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    print({k: len(v) for k, v in out["prompts"].items()}, LAYOUTS.keys() - out["prompts"].keys())


if __name__ == "__main__":
    main()

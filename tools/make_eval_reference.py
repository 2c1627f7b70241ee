"""Generate the reference data of tests/eval/test_metrics_reference.py: the hard cases of
``tools/eval_corpus.py`` scored by the benchmarks' own scoring code.

References (loaded at run time from git clones with ``git show COMMIT:PATH``; nothing of them is
copied into the repository, only the scores they produce):

- OpenGVLab/InternVL at 2410d1dbf208f0e799459aff9376e5747dbf41a2, ``internvl_chat/eval/``:
  ``vqa/textvqa_eval.py`` (``EvalAIAnswerProcessor``, ``TextVQAAccuracyEvaluator``: VQAv2/TextVQA
  accuracy), ``vqa/infographicsvqa_eval.py`` (``evaluate_method``: the DocVQA/InfoVQA ANLS script),
  ``vqa/evaluate_vqa.py`` (``evaluate_relaxed_accuracy``, ChartQA, and its ``relaxed_correctness``),
  ``pope/eval_pope.py`` (``eval_pope``), ``mme/eval.py`` (``post_processing``) and
  ``mme/calculation.py`` (``calculate_metrics``).
- google-research/pix2struct at 945f27e936c9464d9d7c133f1bd1f4f383be9e99, ``pix2struct/metrics.py``
  (``relaxed_correctness``, the ChartQA definition with the target first).
- open-compass/VLMEvalKit at e8e78f05f3080fe28154f2130321f17951c3be94: ``vlmeval/utils/matching_util.py``
  (``can_infer``: rule-based option extraction), ``vlmeval/dataset/utils/multiple_choice.py``
  (``mcq_circular_eval`` with the ``exact_matching`` policy: MMBench's circular evaluation),
  ``vlmeval/dataset/image_vqa.py`` (``OCRBench.evaluate``).

Run it in a side environment (python 3.11+, ``pip install pandas numpy scikit-learn tqdm``), never in
vlstudio's; the git directories are those the search tool's ``fetch`` brings, or any clone::

    /work/side/evalref/venv/bin/python tools/make_eval_reference.py tests/data/reference/eval_metrics \\
        --internvl /work/.mirror/OpenGVLab+InternVL/repo --vlmevalkit /work/.mirror/open-compass+VLMEvalKit/repo \\
        --pix2struct /work/.mirror/google-research+pix2struct/repo

Stubs: VLMEvalKit's modules import its whole package (API clients, hub downloads); the functions
above are taken out of their files with ``ast`` and run in a namespace that gives them what they
use (pandas, ``can_infer``; ``load``/``dump`` of its file cache as in-memory identity; a logger).
Their bodies run unchanged.
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import io
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from eval_corpus import FAMILIES, MME_TASKS  # noqa: E402

COMMITS = {"internvl": "2410d1dbf208f0e799459aff9376e5747dbf41a2",
           "vlmevalkit": "e8e78f05f3080fe28154f2130321f17951c3be94",
           "pix2struct": "945f27e936c9464d9d7c133f1bd1f4f383be9e99"}
REPOS = {"internvl": "OpenGVLab/InternVL", "vlmevalkit": "open-compass/VLMEvalKit",
         "pix2struct": "google-research/pix2struct"}


def git_show(repo: Path, commit: str, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"{commit}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def load_module(name: str, source: str) -> types.ModuleType:
    mod = types.ModuleType(name)
    exec(compile(source, name, "exec"), mod.__dict__)  # noqa: S102 - the reference code, by design
    return mod


def functions(source: str, names: list[str], namespace: dict, cls: str | None = None) -> dict:
    """Take the named top-level functions (or methods of ``cls``) out of a file and define them in
    ``namespace`` (their own code, unchanged)."""
    tree = ast.parse(source)
    body = tree.body
    if cls:
        body = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == cls).body
    found = [n for n in body if isinstance(n, ast.FunctionDef) and n.name in names]
    missing = set(names) - {n.name for n in found}
    if missing:
        raise SystemExit(f"not found in the reference: {sorted(missing)}")
    for node in found:
        node.decorator_list = []
        exec(compile(ast.Module(body=[node], type_ignores=[]), node.name, "exec"), namespace)  # noqa: S102
    return namespace


class References:
    def __init__(self, internvl: Path, vlmevalkit: Path, pix2struct: Path) -> None:
        import numpy as np
        import pandas as pd
        from tqdm import tqdm

        iv = lambda p: git_show(internvl, COMMITS["internvl"], "internvl_chat/eval/" + p)  # noqa: E731
        vk = lambda p: git_show(vlmevalkit, COMMITS["vlmevalkit"], p)  # noqa: E731
        self.textvqa = load_module("textvqa_eval", iv("vqa/textvqa_eval.py"))
        self.infovqa = load_module("infographicsvqa_eval", iv("vqa/infographicsvqa_eval.py"))
        from typing import Optional
        self.vqa_fns = functions(iv("vqa/evaluate_vqa.py"), ["relaxed_correctness", "evaluate_relaxed_accuracy"],
                             {"Optional": Optional})
        self.pix = functions(git_show(pix2struct, COMMITS["pix2struct"], "pix2struct/metrics.py"),
                             ["relaxed_correctness"], {"Optional": Optional})
        self.pope = load_module("eval_pope", iv("pope/eval_pope.py"))
        self.mme_post = functions(iv("mme/eval.py"), ["post_processing"], {"re": re})["post_processing"]
        self.mme_calc = load_module("mme_calculation", iv("mme/calculation.py"))
        # VLMEvalKit: can_infer with a stand-in for its logger module
        log = types.ModuleType("vlmeval.smp.log")
        log.get_logger = logging.getLogger
        for name, mod in (("vlmeval", types.ModuleType("vlmeval")), ("vlmeval.smp", types.ModuleType("vlmeval.smp")),
                          ("vlmeval.smp.log", log)):
            sys.modules[name] = mod
        self.matching = load_module("matching_util", vk("vlmeval/utils/matching_util.py"))
        store: dict = {}  # its file cache, in memory
        ns = {"pd": pd, "np": np, "string": __import__("string"), "can_infer": self.matching.can_infer,
              "can_infer_lego": self.matching.can_infer_lego, "logger": logging.getLogger("vlmevalkit"),
              "istype": lambda s, t: isinstance(s, t) or (t is int and isinstance(s, np.integer)),
              "osp": os.path, "dump": lambda data, path: store.__setitem__(path, data),
              "load": lambda path: store[path],
              "get_pred_file_format": lambda: "pkl", "timestr": lambda: "0", "rd": __import__("random"),
              "track_progress_rich": None, "cn_string": lambda s: bool(re.search("[\u4e00-\u9fff]", s))}
        self.mcq = functions(vk("vlmeval/dataset/utils/multiple_choice.py"),
                             ["build_choices", "prefetch_answer", "prefetch_circular_group", "mcq_circular_eval"], ns)
        self._frames: dict = {}
        ocr_ns = {"load": lambda path: self._frames[path], "dump": lambda data, path: None, "tqdm": tqdm,
                  "get_intermediate_file_path": lambda *a, **k: "/dev/null"}
        self.ocrbench = functions(vk("vlmeval/dataset/image_vqa.py"), ["evaluate"], ocr_ns, cls="OCRBench")["evaluate"]
        self.pd = pd

    # ----------------------------------------------------------------------------- per family
    def vqa(self, case: dict) -> dict:
        ev = self.textvqa.TextVQAAccuracyEvaluator()
        acc = ev.eval_pred_list([{"pred_answer": case["prediction"], "gt_answers": case["answers"]}], disable_tqdm=True)
        proc = self.textvqa.EvalAIAnswerProcessor()
        return {"accuracy": acc, "processed": proc(case["prediction"]),
                "answers_processed": [proc(a) for a in case["answers"]]}

    def anls_all(self, cases: list[dict]) -> dict[str, float]:
        gt = {"dataset_name": "corpus", "data": [{"questionId": i, "question": c["id"], "answers": c["answers"]}
                                                for i, c in enumerate(cases)]}
        sub = [{"questionId": i, "answer": c["prediction"]} for i, c in enumerate(cases)]
        with tempfile.TemporaryDirectory() as d:
            g, s = Path(d) / "gt.json", Path(d) / "sub.json"
            g.write_text(json.dumps(gt))
            s.write_text(json.dumps(sub))
            args = argparse.Namespace(answer_types=False, anls_threshold=0.5)
            self.infovqa.validate_data(str(g), str(s))
            res = self.infovqa.evaluate_method(str(g), str(s), args)
        return {c["id"]: res["per_sample_result"][str(i)]["score"] for i, c in enumerate(cases)}

    def relaxed(self, case: dict) -> dict:
        entry = {"answer": case["prediction"], "annotation": list(case["answers"])}
        internvl = self.vqa_fns["evaluate_relaxed_accuracy"]([entry])
        published = max(self.pix["relaxed_correctness"](a, case["prediction"].strip()) for a in case["answers"])
        return {"internvl": float(internvl), "published": float(published)}

    def choice(self, case: dict) -> dict:
        got = self.matching.can_infer(case["prediction"], dict(case["options"]))
        return {"vlmevalkit": got if got else None}

    def circular_hits(self, groups: list[dict]) -> dict[int, int]:
        """``mcq_circular_eval`` over every group at once: the hit of each question it counts."""
        pd = self.pd
        rows = [{"index": r["index"], "question": "q", "prediction": r["prediction"], "answer": r["answer"],
                 **r["options"]} for g in groups for r in g["rows"]]
        data = pd.DataFrame(rows)
        meta = data[["index", "answer", "question"]].copy()
        out = self.mcq["mcq_circular_eval"](None, data.copy(), meta, 1, "/nonexistent/result.pkl", "MMBench_DEV_EN")
        return {int(i): int(h) for i, h in zip(out["index"], out["hit"], strict=True)}

    def pope_run(self, run: dict) -> dict:
        per_cat = {}
        for cat in ("adversarial", "popular", "random"):
            rows = [r for r in run["rows"] if r["category"] == cat]
            answers = [{"text": r["prediction"]} for r in rows]
            with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
                f.write("".join(json.dumps({"label": r["label"]}) + "\n" for r in rows))
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                f1 = self.pope.eval_pope(answers, f.name)
            os.unlink(f.name)
            printed = dict(re.findall(r"^(Accuracy|Precision|Recall|Yes ratio): (.*)$", buf.getvalue(), re.M))
            per_cat[cat] = {"f1": f1, "accuracy": float(printed["Accuracy"]), "precision": float(printed["Precision"]),
                            "recall": float(printed["Recall"]), "yes_ratio": float(printed["Yes ratio"]),
                            "parsed": [a["text"] for a in answers]}
        f1s = [per_cat[c]["f1"] for c in ("adversarial", "popular", "random")]
        return {"categories": per_cat, "f1": sum(f1s) / len(f1s)}

    def mme_run(self, run: dict) -> dict:
        """InternVL's eval.py writes ``img\\tquestion\\tgt\\tresponse`` lines per subtask (its
        ``post_processing`` applied to the reply); calculation.py scores the folder."""
        with tempfile.TemporaryDirectory() as d:
            for task in MME_TASKS:
                with open(Path(d) / f"{task}.txt", "w", encoding="utf-8") as f:
                    for r in (r for r in run["rows"] if r["category"] == task):
                        print(r["image"], "question", r["label"], self.mme_post(r["prediction"]), sep="\t", file=f)
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                self.mme_calc.calculate_metrics().process_result(d)
        text = buf.getvalue()
        totals = [float(x) for x in re.findall(r"^total score: (.*) $", text, re.M)]
        tasks = {name: float(v) for name, v in re.findall(r"^\t (\S+)  score: (.*)$", text, re.M)}
        calc = self.mme_calc.calculate_metrics()
        parsed = [calc.parse_pred_ans(self.mme_post(r["prediction"]).lower()) for r in run["rows"]]
        return {"perception": totals[0], "cognition": totals[1], "tasks": tasks, "parsed": parsed}

    def ocrbench_rows(self, rows: list[dict]) -> dict:
        pd = self.pd

        def score(rs: list[dict]) -> dict:
            frame = pd.DataFrame([{"prediction": r["prediction"], "answer": repr(r["answers"]),
                                   "category": r["category"]} for r in rs])
            self._frames["f"] = frame
            return self.ocrbench(None, "f")  # a classmethod: its cls is unused

        hits = {}
        for r in rows:
            res = score([r])
            hits[r["id"]] = int(res["Final Score"])
        return {"hits": hits, "scores": score(rows)}


def write_reference(out: Path, refs: References) -> None:
    out.mkdir(parents=True, exist_ok=True)
    header = {"generated_by": "tools/make_eval_reference.py",
              "references": {k: {"repository": REPOS[k], "commit": COMMITS[k]} for k in COMMITS}}
    for family, make in FAMILIES.items():
        cases = make()
        if family == "anls":
            scores = refs.anls_all(cases)
            for c in cases:
                c["reference"] = {"docvqa": scores[c["id"]]}
        elif family == "circular":
            hits = refs.circular_hits(cases)
            for c in cases:
                main = [r["index"] for r in c["rows"] if r["index"] < 1_000_000]
                c["reference"] = {"hit": hits[main[0]] if main else None}
            header_extra = {"accuracy": sum(hits.values()) / len(hits)}
        elif family == "ocrbench":
            res = refs.ocrbench_rows(cases)
            for c in cases:
                c["reference"] = {"hit": res["hits"][c["id"]]}
            header_extra = {"scores": res["scores"]}
        else:
            fn = {"vqa": refs.vqa, "relaxed": refs.relaxed, "choice": refs.choice,
                  "pope": refs.pope_run, "mme": refs.mme_run}[family]
            for c in cases:
                c["reference"] = fn(c)
        doc = {**header, "family": family, "cases": cases}
        if family in ("ocrbench", "circular"):
            doc.update(header_extra)
        (out / f"{family}.json").write_text(json.dumps(doc, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        print(f"{family}: {len(cases)} cases", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--internvl", type=Path, required=True, help="git directory of an OpenGVLab/InternVL clone")
    p.add_argument("--vlmevalkit", type=Path, required=True, help="git directory of an open-compass/VLMEvalKit clone")
    p.add_argument("--pix2struct", type=Path, required=True, help="git directory of a google-research/pix2struct clone")
    a = p.parse_args()
    write_reference(a.out, References(a.internvl, a.vlmevalkit, a.pix2struct))


if __name__ == "__main__":
    main()

"""Generate the reference data of tests/worker/test_reference_equality.py: token ids and labels
made by InternVL's own code, with its pinned transformers, on tiny local tokenizers.

Reference: OpenGVLab/InternVL at commit 2410d1dbf208f0e799459aff9376e5747dbf41a2
(``internvl_chat/internvl/train/dataset.py``: ``preprocess_internlm``, ``preprocess_mpt``,
``preprocess_phi3``, ``preprocess_internvl2_5``; ``internvl_chat/internvl/conversation.py``;
``internvl_chat/internvl/model/internlm2/tokenization_internlm2.py``, the InternLM2 remote-code
tokenizer) and transformers 4.37.2 (its ``LlamaTokenizer`` with ``legacy=False`` is Phi-3's
tokenizer, its ``Qwen2Tokenizer`` Qwen2's). No reference code is copied into the repository:
this script loads it at run time from a clone, and only its output is committed.

Two stages, in two environments::

    # 1. the original-format tokenizer folders, trained locally (vlstudio's venv)
    .venv/bin/python tools/reference_preprocess.py folders tests/data/reference
    # 2. the reference's outputs (a side venv: pip install transformers==4.37.2 sentencepiece
    #    protobuf, plus torch, numpy and pillow), from a clone of InternVL at the commit above
    /work/side/i12/venv/bin/python tools/reference_preprocess.py reference tests/data/reference \\
        --internvl /path/to/InternVL.git

Stage 2 writes ``reference.json``: for each tokenizer, the ids of probe texts (special tokens
followed by words, digits, CJK, tabs, newlines and space runs); for each template, the
conversations (single and multi-turn, multi-image, pure text, whitespace, truncation) with the
ids and labels of the reference's preprocess function.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import types
from pathlib import Path

TOKENS_PER_TILE = 4  # small image spans keep the data small; the code paths are those of 256
COMMIT = "2410d1dbf208f0e799459aff9376e5747dbf41a2"
REPO = Path(__file__).resolve().parents[1]
#: template -> (tokenizer folder, reference preprocess function)
TEMPLATES = {"internlm2-chat": ("internlm2", "preprocess_internlm"), "Hermes-2": ("qwen2", "preprocess_mpt"),
             "phi3-chat": ("phi3", "preprocess_phi3"), "internvl2_5": ("qwen2", "preprocess_internvl2_5"),
             "internvl2_5@internlm2": ("internlm2", "preprocess_internvl2_5"),
             # InternLM2 once more with sentencepiece's dummy prefix off: the reference's token counting
             # then agrees with its own ids, so its labels can be compared too
             "internlm2-chat@nodummy": ("internlm2_nodummy", "preprocess_internlm")}
BODY = "Two  spaces,\ttab\t\tand 中文字符 mixed with 12345 and 3.14\n   indented line  "
PROBE_WORDS = ["\n", "word", " space", "\t", "  two", "中文", "123", "\n\n", "x y", "   run"]


def h(text: str) -> dict:
    return {"from": "human", "value": text}


def g(text: str) -> dict:
    return {"from": "gpt", "value": text}


#: (name, conversations, tiles per image (None: pure text), max length (< 0: that many tokens less than
#: the whole sample) or None)
CASES = [
    ("single", [h("What is in the image?"), g("A red square.")], [1], None),
    ("single_tag", [h("<image>\nDescribe it."), g("It is blue.")], [2], None),
    ("multi_turn", [h("What colour?"), g("Red."), h("And the shape?"), g("A square, 4 sides."),
                    h("Sure?"), g("Yes")], [1], None),
    ("multi_image", [h("Image-1: <image>\nImage-2: <image>\nCompare them."), g("The first is larger.")], [2, 1],
     None),
    ("pure_text", [h("Count to five."), g("1 2 3 4 5")], None, None),
    ("whitespace", [h("  Leading and trailing spaces  \n"), g("\n  An answer with spaces.  \n\n"),
                    h("\tTabbed\tquestion\t"), g("中文 回答 \t ok ")], None, None),
    ("body", [h("<image>\n" + BODY), g(BODY)], [1], None),
    # truncated to 6 tokens less than the whole, so the cut falls in the last reply
    ("truncated", [h("Please describe the picture in detail."), g("The picture shows a red square on a "
                                                                  "white page with a thin black border.")],
     [1], -6),
]
SYSTEM_CASE = ("system", [{"from": "system", "value": "You are a careful assistant."}, h("Hi <image>"),
                          g("Hello.")], [1], None)


# ----------------------------------------------------------------------------- stage 1: folders
def write_folders(out: Path) -> None:
    sys.path.insert(0, str(REPO / "tests" / "worker"))
    from convert_helpers import write_bpe_tokenizer, write_sentencepiece_tokenizer

    for family, write in (("internlm2", write_sentencepiece_tokenizer), ("phi3", write_sentencepiece_tokenizer),
                          ("qwen2", write_bpe_tokenizer)):
        folder = out / "tokenizers" / family
        folder.mkdir(parents=True, exist_ok=True)
        write(folder, family)
    from sentencepiece import sentencepiece_model_pb2

    nodummy = out / "tokenizers" / "internlm2_nodummy"
    nodummy.mkdir(parents=True, exist_ok=True)
    write_sentencepiece_tokenizer(nodummy, "internlm2")
    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString((nodummy / "tokenizer.model").read_bytes())
    proto.normalizer_spec.add_dummy_prefix = False
    (nodummy / "tokenizer.model").write_bytes(proto.SerializeToString())


# ----------------------------------------------------------------------------- stage 2: reference
def git_show(repo: Path, path: str) -> str:
    return subprocess.run(["git", "--git-dir", str(repo), "show", f"{COMMIT}:{path}"], check=True,
                          capture_output=True, text=True).stdout


def load_reference(repo: Path) -> types.SimpleNamespace:
    """The reference modules, loaded from the clone at COMMIT; the video/image-decoding modules that
    dataset.py imports but preprocessing never uses are stubbed."""
    for name in ("cv2", "imageio", "decord", "torchvision", "torchvision.transforms",
                 "torchvision.transforms.functional"):
        stub = types.ModuleType(name)
        stub.VideoReader = stub.InterpolationMode = object
        sys.modules.setdefault(name, stub)
    sys.modules["torchvision"].transforms = sys.modules["torchvision.transforms"]
    mods = {}
    for name, path in (("internvl", None), ("internvl.train", None), ("internvl.model", None),
                       ("internvl.model.internlm2", None),
                       ("internvl.conversation", "internvl_chat/internvl/conversation.py"),
                       ("internvl.train.constants", "internvl_chat/internvl/train/constants.py"),
                       ("internvl.train.dataset", "internvl_chat/internvl/train/dataset.py"),
                       ("internvl.model.internlm2.tokenization_internlm2",
                        "internvl_chat/internvl/model/internlm2/tokenization_internlm2.py")):
        mod = types.ModuleType(name)
        mod.__package__ = name if path is None else name.rpartition(".")[0]
        mod.__path__ = []
        sys.modules[name] = mod
        if path is not None:
            exec(compile(git_show(repo, path), f"{COMMIT[:8]}:{path}", "exec"), mod.__dict__)  # noqa: S102
        mods[name.rpartition(".")[2]] = mod
    return types.SimpleNamespace(**mods)


def original_tokenizers(ref, folders: Path) -> dict:
    from transformers import LlamaTokenizer, Qwen2Tokenizer

    return {"internlm2": ref.tokenization_internlm2.InternLM2Tokenizer.from_pretrained(folders / "internlm2"),
            "phi3": LlamaTokenizer.from_pretrained(folders / "phi3", legacy=False),
            "qwen2": Qwen2Tokenizer.from_pretrained(folders / "qwen2"),
            "internlm2_nodummy": ref.tokenization_internlm2.InternLM2Tokenizer.from_pretrained(
                folders / "internlm2_nodummy")}


def probes(tok) -> list[str]:
    specials = [t for t in tok.added_tokens_encoder if t not in ("<unk>",)]
    texts = ["Hello world", " leading space", "  two leading", "\tleading tab", "\nleading newline", BODY,
             "中文开头", "42 is a number", "".join(f"{s}{w}" for s, w in zip(specials * 2, PROBE_WORDS * 3,
                                                                             strict=False))]
    for s in specials:
        texts += [f"{s}\n{BODY}{s} after{s}\tafter{s}   after{s}数字42", f"word{s}", f"{s}{s}x"]
    texts.append("<img>" + "<IMG_CONTEXT>" * 3 + "</img>\nDescribe   this.\t")
    return texts


def run_case(ref, fn_name: str, template: str, tok, case) -> dict:
    name, convs, tiles, max_len = case
    if max_len is not None and max_len < 0:
        whole = preprocess(ref, fn_name, template, tok, (name, convs, tiles, None))
        max_len = len(whole[0]) + max_len
    ids, labels = preprocess(ref, fn_name, template, tok, (name, convs, tiles, max_len))
    return {"name": name, "conversations": convs, "tiles": tiles, "tokens_per_tile": TOKENS_PER_TILE,
            "max_length": max_len, "input_ids": ids, "labels": labels}


def preprocess(ref, fn_name: str, template: str, tok, case) -> tuple[list[int], list[int]]:
    import copy

    name, convs, tiles, max_len = case
    convs = copy.deepcopy(convs)
    tokens_per_tile = TOKENS_PER_TILE
    if tiles is not None and len(tiles) == 1 and "<image>" not in convs[0]["value"] and convs[0]["from"] == "human":
        convs[0]["value"] = "<image>\n" + convs[0]["value"]  # the dataset's rule, before preprocessing
    saved = tok.model_max_length
    tok.model_max_length = max_len or 100_000
    try:
        out = getattr(ref.dataset, fn_name)(
            template.split("@")[0], [copy.deepcopy(convs)], tok,
            [tokens_per_tile * t for t in tiles or []], text_only=tiles is None, group_by_length=True,
            ds_name=name, num_image=len(tiles or []))
    finally:
        tok.model_max_length = saved
    return out["input_ids"][0].tolist(), out["labels"][0].tolist()


def write_reference(out: Path, repo: Path) -> None:
    import transformers

    ref = load_reference(repo)
    toks = original_tokenizers(ref, out / "tokenizers")
    data: dict = {"commit": COMMIT, "transformers": transformers.__version__, "tokenizers": {}, "templates": {}}
    for family, tok in toks.items():
        data["tokenizers"][family] = [{"text": t, "ids": tok(t, add_special_tokens=False).input_ids,
                                       "ids_with_special": tok(t).input_ids} for t in probes(tok)]
    for template, (family, fn) in TEMPLATES.items():
        cases = CASES + ([SYSTEM_CASE] if fn == "preprocess_internvl2_5" else [])
        data["templates"][template] = {"tokenizer": family, "function": fn,
                                       "cases": [run_case(ref, fn, template, toks[family], c) for c in cases]}
    (out / "reference.json").write_text(json.dumps(data, ensure_ascii=False, separators=(",", ":")) + "\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("stage", choices=["folders", "reference"])
    p.add_argument("out", type=Path)
    p.add_argument("--internvl", type=Path, help="git directory of an InternVL clone holding COMMIT")
    a = p.parse_args()
    if a.stage == "folders":
        write_folders(a.out)
    else:
        write_reference(a.out, a.internvl)


if __name__ == "__main__":
    main()

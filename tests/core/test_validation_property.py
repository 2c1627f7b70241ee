"""Property: a valid generated dataset always validates clean, with the recipe's tile counts."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

from conftest import image_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from backend.core.tiling import max_patches_per_image, plan_tiles
from backend.core.validation import ValidationSettings, validate_annotation

SIZES = [(64, 48), (448, 448), (1000, 500), (300, 900), (1920, 1080), (33, 700)]
PNGS = [image_bytes(w, h) for w, h in SIZES]
WORDS = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="<>\r\x00",
                                       exclude_categories=("Cs", "Cc", "Zl", "Zp")), min_size=1, max_size=30)
TEXT = WORDS.filter(lambda s: s.strip())


@st.composite
def records(draw, n_images: int) -> dict:
    rounds = draw(st.integers(1, 3))
    n = draw(st.integers(0, 3))
    images = draw(st.lists(st.integers(0, n_images - 1), min_size=n, max_size=n))
    convs = []
    for k in range(rounds):
        q = draw(TEXT)
        if k == 0 and n > 1:
            q = "<image>\n" * n + q
        elif k == 0 and n == 1 and draw(st.booleans()):
            q = "<image>\n" + q
        convs += [{"from": "human", "value": q}, {"from": "gpt", "value": draw(TEXT)}]
    if draw(st.booleans()):
        convs.insert(0, {"from": "system", "value": draw(TEXT)})
    rec: dict = {"conversations": convs}
    if n == 1:
        rec["image"] = f"img/{images[0]}.png"
    elif n > 1:
        rec["image"] = [f"img/{i}.png" for i in images]
    return rec


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records(len(SIZES)), min_size=1, max_size=12), st.integers(1, 12),
       st.sampled_from(["\n", "\r\n"]))
def test_valid_generated_dataset_is_clean(recs, max_patch, newline):
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "img").mkdir()
        for k, data in enumerate(PNGS):
            (root / "img" / f"{k}.png").write_bytes(data)
        lines = []
        for i, rec in enumerate(recs):
            rec = {"id": f"s{i}", **rec}
            rec["conversations"][-1]["value"] += f" #{i}"  # no two samples are exact duplicates
            lines.append(json.dumps(rec, ensure_ascii=bool(i % 2)))
        ann = root / "t.jsonl"
        ann.write_bytes("".join(x + newline for x in lines).encode("utf-8"))
        rows = root / "rows.jsonl"
        r = validate_annotation(ann, root, workers=1, per_sample_out=rows,
                                settings=ValidationSettings(max_dynamic_patch=max_patch))
        assert r.ok, r.errors
        assert r.total("warning") == 0, r.warnings
        assert set(code for _, code in r.counts) <= {"image_tag_added", "crlf"}
        assert r.samples == len(recs)
        for rec, row in zip(recs, (json.loads(x) for x in rows.read_text().splitlines()), strict=True):
            paths = rec.get("image", [])
            paths = [paths] if isinstance(paths, str) else paths
            budget = max_patches_per_image(max_patch, len(paths))
            expected = [plan_tiles(*SIZES[int(p.split("/")[1][:-4])], max_num=budget).num_tiles for p in paths]
            assert row["tiles"] == expected

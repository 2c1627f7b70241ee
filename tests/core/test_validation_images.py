"""Image rules: path inside the root, file present, decodable, not a decompression bomb."""

from __future__ import annotations

import io
import os
import random
import struct
import zlib
from pathlib import Path

import pytest
from conftest import image_bytes, sample, write_jsonl
from PIL import Image

from backend.core.images import ImageProblem, check_image, resolve_image
from backend.core.samples import SampleError
from backend.core.validation import ValidationSettings, resolve_inside, validate_annotation


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims width x height with a tiny (wrong) IDAT: enough to test the
    size guard without allocating the pixels."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16)) + chunk(b"IEND", b"")


def check(tmp_path: Path, files: dict[str, bytes], image, **settings):
    (tmp_path / "root").mkdir(exist_ok=True)
    for name, data in files.items():
        p = tmp_path / "root" / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    ann = write_jsonl(tmp_path / "root" / "t.jsonl", [sample(1, image=image)])
    return validate_annotation(ann, tmp_path / "root", workers=1, settings=ValidationSettings(**settings))


def only_error(report) -> tuple[str, str]:
    (issue,) = report.errors
    return issue.code, issue.message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP", "BMP", "GIF"])
def test_good_images_pass_and_record_size(tmp_path, fmt):
    r = check(tmp_path, {"x.img": image_bytes(321, 123, fmt)}, "x.img")
    assert r.ok and r.stats.min_wh == (321, 123)


def test_missing_image(tmp_path):
    r = check(tmp_path, {}, "nope.png")
    assert only_error(r) == ("image_missing", "image 'nope.png' not found")


def test_directory_instead_of_image(tmp_path):
    (tmp_path / "root" / "dir.png").mkdir(parents=True)
    assert only_error(check(tmp_path, {}, "dir.png"))[0] == "image_missing"


def test_non_image_with_image_extension(tmp_path):
    code, msg = only_error(check(tmp_path, {"fake.jpg": b"<html>not an image</html>"}, "fake.jpg"))
    assert code == "image_unreadable" and "not an image" in msg


@pytest.mark.parametrize("fmt, keep", [("PNG", 0.6), ("JPEG", 0.6), ("PNG", 0.95)])
def test_truncated_image(tmp_path, fmt, keep):
    img = Image.frombytes("RGB", (300, 200), random.Random(0).randbytes(300 * 200 * 3))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    data = buf.getvalue()
    code, msg = only_error(check(tmp_path, {"t.img": data[: int(len(data) * keep)]}, "t.img"))
    assert code == "image_unreadable" and "corrupt or truncated" in msg


def test_jpeg_with_trailing_garbage_is_fine(tmp_path):
    assert check(tmp_path, {"g.jpg": image_bytes(100, 80, "JPEG") + b"trailing bytes"}, "g.jpg").ok


def test_full_decode_catches_corrupt_pixels(tmp_path):
    data = bytearray(image_bytes(200, 200, "JPEG"))
    data[400:1400] = b"\xff" * 1000  # wreck the scan data, keep the EOI marker
    files = {"c.jpg": bytes(data)}
    assert only_error(check(tmp_path, files, "c.jpg", full_decode=True))[0] == "image_unreadable"


def test_decompression_bomb_30000_square(tmp_path):
    code, msg = only_error(check(tmp_path, {"huge.png": png_header_only(30000, 30000)}, "huge.png"))
    assert code == "image_too_large" and "900000000 pixels" in msg


def test_pixel_limit_is_a_setting(tmp_path):
    files = {"a.png": image_bytes(100, 100)}
    assert check(tmp_path, files, "a.png", max_image_pixels=10_000).ok
    assert only_error(check(tmp_path, files, "a.png", max_image_pixels=9_999))[0] == "image_too_large"


def test_dotdot_escape(tmp_path):
    (tmp_path / "secret.png").write_bytes(image_bytes())
    code, msg = only_error(check(tmp_path, {}, "../secret.png"))
    assert code == "image_path" and "'..'" in msg


def test_absolute_path_outside_root(tmp_path):
    (tmp_path / "secret.png").write_bytes(image_bytes())
    code, msg = only_error(check(tmp_path, {}, str(tmp_path / "secret.png")))
    assert code == "image_path" and "absolute" in msg


def test_absolute_path_inside_root_is_accepted(tmp_path):
    r = check(tmp_path, {"in.png": image_bytes()}, str(tmp_path / "root" / "in.png"))
    assert r.ok


def test_symlink_pointing_outside_the_root(tmp_path):
    (tmp_path / "secret.png").write_bytes(image_bytes())
    (tmp_path / "root").mkdir()
    os.symlink(tmp_path / "secret.png", tmp_path / "root" / "link.png")
    code, msg = only_error(check(tmp_path, {}, "link.png"))
    assert code == "image_path" and "symbolic link" in msg


def test_symlink_inside_the_root_is_fine(tmp_path):
    (tmp_path / "root" / "real").mkdir(parents=True)
    (tmp_path / "root" / "real" / "a.png").write_bytes(image_bytes())
    os.symlink(tmp_path / "root" / "real" / "a.png", tmp_path / "root" / "alias.png")
    assert check(tmp_path, {}, "alias.png").ok


def test_multi_image_reports_the_bad_one(tmp_path):
    r = check(tmp_path, {"a.png": image_bytes()}, ["a.png", "b.png"])
    assert r.counts[("error", "image_tags")] == 1  # sample() has one tag for two images
    ann = write_jsonl(tmp_path / "root" / "t.jsonl", [sample(1, image=["a.png", "b.png"], question="<image><image>")])
    r = validate_annotation(ann, tmp_path / "root", workers=1)
    assert only_error(r) == ("image_missing", "image 'b.png' not found")


def test_resolve_helpers(tmp_path):
    (tmp_path / "x").mkdir()
    assert resolve_inside(tmp_path, "x/y.png") == (tmp_path / "x" / "y.png").resolve()
    with pytest.raises(SampleError):
        resolve_inside(tmp_path / "x", "../y.png")
    with pytest.raises(ImageProblem):
        resolve_image(str(tmp_path.resolve()), "")
    with pytest.raises(ImageProblem) as e:
        check_image(str(tmp_path / "missing.png"), "missing.png")
    assert e.value.code == "image_missing"

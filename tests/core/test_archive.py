"""Safe zip extraction: every refusal leaves nothing behind."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from backend.core.archive import ArchiveError, extract_zip, find_annotations


def make_zip(path: Path, entries, compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for e in entries:
            if isinstance(e, zipfile.ZipInfo):
                zf.writestr(e, b"target")
            else:
                zf.writestr(*e)
    return path


def refused(tmp_path: Path, src: Path, fragment: str, **kw) -> None:
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError) as e:
        extract_zip(src, dest, **kw)
    assert fragment in str(e.value), str(e.value)
    assert not dest.exists()


def test_extracts_files_and_skips_macos_junk(tmp_path):
    src = make_zip(tmp_path / "a.zip", [("images/a.png", b"png"), ("t.jsonl", b"{}\n"), ("__MACOSX/._t.jsonl", b"x"),
                                        ("dir/", b"")])
    files = extract_zip(src, tmp_path / "out")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in files) == ["images/a.png", "t.jsonl"]
    assert (tmp_path / "out" / "images" / "a.png").read_bytes() == b"png"
    assert find_annotations(tmp_path / "out") == [tmp_path / "out" / "t.jsonl"]


def test_empty_file_and_not_a_zip(tmp_path):
    (tmp_path / "e.zip").write_bytes(b"")
    refused(tmp_path, tmp_path / "e.zip", "empty")
    (tmp_path / "n.zip").write_bytes(b"PK but not really a zip" * 10)
    refused(tmp_path, tmp_path / "n.zip", "not a zip")
    refused(tmp_path, tmp_path / "missing.zip", "not found")


@pytest.mark.parametrize("name", ["../evil.txt", "a/../../evil.txt", "/etc/evil", "\\\\server\\evil",
                                  "C:/evil.txt", "..\\evil.txt"])
def test_zip_slip(tmp_path, name):
    refused(tmp_path, make_zip(tmp_path / "s.zip", [("ok.txt", b"ok"), (name, b"evil")]), "zip slip")
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_entry(tmp_path):
    info = zipfile.ZipInfo("link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    refused(tmp_path, make_zip(tmp_path / "l.zip", [info]), "symbolic link")


def test_duplicate_entries(tmp_path):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name
        src = make_zip(tmp_path / "d.zip", [("a.txt", b"1"), ("a.txt", b"2")])
    refused(tmp_path, src, "appears twice")


def test_zip_bomb_by_ratio(tmp_path):
    refused(tmp_path, make_zip(tmp_path / "b.zip", [("zeros.bin", b"\0" * (8 << 20))]), "zip bomb")


def test_total_size_limit(tmp_path):
    src = make_zip(tmp_path / "t.zip", [("a.bin", b"x" * 1000), ("b.bin", b"y" * 1000)], zipfile.ZIP_STORED)
    refused(tmp_path, src, "more than 1,500 bytes", max_total_bytes=1500)
    extract_zip(src, tmp_path / "ok", max_total_bytes=2000)


def test_too_many_entries(tmp_path):
    src = make_zip(tmp_path / "m.zip", [(f"{k}.txt", b"") for k in range(5)])
    refused(tmp_path, src, "more than the limit of 3", max_files=3)


def test_declared_size_that_lies(tmp_path):
    """An entry whose central directory understates its size is stopped at the declared size."""
    src = make_zip(tmp_path / "lie.zip", [("a.bin", b"A" * 5000)], zipfile.ZIP_STORED)
    data = bytearray(src.read_bytes())
    cd = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, cd + 24, 100)  # uncompressed size in the central directory
    src.write_bytes(bytes(data))
    dest = tmp_path / "out"
    with pytest.raises(ArchiveError):
        extract_zip(src, dest)
    assert not dest.exists()


def test_corrupt_data(tmp_path):
    src = make_zip(tmp_path / "c.zip", [("a.txt", b"hello world " * 100)], zipfile.ZIP_STORED)
    data = bytearray(src.read_bytes())
    at = data.find(b"hello world")
    data[at:at + 5] = b"XXXXX"  # CRC mismatch
    src.write_bytes(bytes(data))
    refused(tmp_path, src, "corrupt")


def test_dest_must_not_exist(tmp_path):
    src = make_zip(tmp_path / "a.zip", [("a.txt", b"1")])
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError):
        extract_zip(src, tmp_path / "out")


def test_find_annotations_ignores_hidden(tmp_path):
    for rel in ["a.jsonl", "sub/b.jsonl", ".hidden/c.jsonl", "__MACOSX/d.jsonl", "sub/._e.jsonl", "x.json"]:
        p = tmp_path / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("{}")
    assert [p.relative_to(tmp_path).as_posix() for p in find_annotations(tmp_path)] == ["a.jsonl", "sub/b.jsonl"]


# ---------------------------------------------------------------- issue 18: bombs of many entries
def test_bomb_of_one_mib_entries_is_refused_before_anything_is_written(tmp_path):
    """Every entry is 1 MiB of zeros (each just under the per-entry ratio check's floor); the
    archive as a whole unpacks ~1000:1."""
    src = make_zip(tmp_path / "bomb.zip", [(f"z/{i}.bin", bytes(2**20)) for i in range(64)])
    assert src.stat().st_size < 2**20
    refused(tmp_path, src, "zip bomb?", display_name="holiday.zip")
    refused(tmp_path, src, "holiday.zip: 64 entries unpack to 67,108,864 bytes", display_name="holiday.zip")


def _many_empty_entries(path: Path, n: int) -> Path:
    """A valid zip64 archive of ``n`` empty entries, written directly (zipfile takes minutes)."""
    names = [f"e{i}".encode() for i in range(n)]
    local, central, offset = bytearray(), bytearray(), 0
    for nm in names:
        central += struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 20, 20, 0, 0, 0, 0, 0, 0, 0, len(nm), 0, 0, 0, 0, 0,
                               offset) + nm
        entry = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0, 0, 0, 0, len(nm), 0) + nm
        local += entry
        offset += len(entry)
    z64 = len(local) + len(central)
    tail = (struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, n, n, len(central), len(local))
            + struct.pack("<IIQI", 0x07064B50, 0, z64, 1)
            + struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 0xFFFF, 0xFFFF, len(central), len(local), 0))
    path.write_bytes(bytes(local + central + tail))
    return path


def test_two_hundred_thousand_empty_entries_are_refused_from_the_end_record(tmp_path, monkeypatch):
    src = _many_empty_entries(tmp_path / "many.zip", 200_000)
    assert len(zipfile.ZipFile(src).infolist()) == 200_000  # a real archive

    def no_directory_parse(*a, **k):  # noqa: ANN002, ANN003, ANN202
        raise AssertionError("the central directory was parsed before the count was checked")

    monkeypatch.setattr(zipfile.ZipFile, "__init__", no_directory_parse)
    refused(tmp_path, src, "up.zip: 200,000 entries, more than the limit of 100,000", display_name="up.zip")


def test_messages_name_the_upload_not_the_server_temp_file(tmp_path):
    src = tmp_path / "tmpk2j3h4.zip"
    src.write_bytes(b"not a zip at all")
    refused(tmp_path, src, "my data.zip: not a zip archive", display_name="my data.zip")
    with pytest.raises(ArchiveError) as e:
        extract_zip(src, tmp_path / "out", display_name="my data.zip")
    assert "tmpk2j3h4" not in str(e.value)

"""Safe extraction of uploaded zip archives.

Refused, with a message that names the entry: an empty or non-zip file, entries with
absolute paths, drive letters or ``..`` components (zip slip), symbolic links, duplicate
names, encrypted entries, more than ``max_files`` entries (counted from the end record,
before the central directory is even parsed), an archive whose declared or real size exceeds
``max_total_bytes`` or the free disk space, and absurd compression ratios, of one entry or of
the whole archive (zip bombs made of many small entries). All of it is checked before the
first byte is written; the sizes are also enforced on the bytes actually written, which a
crafted directory cannot fake. On any error ``dest`` is removed: nothing is left
half-extracted. Messages name the archive by ``name`` (what the user uploaded), never by the
server's temporary file.
"""

from __future__ import annotations

import shutil
import stat
import struct
import zipfile
from pathlib import Path, PurePosixPath


class ArchiveError(ValueError):
    """The upload is not a usable archive; the message says what and where."""


SKIPPED_PREFIXES = ("__MACOSX/",)


def _safe_parts(name: str, src: str) -> tuple[str, ...]:
    norm = name.replace("\\", "/")
    p = PurePosixPath(norm)
    if not norm or norm.startswith("/") or (len(norm) > 1 and norm[1] == ":") or ".." in p.parts or "\x00" in norm:
        raise ArchiveError(f"{src}: entry {name!r} points outside the archive (zip slip)")
    return tuple(x for x in p.parts if x not in ("", "."))


#: below this many unpacked bytes the ratio of the whole archive is not checked (text compresses well)
RATIO_FLOOR = 16 * 2**20


def declared_entry_count(path: Path) -> int | None:
    """The entry count of the zip's end-of-central-directory record (zip64 too), read from the
    file's tail without parsing the directory; None when there is no such record."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        f.seek(max(0, size - 65_557))  # the record (22 bytes) plus the longest comment
        tail = f.read()
        at = tail.rfind(b"PK\x05\x06")
        if at < 0 or len(tail) < at + 22:
            return None
        count = struct.unpack("<H", tail[at + 10:at + 12])[0]
        loc = at - 20
        if loc >= 0 and tail[loc:loc + 4] == b"PK\x06\x07":  # zip64: the real count is elsewhere
            f.seek(struct.unpack("<Q", tail[loc + 8:loc + 16])[0])
            rec = f.read(40)
            if rec[:4] == b"PK\x06\x06" and len(rec) == 40:
                count = struct.unpack("<Q", rec[32:40])[0]
    return count


def _check_entries(zf: zipfile.ZipFile, src: str, max_total_bytes: int, max_files: int,
                   max_ratio: float) -> list[zipfile.ZipInfo]:
    infos = zf.infolist()
    if len(infos) > max_files:
        raise ArchiveError(f"{src}: {len(infos):,} entries, more than the limit of {max_files:,}")
    total = packed = 0
    seen: set[tuple[str, ...]] = set()
    for info in infos:
        parts = _safe_parts(info.filename, src)
        if stat.S_ISLNK(info.external_attr >> 16):
            raise ArchiveError(f"{src}: entry {info.filename!r} is a symbolic link")
        if info.flag_bits & 0x1:
            raise ArchiveError(f"{src}: entry {info.filename!r} is encrypted")
        if not info.is_dir():
            if parts in seen:
                raise ArchiveError(f"{src}: entry {info.filename!r} appears twice")
            seen.add(parts)
        total += info.file_size
        packed += info.compress_size
        if total > max_total_bytes:
            raise ArchiveError(f"{src}: unpacks to more than {max_total_bytes:,} bytes")
        if info.file_size > 2**20 and info.file_size > max_ratio * max(1, info.compress_size):
            raise ArchiveError(f"{src}: entry {info.filename!r} has a compression ratio of "
                               f"{info.file_size / max(1, info.compress_size):,.0f}:1 (zip bomb?)")
    if total > RATIO_FLOOR and total > max_ratio * max(1, packed):
        raise ArchiveError(f"{src}: {len(infos):,} entries unpack to {total:,} bytes from {packed:,} compressed, "
                           f"a ratio of {total / max(1, packed):,.0f}:1 (zip bomb?)")
    return infos


def extract_zip(src: Path, dest: Path, *, max_total_bytes: int = 20 * 2**30, max_files: int = 100_000,
                max_ratio: float = 200.0, display_name: str | None = None) -> list[Path]:
    """Extract ``src`` into ``dest`` (which must not exist yet) and return the files written.
    ``display_name``: what messages call the archive (an upload's own name, not the temporary
    file it was streamed to)."""
    src, dest = Path(src), Path(dest)
    name = display_name or src.name
    if not src.is_file():
        raise ArchiveError(f"{name}: not found")
    if src.stat().st_size == 0:
        raise ArchiveError(f"{name}: the file is empty")
    if not zipfile.is_zipfile(src):
        raise ArchiveError(f"{name}: not a zip archive")
    declared = declared_entry_count(src)
    if declared is not None and declared > max_files:
        raise ArchiveError(f"{name}: {declared:,} entries, more than the limit of {max_files:,}")
    dest.mkdir(parents=True, exist_ok=False)
    written: list[Path] = []
    try:
        with zipfile.ZipFile(src) as zf:
            infos = _check_entries(zf, name, max_total_bytes, max_files, max_ratio)
            declared = sum(i.file_size for i in infos)
            free = shutil.disk_usage(dest).free
            if declared > free:
                raise ArchiveError(f"{name}: unpacks to {declared:,} bytes, more than the {free:,} bytes free")
            budget = max_total_bytes
            for info in infos:
                parts = _safe_parts(info.filename, name)
                if info.is_dir() or not parts or info.filename.startswith(SKIPPED_PREFIXES):
                    continue
                target = dest.joinpath(*parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fin, open(target, "wb") as fout:
                    copied = 0
                    while chunk := fin.read(1 << 20):
                        copied += len(chunk)
                        budget -= len(chunk)
                        if copied > info.file_size or budget < 0:
                            raise ArchiveError(f"{name}: entry {info.filename!r} is larger than declared (zip bomb?)")
                        fout.write(chunk)
                written.append(target)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, NotImplementedError, RuntimeError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{name}: corrupt or unsupported zip archive ({e})") from None
    except OSError as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{name}: cannot extract ({e.strerror or e})") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return written


def find_annotations(folder: Path) -> list[Path]:
    """The ``.jsonl`` files of an extracted upload, sorted (macOS resource forks and hidden
    files left out)."""
    out = []
    for p in sorted(Path(folder).rglob("*.jsonl")):
        rel = p.relative_to(folder).parts
        if p.is_file() and not any(x.startswith(".") or x == "__MACOSX" for x in rel):
            out.append(p)
    return out

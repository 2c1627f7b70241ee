"""Safe extraction of uploaded zip archives (zip slip and zip bomb guarded)."""

from __future__ import annotations

import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath


class ArchiveError(ValueError):
    """The upload is not a usable archive; the message says what and where."""


def extract_zip(src: Path, dest: Path, *, max_total_bytes: int = 20 * 2**30, max_files: int = 2_000_000,
                max_ratio: float = 200.0) -> list[Path]:
    """Extract ``src`` into ``dest`` (which must not exist yet) and return the files written.

    Refuses entries with absolute paths or ``..`` components, symlinks, a declared total
    size over ``max_total_bytes``, and entries whose compression ratio is absurd.
    """
    if not zipfile.is_zipfile(src):
        raise ArchiveError(f"{src.name}: not a zip archive")
    written: list[Path] = []
    dest.mkdir(parents=True, exist_ok=False)
    try:
        with zipfile.ZipFile(src) as zf:
            infos = zf.infolist()
            if len(infos) > max_files:
                raise ArchiveError(f"{src.name}: {len(infos)} entries, more than the limit of {max_files}")
            total = 0
            for info in infos:
                name = info.filename
                p = PurePosixPath(name.replace("\\", "/"))
                if p.is_absolute() or name.startswith(("/", "\\")) or ".." in p.parts or (
                        len(name) > 1 and name[1] == ":"):
                    raise ArchiveError(f"{src.name}: entry {name!r} points outside the archive")
                if stat.S_ISLNK(info.external_attr >> 16):
                    raise ArchiveError(f"{src.name}: entry {name!r} is a symbolic link")
                total += info.file_size
                if total > max_total_bytes:
                    raise ArchiveError(f"{src.name}: unpacks to more than {max_total_bytes} bytes")
                if info.compress_size and info.file_size / info.compress_size > max_ratio and info.file_size > 2**20:
                    raise ArchiveError(f"{src.name}: entry {name!r} has a compression ratio of "
                                       f"{info.file_size / info.compress_size:.0f}:1 (zip bomb?)")
            for info in infos:
                if info.is_dir() or info.filename.startswith("__MACOSX/"):
                    continue
                target = dest.joinpath(*PurePosixPath(info.filename.replace("\\", "/")).parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                with zf.open(info) as fin, open(target, "wb") as fout:
                    # Count real bytes: the declared sizes in the directory can lie.
                    copied = 0
                    while chunk := fin.read(1 << 20):
                        copied += len(chunk)
                        if copied > info.file_size:
                            raise ArchiveError(f"{src.name}: entry {info.filename!r} is larger than declared")
                        fout.write(chunk)
                written.append(target)
    except (zipfile.BadZipFile, EOFError) as e:
        shutil.rmtree(dest, ignore_errors=True)
        raise ArchiveError(f"{src.name}: corrupt zip archive ({e})") from None
    except BaseException:
        shutil.rmtree(dest, ignore_errors=True)
        raise
    return written

"""Kernel-build locks in the torch-extensions cache (issue 26).

A JIT build (DeepSpeed's ops through ``torch.utils.cpp_extension``) takes a ``lock`` file in its
build folder (``<TORCH_EXTENSIONS_DIR>/<op>/lock``, created with O_EXCL and held open by the
building process until the build ends), and every other process that wants the op waits, with
nothing in its log, until the file is gone. A build killed under it leaves the file behind and
every later job on the machine waits forever.

The lock's owner is whoever has the file open: a lock that no process has open is stale and is
removed (only when every process's open files could be read: a lock that might be held by a
process we cannot see is left alone). A run waiting on a lock held by a live build says so in
its log, with the time waited.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path

PROC = Path("/proc")
#: how often a waiting run's log says so
NOTICE_EVERY_S = 30.0


def extension_roots(env: Mapping[str, str]) -> list[Path]:
    """The torch-extensions folders a process with environment ``env`` builds in."""
    if env.get("TORCH_EXTENSIONS_DIR"):
        return [Path(env["TORCH_EXTENSIONS_DIR"])]
    cache = env.get("XDG_CACHE_HOME") or os.path.join(env.get("HOME") or os.path.expanduser("~"), ".cache")
    return [Path(cache) / "torch_extensions"]


def locks(roots: list[Path]) -> list[Path]:
    """The ``lock`` files of the build folders under ``roots`` (``<op>/lock``, or under torch's
    per-version folder ``<py311_cpu>/<op>/lock``)."""
    out: list[Path] = []
    for root in roots:
        for pattern in ("*/lock", "*/*/lock"):
            out += [p for p in root.glob(pattern) if p.is_file()]
    return out


def holders(lock: Path) -> list[int] | None:
    """The processes that have ``lock`` open; None when some process's open files cannot be read
    (then nobody can say the lock is stale)."""
    target = os.path.realpath(lock)
    out: list[int] = []
    for pid_dir in PROC.iterdir():
        if not pid_dir.name.isdigit():
            continue
        try:
            fds = list((pid_dir / "fd").iterdir())
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited meanwhile
        except PermissionError:
            return None
        for fd in fds:
            try:
                if os.readlink(fd) == target:
                    out.append(int(pid_dir.name))
                    break
            except OSError:
                continue  # closed meanwhile
    return out


def break_stale(roots: list[Path]) -> list[Path]:
    """Remove the locks under ``roots`` that no process holds; the ones removed."""
    removed = []
    for lock in locks(roots):
        if holders(lock) == []:
            try:
                lock.unlink()
            except FileNotFoundError:
                continue  # its build just ended
            removed.append(lock)
    return removed


class BuildWait:
    """One run's view of the build locks while it has not started training: breaks the stale
    ones and says, every ``NOTICE_EVERY_S``, which build it waits on and for how long."""

    def __init__(self, env: Mapping[str, str], every_s: float = 5.0) -> None:
        self.roots = extension_roots(env)
        self.every_s = every_s
        self.next_look = 0.0
        self.waiting_since: dict[Path, float] = {}
        self.said_at: dict[Path, float] = {}

    def notes(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        if now < self.next_look:
            return []
        self.next_look = now + self.every_s
        out = []
        present = locks(self.roots)
        for lock in present:
            held = holders(lock)
            if held == []:
                try:
                    lock.unlink()
                except FileNotFoundError:
                    continue
                out.append(f"removed a stale kernel-build lock {lock} (the build that took it is gone)")
                continue
            since = self.waiting_since.setdefault(lock, now)
            if now - since >= self.every_s and now - self.said_at.get(lock, -NOTICE_EVERY_S) >= NOTICE_EVERY_S:
                self.said_at[lock] = now
                who = f"process {', '.join(map(str, held))}" if held else "a process this worker cannot see"
                out.append(f"waiting on a kernel build ({lock.parent.name}: {lock} is held by {who}) for "
                           f"{now - since:.0f} s")
        for gone in set(self.waiting_since) - set(present):
            self.waiting_since.pop(gone, None)
            self.said_at.pop(gone, None)
        return out

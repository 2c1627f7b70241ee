"""Who the processes of a run really are, from Linux's /proc.

Every program the worker launches carries ``--spec RUN/spec.json`` on its command line: the
torchrun agent, each trainer, their DataLoader workers, an evaluation. torchrun starts each
trainer in a session of its own, so the agent's process group does not reach them; and a
trainer whose agent died is re-parented to init. The command line finds them all, whoever
their parent is now, including on a worker that restarted and never started them.

A run is more than those (issue 26): a trainer's kernel build runs ninja, which puts each
compiler in a process group of its own, and a compiler outlives a trainer killed under it
(re-parented to init, holding the build's ``lock``). :func:`run_tree` is all of it: the
``--spec`` processes, every process in their process sessions (and in sessions of the run seen
before, whose leader has exited), every descendant of these, and every process whose
environment names the run (``RUN_ENV``, inherited by everything a run starts).

A lookup that cannot read /proc raises :class:`ProcessLookupFailed` instead of answering
"nothing found": an empty answer must mean that nothing runs.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")


class ProcessLookupFailed(RuntimeError):
    """/proc could not be listed: no answer about which processes run."""


#: every process a launch starts has its spec path in this variable (worker.runtime.Launch)
RUN_ENV = "VLSTUDIO_RUN_SPEC"


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    pgid: int
    argv: tuple[str, ...]
    sid: int = 0  # its process session


def _read(pid_dir: Path) -> Proc | None:
    try:
        stat = (pid_dir / "stat").read_text()
        raw = (pid_dir / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None  # exited meanwhile, or not ours to read
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # a zombie holds nothing and cannot be signalled away
        return None
    argv = tuple(a.decode(errors="replace") for a in raw.split(b"\0") if a)
    return Proc(int(pid_dir.name), int(fields[1]), int(fields[2]), argv, int(fields[3]))


def all_processes() -> list[Proc]:
    try:
        entries = [p for p in PROC.iterdir() if p.name.isdigit()]
    except OSError as e:
        raise ProcessLookupFailed(f"cannot list {PROC}: {e}") from e
    if not entries:
        raise ProcessLookupFailed(f"{PROC} lists no process at all (not mounted?)")
    return [p for p in map(_read, entries) if p is not None]


def _environ(pid: int) -> list[bytes]:
    try:
        return (PROC / str(pid) / "environ").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []  # exited meanwhile, or not ours


def run_tag(pid: int) -> str | None:
    """The spec path of the run that started ``pid`` (its ``RUN_ENV``), if any."""
    prefix = f"{RUN_ENV}=".encode()
    return next((e[len(prefix):].decode(errors="replace") for e in _environ(pid) if e.startswith(prefix)), None)


def run_tree(spec_path: Path | str, sessions: set[int] | None = None) -> list[Proc]:
    """Every live process of the run of ``spec_path`` (see the module docstring). ``sessions``:
    process sessions of the run seen before; the sessions found are added to it."""
    target = str(Path(spec_path).resolve())
    procs = all_processes()
    own = {os.getsid(0), os.getpgrp(), 0, 1}
    members = {p.pid: p for p in procs if _has_spec(p, target)}
    known = (sessions if sessions is not None else set()) | {p.sid for p in members.values()}
    known -= own
    for p in procs:
        if p.pid not in members and (p.sid in known or _tagged(p, target)):
            members[p.pid] = p
    grew = True
    while grew:  # descendants that left the session (torchrun's trainers start sessions of their own)
        grew = False
        for p in procs:
            if p.pid not in members and p.ppid in members:
                members[p.pid] = p
                grew = True
    if sessions is not None:
        sessions |= {p.sid for p in members.values()} - own
    return [p for p in members.values() if p.pid != os.getpid()]


def _tagged(p: Proc, target: str) -> bool:
    tag = run_tag(p.pid)
    return tag is not None and _same(tag, target)


def launched_by_worker(p: Proc) -> bool:
    """Whether a worker launched it (``WORKER_RUN_ENV`` in its environment): a user rerunning a
    run's command.txt by hand starts the same command line, and that run is theirs."""
    from backend.core.spec import WORKER_RUN_ENV

    try:
        env = (PROC / str(p.pid) / "environ").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False  # exited meanwhile, or not ours
    return f"{WORKER_RUN_ENV}=1".encode() in env.split(b"\0")


def spec_processes(spec_path: Path | str) -> list[Proc]:
    """Every live process whose command line has ``--spec <spec_path>``."""
    target = str(Path(spec_path).resolve())
    return [p for p in all_processes() if _has_spec(p, target)]


def _has_spec(p: Proc, target: str) -> bool:
    args = p.argv
    return any(a == "--spec" and _same(args[i + 1], target) for i, a in enumerate(args[:-1]))


def _same(arg: str, target: str) -> bool:
    return arg == target or (os.path.isabs(arg) and os.path.normpath(arg) == target)


def is_agent(p: Proc) -> bool:
    return "torch.distributed.run" in p.argv or any(a.endswith("torchrun") for a in p.argv[:2])


def trainers(procs: list[Proc]) -> list[Proc]:
    """The processes of a run that do the work: children of its torchrun agent, or whose parent
    is not of the run (an orphan whose agent died, a plain evaluation process). Not the agent
    (given SIGTERM it SIGKILLs its trainers 30 s later) and not a trainer's DataLoader workers."""
    by_pid = {p.pid: p for p in procs}
    out = []
    for p in procs:
        parent = by_pid.get(p.ppid)
        if not is_agent(p) and (parent is None or is_agent(parent)):
            out.append(p)
    return out


def send(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def kill_groups(procs: list[Proc]) -> None:
    """SIGKILL each process and its process group (a trainer leads a group of its own). With
    :func:`run_tree`'s processes: the whole run, compilers in groups of their own included."""
    own = os.getpgrp()
    for p in procs:
        if p.pgid in (own, 0, 1):  # never the worker's own group
            send([p.pid], signal.SIGKILL)
            continue
        try:
            os.killpg(p.pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        send([p.pid], signal.SIGKILL)


def wait_gone(pids: list[int], timeout_s: float) -> bool:
    """Wait until none of ``pids`` runs (zombies count as gone); whether they all went."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = [pid for pid in pids if _read(PROC / str(pid)) is not None]
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)

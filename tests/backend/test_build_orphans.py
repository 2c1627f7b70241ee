"""A run's processes end with it, all of them (issue 26): a kernel build's compilers (ninja puts
each in a process group of its own) outlived a cancelled trainer and kept the torch-extensions
``lock``, and every later job waited on it forever with nothing in its log."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from tests.backend.test_process_control import torchrun_launch, wait_for
from worker import build_locks, processes
from worker.local import LocalExecutor

# A trainer (under real torchrun) in the middle of its first JIT build, slowed: it takes the
# build's lock with torch's own FileBaton and holds it open, runs a "ninja" that starts two
# "compilers", each in a process group of its own, and waits for them; SIGTERM does not
# interrupt a build.
BUILDING_TRAINER = """import os, signal, subprocess, sys, time
from torch.utils.file_baton import FileBaton
signal.signal(signal.SIGTERM, lambda *a: print("rank", os.environ["RANK"], "builds on", flush=True))
build = os.path.join(os.environ["TORCH_EXTENSIONS_DIR"], "fused_adam")
os.makedirs(build, exist_ok=True)
baton = FileBaton(os.path.join(build, "lock"))
assert baton.try_acquire()
compiler = "import os, time; os.setpgrp(); time.sleep(600)"
ninja = subprocess.Popen([sys.executable, "-c",
    "import subprocess, sys, time; cs = [subprocess.Popen([sys.executable, '-c', %r]) for _ in range(2)];"
    "[c.wait() for c in cs]" % compiler])
print("rank", os.environ["RANK"], "pid", os.getpid(), "building", ninja.pid, flush=True)
ninja.wait()
"""


def _of_run(spec: Path, sessions: set[int]) -> list[processes.Proc]:
    """Processes in the run's sessions or carrying its tag: what must be gone after it."""
    target = str(spec.resolve())
    return [p for p in processes.all_processes()
            if p.sid in sessions or processes.run_tag(p.pid) == target]


def test_cancel_during_a_slowed_build_leaves_no_process_and_no_lock(tmp_path):
    ext = tmp_path / "torch_extensions"
    launch = torchrun_launch(tmp_path, nproc=1, TORCH_EXTENSIONS_DIR=str(ext))
    (tmp_path / "stand_in_trainer.py").write_text(BUILDING_TRAINER)
    ex = LocalExecutor()
    ex.start(launch)
    try:
        wait_for(lambda: "building" in launch.log_path.read_text(errors="replace"), 60, "build")
        # in process groups of their own: a killpg of the trainer's group misses them
        wait_for(lambda: len(c := _compilers()) == 2 and all(p.pgid == p.pid for p in c), 30, "compilers")
        assert (ext / "fused_adam" / "lock").exists()
        sessions = {ex.proc.pid} | {p.sid for p in processes.spec_processes(launch.spec_path)}
        ex.terminate()  # the cancel: the trainer builds on
        time.sleep(1)
        ex.kill()  # the escalation after the grace period
        rc = wait_for(lambda: ex.poll() is not None and [ex.poll()], 30, "end")[0]
        assert rc != 0
        wait_for(lambda: not _of_run(launch.spec_path, sessions) or None, 10, "end of every process")
        assert not _compilers()
        assert not (ext / "fused_adam" / "lock").exists()  # the stale lock went with them
    finally:
        processes.kill_groups(processes.run_tree(launch.spec_path, set()))


def _compilers() -> list[processes.Proc]:
    return [p for p in processes.all_processes() if p.argv[-1:] == ("import os, time; os.setpgrp(); time.sleep(600)",)]


def _hold(lock: Path, seconds: float) -> subprocess.Popen:
    """A process that takes ``lock`` as torch does and holds it ``seconds``."""
    lock.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom torch.utils.file_baton import FileBaton\n"
                             f"b = FileBaton({str(lock)!r}); assert b.try_acquire(); print('held', flush=True)\n"
                             f"time.sleep({seconds})"], stdout=subprocess.PIPE, text=True)


def test_a_stale_lock_from_a_dead_build_does_not_hang_the_next_one(tmp_path):
    ext = tmp_path / "ext"
    lock = ext / "py311_cpu" / "cpu_adam" / "lock"
    dead = _hold(lock, 600)
    assert dead.stdout.readline().strip() == "held"
    dead.kill()  # a build killed under it: its lock stays
    dead.wait()
    assert lock.exists()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(ext)}
    # What the next job would do without the fix: torch waits on the file for ever.
    waiter = [sys.executable, "-c", "from torch.utils.file_baton import FileBaton\n"
              f"b = FileBaton({str(lock)!r})\nb.wait() if not b.try_acquire() else None\nprint('built', flush=True)"]
    hung = subprocess.Popen(waiter, env=env, stdout=subprocess.PIPE, text=True)
    try:
        time.sleep(1.5)
        assert hung.poll() is None  # waiting on a lock nobody holds
        notes = build_locks.BuildWait(env, every_s=0.0).notes()  # what the next run's supervisor does first
        assert notes == [f"removed a stale kernel-build lock {lock} (the build that took it is gone)"]
        assert hung.wait(20) == 0 and hung.stdout.read().strip() == "built"
    finally:
        hung.kill()


def test_a_run_waiting_on_a_live_build_says_so_with_the_time_waited(tmp_path):
    lock = tmp_path / "ext" / "fused_adam" / "lock"
    holder = _hold(lock, 600)
    try:
        assert holder.stdout.readline().strip() == "held"
        wait = build_locks.BuildWait({"TORCH_EXTENSIONS_DIR": str(tmp_path / "ext")}, every_s=1.0)
        assert wait.notes(now=100.0) == []  # first sight
        assert build_locks.holders(lock) == [holder.pid]
        (said,) = wait.notes(now=112.0)
        assert said == f"waiting on a kernel build (fused_adam: {lock} is held by process {holder.pid}) for 12 s"
        assert wait.notes(now=120.0) == []  # at most every 30 s
        assert wait.notes(now=143.0) == [said.replace("for 12 s", "for 43 s")]
        assert lock.exists()  # a live build's lock is never broken
    finally:
        holder.kill()
        holder.wait()
    assert build_locks.break_stale([tmp_path / "ext"]) == [lock]

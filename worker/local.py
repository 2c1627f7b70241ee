"""The local backend: a launch runs on this node, torchrun (or one plain process) as a child in a
process session of its own.

Process control goes to the trainers themselves. torchrun starts each trainer in a session of
its own, and its agent, given SIGTERM, SIGKILLs the trainers 30 s later (possibly in the middle of
a checkpoint). So a stop sends SIGTERM to each trainer (found by :mod:`worker.processes`, also
those that start after the request) and leaves the agent alone: the trainers save, exit 0, and
the agent ends cleanly. A kill SIGKILLs the agent and every trainer with its process group.
"""

from __future__ import annotations

import ctypes
import signal
import subprocess
import sys

from worker import build_locks, processes
from worker.runtime import Launch, LaunchError

PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # If the worker is killed (even with -9) the agent gets SIGTERM and forwards it to the
    # trainers, which checkpoint and exit; the worker's reaper ends what is left. The signal is
    # tied to the thread that forked, which supervises the run until it ends.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


class LocalExecutor:
    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.launch: Launch | None = None
        self.stopping = False
        self.signalled: set[int] = set()
        self.leftovers_killed = 0
        self.sessions: set[int] = set()  # process sessions of the run seen so far (processes.run_tree)

    def start(self, launch: Launch) -> None:
        if launch.nnodes > 1:
            raise LaunchError(f"nnodes={launch.nnodes}: the local backend runs a job on one node; multi-node "
                              "training needs the Slurm backend (VLSTUDIO_BACKEND=slurm, docs/deploy-slurm.md)")
        self.launch = launch
        with open(launch.log_path, "ab") as out:
            self.proc = subprocess.Popen(
                launch.local_command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=launch.environment(), cwd=launch.run_dir,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None)
        self.sessions.add(self.proc.pid)  # start_new_session: the agent leads the run's first session

    def reattach(self, launch: Launch) -> bool:
        return False  # a local run outlives no worker: the reaper ends what a dead worker left

    def _run_procs(self) -> list[processes.Proc]:
        assert self.launch is not None
        return processes.spec_processes(self.launch.spec_path)

    def _run_tree(self) -> list[processes.Proc]:
        """Everything of the run: its sessions, their descendants, a kernel build's compilers."""
        assert self.launch is not None
        return processes.run_tree(self.launch.spec_path, self.sessions)

    def poll(self) -> int | None:
        assert self.proc is not None
        rc = self.proc.poll()
        if rc is None and self.stopping:
            self._term_new()  # trainers that started after the request
        elif rc is not None and not self.leftovers_killed:
            # The agent is gone; nothing of the run may outlive it (it died of a signal, say, or a
            # trainer that exited left the compilers of a kernel build behind).
            left = self._run_tree()
            processes.kill_groups(left)
            self.leftovers_killed = len(left) or -1
            processes.wait_gone([p.pid for p in left], timeout_s=5.0)
            # a build killed under the run leaves its lock: every later build would wait on it
            assert self.launch is not None
            build_locks.break_stale(build_locks.extension_roots(self.launch.environment()))
        return rc

    def _term_new(self) -> None:
        assert self.proc is not None and self.launch is not None
        if not self.launch.distributed:
            targets = [self.proc.pid]
        else:
            targets = [p.pid for p in processes.trainers(self._run_procs())]
            self._run_tree()  # remember the trainers' sessions: their compilers outlive them
        fresh = [pid for pid in targets if pid not in self.signalled]
        processes.send(fresh, signal.SIGTERM)
        self.signalled.update(fresh)

    def terminate(self) -> None:
        self.stopping = True
        self._term_new()

    def kill(self) -> None:
        assert self.proc is not None
        procs = self._run_tree()
        if self.proc.poll() is None and all(p.pid != self.proc.pid for p in procs):
            procs.append(processes.Proc(self.proc.pid, 0, self.proc.pid, ()))
        processes.kill_groups(procs)

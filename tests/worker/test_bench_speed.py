"""bench/train_speed.py on a machine it borrows for minutes: a path that hangs is killed with
everything it started (torchrun's trainers sit in sessions of their own) and the compile locks
it left, a path that fails does not stop the next, and the trainers keep the caller's
PYTHONPATH."""

from __future__ import annotations

import os
import sys
import time
from types import SimpleNamespace

from bench import train_speed


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def test_a_timed_out_path_is_killed_with_the_processes_it_started_in_other_sessions(tmp_path):
    marker = str(tmp_path / "run" / "spec.json")
    ext = tmp_path / "ext"
    (ext / "old_op").mkdir(parents=True)
    (ext / "old_op" / "lock").write_text("")  # not this path's: kept
    pids = tmp_path / "pids"
    # an "agent" that starts a "trainer" in a session of its own, which leaves a compile lock
    trainer = (f"import os, time; os.makedirs({str(ext / 'fused_adam')!r}, exist_ok=True); "
               f"open({str(ext / 'fused_adam' / 'lock')!r}, 'w').close(); time.sleep(120)")
    agent = (f"import subprocess, sys, time; p = subprocess.Popen([sys.executable, '-c', {trainer!r}, '--spec', "
             f"{marker!r}], start_new_session=True); open({str(pids)!r}, 'w').write(str(p.pid)); time.sleep(120)")
    t0 = time.monotonic()
    done = train_speed.run_bounded([sys.executable, "-c", agent, "--spec", marker], marker=marker,
                                   log_path=tmp_path / "log.txt", timeout=4, cwd=tmp_path, env=dict(os.environ),
                                   extensions=ext)
    assert time.monotonic() - t0 < 30
    assert done["timed_out"] and done["rc"] is None
    trainer_pid = int(pids.read_text())
    assert trainer_pid in done["killed"]
    for _ in range(50):
        if not alive(trainer_pid):
            break
        time.sleep(0.1)
    assert not alive(trainer_pid)
    assert done["stale_locks_removed"] == [str(ext / "fused_adam" / "lock")]
    assert (ext / "old_op" / "lock").exists()


def test_a_failed_path_is_recorded_and_the_next_one_still_runs(tmp_path, monkeypatch):
    launched = []

    def fake_launch(run, spec, timeout, extensions):
        launched.append(run.name)
        if run.name == "naive":
            (run / "training_log.txt").parent.mkdir(parents=True, exist_ok=True)
            (run / "training_log.txt").write_text("Traceback: CUDA out of memory\n")
            return {"rc": 1, "timed_out": False, "rss_kib": 0, "killed": []}
        return {"rc": 0, "timed_out": False, "rss_kib": 1024, "killed": []}

    monkeypatch.setattr(train_speed, "launch", fake_launch)
    monkeypatch.setattr(train_speed, "figures", lambda run, rss, n, wall: {"tokens_per_second": 10.0,
                                                                          "wall_seconds_including_start": 1.0})
    specs = {name: (SimpleNamespace(output_dir=str(tmp_path / name)), {}) for name in ("naive", "tuned")}
    results = train_speed.run_paths(specs, 4, timeout=60, extensions=None)
    assert launched == ["naive", "tuned"]
    assert results["naive"]["failed"] == "exit 1" and results["tuned"]["tokens_per_second"] == 10.0


def test_trainers_keep_the_callers_pythonpath(monkeypatch):
    monkeypatch.setenv("PYTHONPATH", "/carried/site-packages")
    path = train_speed.child_env()["PYTHONPATH"].split(os.pathsep)
    assert path == [str(train_speed.REPO), "/carried/site-packages"]

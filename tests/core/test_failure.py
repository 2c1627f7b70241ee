"""The first real error of a failed trainer, from its log (torchrun's banner comes last)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from backend.core.failure import TrainerError, describe, first_error, read_log

BANNER = """E1201 11:10:52.212000 30405 torch/distributed/elastic/multiprocessing/api.py:1002] failed (exitcode: 1)
Traceback (most recent call last):
  File "/venv/bin/torchrun", line 8, in <module>
    sys.exit(main())
  File "/venv/lib/python3.11/site-packages/torch/distributed/run.py", line 1019, in run
    elastic_launch(
  File "/venv/lib/python3.11/site-packages/torch/distributed/launcher/api.py", line 383, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
worker.training.train FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  rank      : 0 (local_rank: 0)
  exitcode  : {code} (pid: 30531)
  error_file: <N/A>
  traceback : {tb}
============================================================
"""


def test_the_rank_error_not_the_banner():
    log = ("step 1\n[rank0]: Traceback (most recent call last):\n"
           '[rank0]:   File "/repo/worker/training/data.py", line 88, in __getitem__\n'
           "[rank0]:     image = Image.open(path)\n"
           '[rank0]:   File "/venv/lib/python3.11/site-packages/PIL/Image.py", line 3431, in open\n'
           '[rank0]:     fp = builtins.open(filename, "rb")\n'
           "[rank0]: PermissionError: [Errno 13] Permission denied: '/data/img/7.png'\n"
           + BANNER.format(code=1, tb="To enable traceback see: https://pytorch.org/docs"))
    err = first_error(log)
    assert err == TrainerError("PermissionError", "[Errno 13] Permission denied: '/data/img/7.png'",
                               "/venv/lib/python3.11/site-packages/PIL/Image.py", 3431)
    reason = describe("trainer exited with code 1; no checkpoint", log, ["last line"])
    assert reason.splitlines()[0] == ("trainer exited with code 1; no checkpoint: PermissionError: [Errno 13] "
                                      "Permission denied: '/data/img/7.png' "
                                      "(/venv/lib/python3.11/site-packages/PIL/Image.py:3431)")
    assert reason.splitlines()[-1] == "last line"


def test_the_first_of_chained_errors():
    log = ("Traceback (most recent call last):\n  File \"/a.py\", line 1, in f\nKeyError: 'image'\n\n"
           "During handling of the above exception, another exception occurred:\n\n"
           "Traceback (most recent call last):\n  File \"/b.py\", line 2, in g\nValueError: bad sample\n")
    assert first_error(log) == TrainerError("KeyError", "'image'", "/a.py", 1)


def test_a_rank_killed_by_a_signal_has_no_traceback():
    log = "step 3\n" + BANNER.format(code=-9, tb="Signal 9 (SIGKILL) received by PID 30531")
    assert first_error(log) == TrainerError("RankKilled", "Signal 9 (SIGKILL) received by PID 30531")
    assert str(first_error(BANNER.format(code=7, tb="To enable"))) == (
        "RankFailed: a rank exited with code 7 without a traceback")


def test_the_trainers_own_refusal_is_the_reason():
    """train.py's ``fail`` prints its problems and exits 2 without a traceback: the reason names
    them, not torchrun's 'exited with code 2' (a mixture whose every line is bad)."""
    log = ("samples: 0 kept, 1 dropped (invalid 1)\ncannot train:\n  - no trainable sample left: 1 dropped "
           "(invalid 1); the first: shapes sample 0: line 1: JSONDecodeError: Expecting value\n"
           "  - max_steps must be positive\n" + BANNER.format(code=2, tb="To enable"))
    assert str(first_error(log)) == ("CannotTrain: no trainable sample left: 1 dropped (invalid 1); the first: "
                                     "shapes sample 0: line 1: JSONDecodeError: Expecting value; "
                                     "max_steps must be positive")


def test_no_error_no_claim():
    assert first_error("step 1\nstep 2\nsaving final model\n") is None
    assert describe("trainer exited without writing the final model", "ok\n", ["ok"]) == (
        "trainer exited without writing the final model\nok")


def test_read_log_keeps_the_end(tmp_path):
    p = tmp_path / "training_log.txt"
    p.write_text("x" * 100 + "END")
    assert read_log(p, max_bytes=10).endswith("END") and len(read_log(p, max_bytes=10)) == 10
    assert read_log(tmp_path / "missing.txt") == ""


@pytest.mark.slow
def test_a_real_torchrun_failure(tmp_path):
    """torchrun's own output of two ranks that raise: the reason names the FileNotFoundError."""
    script = tmp_path / "boom.py"
    # rank 1 raises a moment after rank 0: two tracebacks written at the same instant interleave their bytes
    # in the one pipe ('FileNotFoundErrorFileNotFoundError: ...'), which no reader can take apart
    script.write_text("def load(p):\n    with open(p) as f:\n        return f.read()\n\n"
                      "import os, time\nfor i in range(3):\n    print(f'step {i}', flush=True)\n"
                      "time.sleep(1.0 * int(os.environ['LOCAL_RANK']))\nload('/data/missing/0001.jpg')\n")
    torchrun = Path(sys.executable).with_name("torchrun")
    out = subprocess.run([str(torchrun), "--nproc_per_node", "2", str(script)], capture_output=True, text=True,
                         timeout=300, cwd=tmp_path)
    assert out.returncode != 0
    log = out.stdout + out.stderr
    assert "ChildFailedError" in log.splitlines()[-30:][0] or "ChildFailedError" in log
    err = first_error(log)
    assert (err.type, err.message) == ("FileNotFoundError",
                                       "[Errno 2] No such file or directory: '/data/missing/0001.jpg'")
    assert (err.file, err.line) == (str(script), 2)

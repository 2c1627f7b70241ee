"""The sbatch script, Slurm's states and the executor's verdicts, without a cluster: Slurm's
commands are replaced by recorded answers (the real cluster is in test_slurm_jobs.py)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from backend.core.checkpoints import latest_complete, seal
from backend.core.spec import Hyperparameters, TrainingSpec
from backend.settings import Settings
from worker.runtime import Launch
from worker.slurm import SlurmExecutor
from worker.slurm import state as slurm_state
from worker.slurm.requeue import requeue_spec
from worker.slurm.script import SlurmConfigError, SlurmJobRequest, render_sbatch


def write_spec(run: Path, **hyper) -> Path:
    run.mkdir(parents=True, exist_ok=True)
    spec = TrainingSpec(
        job_id=7,
        model_path="/m",
        template="internlm2-chat",
        meta_path=str(run / "meta.json"),
        output_dir=str(run),
        hyper=Hyperparameters(**hyper),
    )
    spec.write(run / "spec.json")
    return run / "spec.json"


def request(tmp_path: Path, settings: Settings, **job) -> SlurmJobRequest:
    job = {
        "job_name": "vlstudio-job-7",
        "run_dir": tmp_path,
        "log_path": tmp_path / "log.txt",
        "spec_path": tmp_path / "spec.json",
        "python": "/venv/bin/python",
        **job,
    }
    return SlurmJobRequest.from_settings(settings, **job)


def test_script_carries_the_deployment_and_the_job(tmp_path):
    settings = Settings(
        slurm_partition="gpu",
        slurm_account="proj",
        slurm_qos="high",
        slurm_time_limit="1-00:00:00",
        slurm_extra_options="--exclusive --constraint='a100&ib'",
        slurm_setup="module load cuda",
        slurm_requeue=True,
        slurm_cpus_per_task=32,
    )
    script = render_sbatch(request(tmp_path, settings, nnodes=4, nproc_per_node=8, gpus_per_node=8))
    for directive in (
        "--partition=gpu",
        "--account=proj",
        "--qos=high",
        "--time=1-00:00:00",
        "--nodes=4",
        "--ntasks-per-node=1",
        "--gpus-per-node=8",
        "--cpus-per-task=32",
        "--requeue",
        "--exclusive",
        "'--constraint=a100&ib'",
        "--signal=B:USR1@120",
        f"--output={tmp_path / 'log.txt'}",
        "--open-mode=append",
    ):
        assert f"#SBATCH {directive}\n" in script, directive
    assert "module load cuda\n" in script
    assert (
        "srun --kill-on-bad-exit=1 --nodes=4 --ntasks-per-node=1 /venv/bin/python -m torch.distributed.run "
        '--nnodes 4 --nproc_per_node 8 --rdzv_backend c10d --rdzv_endpoint "$HEAD_NODE:$PORT"'
    ) in script
    # bash accepts it
    path = tmp_path / "job.sbatch"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)], capture_output=True).returncode == 0


def test_cpu_job_asks_no_gpus_and_defaults_stay_with_the_cluster(tmp_path):
    script = render_sbatch(request(tmp_path, Settings()))
    assert "--gpus-per-node" not in script and "--partition" not in script and "--account" not in script
    assert "#SBATCH --no-requeue\n" in script


def test_job_asking_more_gpus_than_a_node_has_is_refused(tmp_path):
    with pytest.raises(SlurmConfigError, match="asks for 16 GPUs per node but the partition's nodes have 8"):
        request(tmp_path, Settings(slurm_gpus_per_node=8), gpus_per_node=16, nproc_per_node=16)


def test_run_folder_outside_the_shared_folder_is_refused(tmp_path):
    with pytest.raises(SlurmConfigError, match="not inside the shared folder"):
        request(tmp_path, Settings(slurm_shared_dir=Path("/nonexistent/shared")))
    request(tmp_path, Settings(slurm_shared_dir=tmp_path.parent))  # inside: accepted


class FakeSlurm:
    """Answers sbatch/squeue/sacct/scontrol/scancel like a cluster would, and records the calls."""

    def __init__(self, squeue: list[str], sacct: str = "", scontrol: str = "", sbatch_rc: int = 0) -> None:
        self.squeue, self.sacct, self.scontrol, self.sbatch_rc = squeue, sacct, scontrol, sbatch_rc
        self.calls: list[list[str]] = []

    def __call__(self, args: list[str], *_: object) -> subprocess.CompletedProcess:
        self.calls.append(args)
        out, rc, err = "", 0, ""
        if args[0] == "sbatch":
            out, rc, err = (
                "4242;cluster\n",
                self.sbatch_rc,
                "sbatch: error: Invalid account or account/partition",
            )
        elif args[0] == "squeue":
            out = self.squeue.pop(0) if self.squeue else ""
            rc = 0 if out else 1
        elif args[0] == "sacct":
            out, rc = self.sacct, 0 if self.sacct else 1
        elif args[0] == "scontrol":
            out, rc = self.scontrol, 0 if self.scontrol else 1
        return subprocess.CompletedProcess(args, rc, out, err)


def started(tmp_path: Path, fake: FakeSlurm, **settings) -> SlurmExecutor:
    spec = write_spec(tmp_path / "run", nproc_per_node=2)
    ex = SlurmExecutor(Settings(slurm_poll_seconds=0.001, **settings), run=fake)
    ex.run_env = lambda args, env, cwd: fake(args)  # type: ignore[method-assign]
    ex.start(train_launch(spec, env={"CUDA_VISIBLE_DEVICES": "", "SLURM_JOB_ID": "1"}))
    return ex


def train_launch(spec: Path, **more) -> Launch:
    return Launch(name="vlstudio-job-7", module="worker.training.train", spec_path=spec, run_dir=spec.parent,
                  log_path=spec.parent / "log.txt", nproc_per_node=2, resumable=True, **more)


def test_an_evaluation_is_one_plain_process_without_requeue_logic(tmp_path):
    req = request(tmp_path, Settings(), module="worker.evaluation.run", distributed=False, resumable=False)
    script = render_sbatch(req)
    assert 'srun --kill-on-bad-exit=1 --nodes=1 --ntasks-per-node=1 /venv/bin/python -m worker.evaluation.run ' \
        '--spec "$SPEC" &' in script
    assert "torch.distributed.run" not in script and "worker.slurm.requeue" not in script
    assert "#SBATCH --no-requeue\n" in script
    # not even with VLSTUDIO_SLURM_REQUEUE: a restart would begin again from the first sample
    req = request(tmp_path, Settings(slurm_requeue=True), module="worker.evaluation.run", distributed=False,
                  resumable=False)
    assert "#SBATCH --no-requeue\n" in render_sbatch(req)


def test_a_run_is_never_submitted_twice_and_a_restarted_worker_reattaches(tmp_path):
    fake = FakeSlurm(["RUNNING|None|node07|0|"] * 3, sacct="COMPLETED|0:0|None|node07\n")
    first = started(tmp_path, fake)
    assert first.job_id == "4242" and [c[0] for c in fake.calls].count("sbatch") == 1
    launch = train_launch(tmp_path / "run" / "spec.json")
    again = SlurmExecutor(Settings(slurm_poll_seconds=0.001), run=fake)
    again.run_env = lambda args, env, cwd: fake(args)  # type: ignore[method-assign]
    again.start(launch)  # a second start of the same run folder refuses to submit
    assert [c[0] for c in fake.calls].count("sbatch") == 1 and again.poll() == 1
    back = SlurmExecutor(Settings(slurm_poll_seconds=0.001), run=fake)
    assert back.reattach(launch) and back.job_id == "4242"
    fake.squeue = ["COMPLETED|None|node07|0|"]
    assert finish(back) == 0 and [c[0] for c in fake.calls].count("sbatch") == 1
    assert not SlurmExecutor(Settings()).reattach(train_launch(write_spec(tmp_path / "other")))


def finish(ex: SlurmExecutor) -> int:
    for _ in range(20):
        rc = ex.poll()
        if rc is not None:
            return rc
        ex.checked_at = 0.0
    raise AssertionError("never finished")


def test_timeout_ends_with_its_reason_and_a_nonzero_code(tmp_path):
    fake = FakeSlurm(
        ["PENDING|Priority||0|", "RUNNING|None|node07|0|", "TIMEOUT|TimeLimit|node07|0|"],
        sacct="TIMEOUT|0:15|TimeLimit|node07\n",
    )
    ex = started(tmp_path, fake)
    assert (tmp_path / "run" / "slurm_job_id").read_text() == "4242\n"
    assert finish(ex) == 143
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert "slurm: submitted batch job 4242" in log
    assert "slurm: job 4242 PENDING (reason: Priority)" in log and "slurm: job 4242 RUNNING on node07" in log
    assert log[-1] == (
        "slurm: job 4242 ended TIMEOUT on node07 (reason: TimeLimit), exit code 143: the time "
        "limit was reached; resume from the last checkpoint"
    )


def test_without_accounting_the_end_comes_from_scontrol(tmp_path):
    fake = FakeSlurm(
        ["RUNNING|None|vm|0|", ""],
        scontrol="JobId=4242 JobState=FAILED Reason=NonZeroExitCode ExitCode=124:0 NodeList=vm\n",
    )
    ex = started(tmp_path, fake)
    assert finish(ex) == 124
    assert "before the time limit; resume the job to continue" in (tmp_path / "run" / "log.txt").read_text()


def test_sbatch_refusal_fails_the_job_with_slurms_message(tmp_path):
    ex = started(tmp_path, FakeSlurm([], sbatch_rc=1))
    assert ex.poll() == 1
    assert (
        "slurm: sbatch refused the job: sbatch: error: Invalid account"
        in (tmp_path / "run" / "log.txt").read_text()
    )


def test_cancel_signals_the_training_step_and_kill_escalates(tmp_path):
    fake = FakeSlurm(["RUNNING|None|vm|0|"])
    ex = started(tmp_path, fake)
    assert ex.poll() is None
    ex.terminate()
    ex.kill()
    scancels = [c for c in fake.calls if c[0] == "scancel"]
    assert scancels == [
        ["scancel", "--signal=TERM", "4242"],
        ["scancel", "--signal=KILL", "--full", "4242"],
        ["scancel", "4242"],
    ]


def test_pending_job_is_cancelled_outright(tmp_path):
    fake = FakeSlurm(["PENDING|Resources||0|"])
    ex = started(tmp_path, fake)
    ex.poll()
    ex.terminate()
    assert [c for c in fake.calls if c[0] == "scancel"] == [["scancel", "4242"]]


def test_requeue_seen_by_its_restart_count_is_told_in_the_log(tmp_path):
    # Between two polls the job was requeued and restarted elsewhere: only the count shows it.
    fake = FakeSlurm(
        ["RUNNING|None|vn1|0|", "RUNNING|None|vn2|1|", "COMPLETED|None|vn2|1|"],
        scontrol="JobState=COMPLETED ExitCode=0:0 NodeList=vn2",
    )
    assert finish(started(tmp_path, fake)) == 0
    log = (tmp_path / "run" / "log.txt").read_text().splitlines()
    assert (
        log.index("slurm: job 4242 RUNNING on vn1")
        < log.index(
            "slurm: job 4242 was requeued by Slurm (node failure or preemption); it resumes from its last "
            "checkpoint when it starts again"
        )
        < log.index("slurm: job 4242 RUNNING on vn2")
    )


def test_exit_codes_follow_the_shell_convention():
    assert slurm_state.JobState("COMPLETED", exit_code=0).outcome_code() == 0
    assert slurm_state.JobState("FAILED", exit_code=1).outcome_code() == 1
    assert slurm_state.JobState("CANCELLED", exit_code=0).outcome_code() == 143
    assert slurm_state.JobState("NODE_FAIL").outcome_code() == 137
    assert slurm_state._exit_code("0:9") == 137 and slurm_state._exit_code("2:0") == 2


def test_requeued_run_resumes_from_the_newest_complete_checkpoint(tmp_path):
    spec_path = write_spec(tmp_path)
    for step, complete in ((5, True), (10, True), (15, False)):
        ckpt = tmp_path / "checkpoints" / f"checkpoint-{step}"
        ckpt.mkdir(parents=True)
        (ckpt / "trainer_state.json").write_text("{}")  # rank 0's last file: other ranks may still write
        if complete:
            seal(ckpt, step)
    assert latest_complete(tmp_path / "checkpoints") == tmp_path / "checkpoints" / "checkpoint-10"
    resumed = TrainingSpec.read(requeue_spec(spec_path))
    assert resumed.resume_from_checkpoint == str(tmp_path / "checkpoints" / "checkpoint-10")

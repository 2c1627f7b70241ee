"""The training log says why the first DeepSpeed run is silent for minutes (op compilation)."""

from __future__ import annotations

from worker.training.callbacks import compile_notice


def test_first_run_notice_names_the_ops_deepspeed_must_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    notice = compile_notice(2, "none", use_gpu=False, optimizer="adamw_deepspeed")
    assert notice and "fused_adam" in notice and "deepspeed_shm_comm" in notice and str(tmp_path) in notice
    assert "cpu_adam" in compile_notice(3, "optimizer", use_gpu=False, optimizer="adamw_deepspeed")
    # the default optimizer is torch's: only the CPU collectives are compiled, nothing on a GPU
    notice = compile_notice(2, "none", use_gpu=False)
    assert "deepspeed_shm_comm" in notice and "adam" not in notice
    assert compile_notice(2, "optimizer", use_gpu=True) is None
    for op in ("fused_adam", "deepspeed_shm_comm"):  # built once: later runs say nothing
        (tmp_path / op).mkdir(exist_ok=True)
        (tmp_path / op / f"{op}.so").write_bytes(b"")
    assert compile_notice(2, "none", use_gpu=False, optimizer="adamw_deepspeed") is None
    assert compile_notice(0, "none", use_gpu=False) is None  # no DeepSpeed, nothing to compile


def test_deepspeed_gets_torchs_fused_adamw_unless_asked_for_its_own():
    """No optimizer op for DeepSpeed to compile by default: its config asks for torch.optim.AdamW
    (fused); DeepSpeed's FusedAdam / cpu_adam only with optimizer adamw_deepspeed."""
    import pytest
    from pydantic import ValidationError

    from backend.core.spec import Hyperparameters
    from worker.training.train import deepspeed_config

    params = deepspeed_config(Hyperparameters(), bf16=True)["optimizer"]["params"]
    assert params["torch_adam"] is True and params["fused"] is True
    assert params["betas"] == [0.9, 0.999] and params["eps"] == 1e-8
    own = deepspeed_config(Hyperparameters(optimizer="adamw_deepspeed"), bf16=True)["optimizer"]["params"]
    assert "torch_adam" not in own and "fused" not in own
    with pytest.raises(ValidationError, match="needs zero_stage 1, 2 or 3"):
        Hyperparameters(optimizer="adamw_deepspeed", zero_stage=0)

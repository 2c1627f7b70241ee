"""The training log says why the first DeepSpeed run is silent for minutes (op compilation)."""

from __future__ import annotations

from worker.training.callbacks import compile_notice


def test_first_run_notice_names_the_ops_deepspeed_must_compile(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path))
    notice = compile_notice(2, "none", use_gpu=False)
    assert notice and "fused_adam" in notice and "deepspeed_shm_comm" in notice and str(tmp_path) in notice
    assert "cpu_adam" in compile_notice(3, "optimizer", use_gpu=False)
    for op in ("fused_adam", "deepspeed_shm_comm"):  # built once: later runs say nothing
        (tmp_path / op).mkdir(exist_ok=True)
        (tmp_path / op / f"{op}.so").write_bytes(b"")
    assert compile_notice(2, "none", use_gpu=False) is None
    assert compile_notice(0, "none", use_gpu=False) is None  # no DeepSpeed, nothing to compile

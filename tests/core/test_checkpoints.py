"""Checkpoint rotation runs after the seal: at any moment a sealed checkpoint is left to
resume from, whatever save_total_limit is (the Trainer's own rotation deletes first)."""

from __future__ import annotations

from pathlib import Path

from backend.core.checkpoints import latest_complete, rotate, seal


def make(root: Path, step: int, sealed: bool) -> Path:
    ckpt = root / f"checkpoint-{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.json").write_text("{}")
    if sealed:
        seal(ckpt, step)
    return ckpt


def names(root: Path) -> list[str]:
    return sorted((p.name for p in root.iterdir()), key=lambda n: int(n.split("-")[1]))


def test_rotation_keeps_the_newest_sealed_and_never_a_folder_being_written(tmp_path):
    root = tmp_path / "checkpoints"
    make(root, 10, sealed=True)
    make(root, 20, sealed=False)  # a cut save of an earlier attempt
    make(root, 30, sealed=True)
    make(root, 40, sealed=False)  # being written by the other ranks right now
    assert [p.name for p in rotate(root, keep=1)] == ["checkpoint-10", "checkpoint-20"]
    assert names(root) == ["checkpoint-30", "checkpoint-40"]
    assert latest_complete(root) == root / "checkpoint-30"  # still something to resume from


def test_rotation_keeps_as_many_sealed_as_asked(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (5, 10, 15, 20):
        make(root, step, sealed=True)
    assert [p.name for p in rotate(root, keep=2)] == ["checkpoint-5", "checkpoint-10"]
    assert names(root) == ["checkpoint-15", "checkpoint-20"]
    assert rotate(root, keep=2) == []


def test_nothing_sealed_nothing_deleted(tmp_path):
    root = tmp_path / "checkpoints"
    make(root, 10, sealed=False)
    assert rotate(root, keep=1) == [] and names(root) == ["checkpoint-10"]
    assert rotate(tmp_path / "absent", keep=1) == []

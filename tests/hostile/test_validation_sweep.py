"""A background validation whose API process stopped is failed and its staged files removed;
one that a live process still beats is left alone (several API replicas share the rows)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from backend.db.models import Dataset
from backend.db.session import session_scope
from backend.services import dataset_checks, dataset_sweep
from backend.settings import get_settings


def _row(s, root, beat_ago_s: float | None, created_ago_s: float = 3600) -> int:  # noqa: ANN001
    now = datetime.now(UTC)
    ds = Dataset(name="big", root=str(root), annotation=str(root / "a.jsonl"), status="validating", progress=0.3,
                 created_at=now - timedelta(seconds=created_ago_s),
                 heartbeat_at=None if beat_ago_s is None else now - timedelta(seconds=beat_ago_s))
    s.add(ds)
    s.commit()
    return ds.id


def test_stale_validations_are_swept_with_their_files(api, tmp_path, monkeypatch):
    settings = get_settings()
    staged = settings.data_path / "datasets" / "77"
    (staged / "images").mkdir(parents=True)
    (staged / "a.jsonl").write_text("{}\n")
    (settings.data_path / "datasets" / "78").mkdir()
    shared = tmp_path / "shared"  # registered in place: the user's own files
    shared.mkdir()
    (shared / "a.jsonl").write_text("{}\n")
    with session_scope() as s:
        dead = _row(s, staged, beat_ago_s=600)
        dead_in_place = _row(s, shared, beat_ago_s=None)
        alive_elsewhere = _row(s, settings.data_path / "datasets" / "78", beat_ago_s=5)
        mine = _row(s, staged, beat_ago_s=600)
    monkeypatch.setattr(dataset_checks, "running_ids", lambda: [mine])
    with session_scope() as s:
        swept = dataset_sweep.sweep_stale_validations(s, settings, timeout_s=60)
    assert sorted(swept) == sorted([dead, dead_in_place])
    with session_scope() as s:
        rows = {i: s.get(Dataset, i) for i in (dead, dead_in_place, alive_elsewhere, mine)}
        assert rows[dead].status == rows[dead_in_place].status == "failed"
        assert "API process running it stopped" in rows[dead].report["message"]
        assert rows[alive_elsewhere].status == rows[mine].status == "validating"
        assert (datetime.now(UTC) - rows[mine].heartbeat_at.replace(tzinfo=UTC)).total_seconds() < 30
    assert not staged.exists()  # the dead upload's staged files
    assert (shared / "a.jsonl").exists()  # never the user's files
    assert (settings.data_path / "datasets" / "78").exists()  # nor those of a validation still beaten
    assert api.get(f"/api/datasets/{dead}").json()["status"] == "failed"
    with session_scope() as s:  # a second sweep (another replica) finds nothing left to claim
        assert dataset_sweep.sweep_stale_validations(s, settings, timeout_s=60) == []

"""The job view shows the speed telemetry of issue 14 (cards and plot frames)."""

from __future__ import annotations

from ui.pages import job_view


def rows(**values):
    return [{"step": k + 1, "loss": 2.0 - k / 10, "values": {"step": k + 1, **values}} for k in range(3)]


def test_speed_cards_show_mfu_packing_and_data_wait():
    html = job_view.metric_cards(rows(mfu=0.4321, packing_efficiency=0.987, dataloader_wait_fraction=0.02,
                                      tokens_per_second=1234.0))
    assert "MFU" in html and "43.2%" in html
    assert "Packing efficiency" in html and "99%" in html
    assert "Data wait" in html and "2%" in html


def test_runs_without_speed_telemetry_show_no_speed_cards_and_empty_frames():
    html = job_view.metric_cards(rows(tokens_per_second=10.0))
    assert "MFU" not in html and "Packing efficiency" not in html
    assert job_view.series_frame(rows(tokens_per_second=10.0), "mfu", "mfu").empty
    frame = job_view.series_frame(rows(mfu=0.5), "mfu", "mfu")
    assert frame["mfu"].tolist() == [0.5, 0.5, 0.5] and frame["mfu"].dtype == float
    assert set(job_view.OPTIONAL_SERIES) >= {"mfu", "packing_efficiency", "dataloader_wait_fraction"}

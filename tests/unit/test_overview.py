"""The run summary printed at the end of a download."""

from __future__ import annotations

from flowdc.overview import summary_text


def test_the_summary_says_when_the_client_set_the_pace() -> None:
    overview = {"totals": {"ok": 9, "rows": 10, "failed": 1, "skipped": 0}, "success_rate": 0.9, "errors": {},
                "elapsed_s": 20.0, "images_per_s": 4.5, "mb_per_s": 0.1,
                "this_run": {"ok": 9, "failed": 1, "skipped": 0, "already_done": 0, "retries": 0, "bytes": 9000,
                             "client_busy_share": 0.8}}
    assert "this machine set the pace for 80% of the run" in summary_text(overview, "out")
    overview["this_run"]["client_busy_share"] = 0.1
    assert "set the pace" not in summary_text(overview, "out")
    overview["this_run"]["client_busy_share"], overview["elapsed_s"] = 1.0, 0.2
    assert "set the pace" not in summary_text(overview, "out")  # a 0.2-s run: a tick or two, nothing to gain


def test_the_summary_says_how_many_reasons_it_leaves_out() -> None:
    errors = {f"http_{400 + i}": 10 - i for i in range(7)}
    overview = {"totals": {"ok": 0, "rows": 49, "failed": 49, "skipped": 0}, "success_rate": 0.0, "errors": errors,
                "elapsed_s": 1.0, "images_per_s": 0.0, "mb_per_s": 0.0,
                "this_run": {"ok": 0, "failed": 49, "skipped": 0, "already_done": 0, "retries": 0, "bytes": 0}}
    text = summary_text(overview, "out")
    assert "http_400 x10" in text and "http_404 x6" in text and "http_405" not in text
    assert "and 2 more reasons (overview.json)" in text


def test_an_interrupted_runs_summary_counts_the_manifests_rows() -> None:
    """Stopped after 1,552 of a 3,000-row parquet manifest's rows: not "1552/1552 (100.0%)"."""
    overview = {"totals": {"ok": 1552, "rows": 1552, "failed": 0, "skipped": 0}, "success_rate": 1.0, "errors": {},
                "manifest_rows": 3000, "elapsed_s": 3.0, "images_per_s": 517.0, "mb_per_s": 1.0, "interrupted": True,
                "this_run": {"ok": 1552, "failed": 0, "skipped": 0, "already_done": 0, "retries": 0, "bytes": 10**6}}
    assert summary_text(overview, "out").startswith("flowdc: 1552/3000 rows stored (51.7%)")
    overview["manifest_rows"] = None  # csv: not known up front, so no share claimed (it read "1552/1552 (100.0%)")
    assert summary_text(overview, "out").startswith("flowdc: 1552 rows stored so far, of a manifest not read to "
                                                    "its end, 0 failed")

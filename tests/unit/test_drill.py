"""drill.yml's report: its summary and its metrics (filter_plugins/baton_drill.py)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "filter_plugins"))

from baton_drill import baton_drill_metrics, baton_drill_summary

PASSED = {
    "kind": "drill", "run_id": "drill-20261206T120000Z", "region": "eu-west",
    "node": "eu-west-1", "holder_region": "us-east", "started_at": 1796558000.0,
    "backup": "20261206-120945F", "restored_bytes": 31178703, "estimate_seconds": 1.5,
    "restore_seconds": 4.2, "replay_seconds": 6.1, "recovery_seconds": 10.3,
    "restored_up_to": 1796557940.0, "archive_rpo_seconds": 60.0, "tables": 3, "rows": 1200,
    "write_ok": True, "result": "passed", "cleaned_up": True,
}


def test_a_passed_drill_says_what_was_restored_measured_and_checked():
    text = "\n".join(baton_drill_summary(PASSED))
    assert "PASSED in region eu-west (node eu-west-1); the baton stayed with us-east" in text
    assert "restored backup 20261206-120945F (31178703 bytes)" in text
    assert "up to 2026-12-06 11:52:20+00" in text
    assert "measured recovery: 10.3 s (copy 4.2 s, replay and promotion 6.1 s" in text
    assert "3 tables read in full (1200 rows" in text and "a write accepted" in text
    assert "cleaned up: yes" in text


def test_a_failed_drill_names_the_step_and_says_whether_it_was_cleaned_up():
    failed = {"run_id": "drill-x", "region": "eu-west", "node": "eu-west-1",
              "holder_region": "us-east", "result": "failed", "cleaned_up": False,
              "failed_task": "Restore the backup", "failure": "no route to host"}
    lines = baton_drill_summary(failed)
    assert lines[0].startswith("drill drill-x: FAILED")
    assert "failed at: Restore the backup: no route to host" in lines
    assert lines[-1] == "cleaned up: NO (see above)"
    assert not any("measured recovery" in line for line in lines)


def test_the_metrics_give_the_result_and_only_the_figures_that_were_measured():
    text = baton_drill_metrics(PASSED, 1796558100.4)
    assert 'baton_drill_success{region="eu-west"} 1' in text
    assert 'baton_drill_last_run_timestamp_seconds{region="eu-west"} 1796558100' in text
    assert 'baton_drill_recovery_seconds{region="eu-west"} 10.3' in text
    assert 'baton_drill_archive_rpo_seconds{region="eu-west"} 60' in text
    failed = baton_drill_metrics({"region": "eu-west", "result": "failed"}, 1.0)
    assert 'baton_drill_success{region="eu-west"} 0' in failed
    assert "recovery_seconds" not in failed

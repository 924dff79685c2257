"""drill.yml's report: its summary lines and its node_exporter metrics.

Pure logic over the report dictionary drill.yml builds; unit-tested (tests/unit/test_drill.py).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def _when(epoch: float | None) -> str:
    if epoch is None:
        return "unknown"
    return datetime.fromtimestamp(float(epoch), UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def baton_drill_summary(report: dict[str, Any]) -> list[str]:
    """The drill's outcome, a line each, as an operator reads it."""
    ok = report.get("result") == "passed"
    lines = [f"drill {report.get('run_id')}: {'PASSED' if ok else 'FAILED'} in region "
             f"{report.get('region')} (node {report.get('node')}); the baton stayed with "
             f"{report.get('holder_region')}"]
    if not ok:
        lines.append(f"failed at: {report.get('failed_task')}: {report.get('failure')}")
    if report.get("backup"):
        lines.append(f"restored backup {report['backup']} ({report.get('restored_bytes', 0)} "
                     f"bytes) from {report.get('repository') or 'the repository'} and the WAL "
                     f"after it, up to {_when(report.get('restored_up_to'))}")
    if report.get("recovery_seconds") is not None:
        lines.append(f"measured recovery: {report['recovery_seconds']} s (copy "
                     f"{report.get('restore_seconds')} s, replay and promotion "
                     f"{report.get('replay_seconds')} s; the plan estimated "
                     f"{report.get('estimate_seconds')} s)")
    if report.get("archive_rpo_seconds") is not None:
        lines.append(f"the archive reached {report['archive_rpo_seconds']} s before the drill "
                     "began (what a restore from it would lose, at most, if writes were steady)")
    if report.get("tables") is not None:
        lines.append(f"checked: {report['tables']} tables read in full ({report.get('rows')} "
                     f"rows, page checksums verified), a write "
                     f"{'accepted' if report.get('write_ok') else 'NOT accepted'}")
    lines.append(f"cleaned up: {'yes' if report.get('cleaned_up') else 'NO (see above)'}")
    return lines


def baton_drill_metrics(report: dict[str, Any], now: float) -> str:
    """node_exporter textfile metrics of the latest drill (global site)."""
    label = f'region="{report.get("region", "")}"'
    ok = 1 if report.get("result") == "passed" else 0
    out = [
        "# HELP baton_drill_last_run_timestamp_seconds When the latest drill ended.",
        "# TYPE baton_drill_last_run_timestamp_seconds gauge",
        f"baton_drill_last_run_timestamp_seconds{{{label}}} {now:.0f}",
        "# HELP baton_drill_success Whether the latest drill passed (restore, checks, cleanup).",
        "# TYPE baton_drill_success gauge",
        f"baton_drill_success{{{label}}} {ok}",
    ]
    for key, name, text in (
            ("recovery_seconds", "baton_drill_recovery_seconds",
             "Measured recovery time of the latest drill (copy, replay, promotion)."),
            ("restored_bytes", "baton_drill_restored_bytes",
             "Size of the backup the latest drill restored."),
            ("archive_rpo_seconds", "baton_drill_archive_rpo_seconds",
             "How far behind the drill's start the restored data reached.")):
        if report.get(key) is not None:
            out += [f"# HELP {name} {text}", f"# TYPE {name} gauge",
                    f"{name}{{{label}}} {float(report[key]):g}"]
    return "\n".join(out) + "\n"


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"baton_drill_summary": baton_drill_summary,
                "baton_drill_metrics": baton_drill_metrics}

#!/usr/bin/python3
"""Baton: the backup repository's state for Prometheus (node_exporter's textfile collector).

Runs on the repository host (a timer, and after every backup): reads `pgbackrest info` and
the backup units' state, and writes baton_backup_* metrics atomically.

    baton-backup-metrics STANZA TEXTFILE_DIR [TYPE RESULT]

After a backup (the unit's ExecStopPost), TYPE and RESULT (systemd's $SERVICE_RESULT) give that
backup's outcome: the unit is not marked failed yet while its ExecStopPost runs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

TYPES = ("full", "diff", "incr")


def read_info(stanza: str) -> tuple[list, str]:
    try:
        run = subprocess.run(["runuser", "-u", "postgres", "--", "pgbackrest",
                              f"--stanza={stanza}", "--output=json", "--log-level-file=off",
                              "--log-level-console=off", "info"],
                             capture_output=True, text=True, timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], str(exc)
    if run.returncode != 0:
        return [], (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    try:
        return json.loads(run.stdout), ""
    except ValueError as exc:
        return [], f"unreadable output: {exc}"


def unit_failed(kind: str) -> int:
    run = subprocess.run(["systemctl", "is-failed", "--quiet", f"baton-backup@{kind}.service"],
                         check=False)
    return 1 if run.returncode == 0 else 0


def render(stanza: str, info: list, error: str, failed: dict[str, int], now: float) -> str:
    label = f'stanza="{stanza}"'
    lines = [
        "# HELP baton_backup_info_up Whether pgbackrest info read the repository.",
        "# TYPE baton_backup_info_up gauge",
        f"baton_backup_info_up{{{label}}} {0 if error or not info else 1}",
        "# HELP baton_backup_metrics_timestamp_seconds When these metrics were written.",
        "# TYPE baton_backup_metrics_timestamp_seconds gauge",
        f"baton_backup_metrics_timestamp_seconds{{{label}}} {now:.0f}",
        "# HELP baton_backup_unit_failed Whether the last backup of this type failed (systemd).",
        "# TYPE baton_backup_unit_failed gauge",
    ]
    lines += [f'baton_backup_unit_failed{{{label},type="{k}"}} {v}' for k, v in failed.items()]
    if error or not info:
        return "\n".join(lines) + "\n"
    data = info[0]
    backups = [b for b in data.get("backup", []) if not b.get("error")]
    lines += ["# HELP baton_backup_status_code pgBackRest's stanza status (0 ok, 2 no backup).",
              "# TYPE baton_backup_status_code gauge",
              f"baton_backup_status_code{{{label}}} {data.get('status', {}).get('code', 99)}",
              "# HELP baton_backup_last_success_timestamp_seconds End of the newest backup "
              "of each type.",
              "# TYPE baton_backup_last_success_timestamp_seconds gauge"]
    for kind in TYPES:
        ends = [b["timestamp"]["stop"] for b in backups if b.get("type") == kind]
        if ends:
            lines.append(f'baton_backup_last_success_timestamp_seconds{{{label},type="{kind}"}} '
                         f"{max(ends)}")
    lines += ["# HELP baton_backup_count Backups in the repository, by type.",
              "# TYPE baton_backup_count gauge"]
    lines += [f'baton_backup_count{{{label},type="{kind}"}} '
              f"{sum(1 for b in backups if b.get('type') == kind)}" for kind in TYPES]
    if backups:
        newest = max(backups, key=lambda b: b["timestamp"]["stop"])
        size = newest.get("info", {}).get("size", 0)
        took = newest["timestamp"]["stop"] - newest["timestamp"]["start"]
        lines += ["# HELP baton_backup_last_size_bytes Database size in the newest backup.",
                  "# TYPE baton_backup_last_size_bytes gauge",
                  f"baton_backup_last_size_bytes{{{label}}} {size}",
                  "# HELP baton_backup_last_duration_seconds How long the newest backup took.",
                  "# TYPE baton_backup_last_duration_seconds gauge",
                  f"baton_backup_last_duration_seconds{{{label}}} {took}"]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) not in (3, 5):
        print("usage: baton-backup-metrics STANZA TEXTFILE_DIR [TYPE RESULT]", file=sys.stderr)
        return 2
    stanza, folder = argv[1], argv[2]
    info, error = read_info(stanza)
    if error:
        print(f"baton-backup-metrics: pgbackrest info: {error}", file=sys.stderr)
    failed = {k: unit_failed(k) for k in ("full", "diff")}
    if len(argv) == 5:
        failed[argv[3]] = 0 if argv[4] == "success" else 1
    text = render(stanza, info, error, failed, time.time())
    os.makedirs(folder, mode=0o755, exist_ok=True)  # a host without node_exporter yet
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".baton_backup.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(folder, "baton_backup.prom"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

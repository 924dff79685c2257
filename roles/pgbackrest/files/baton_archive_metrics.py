#!/usr/bin/python3
"""Baton: WAL archiving on this node, for Prometheus (node_exporter's textfile collector).

Runs on every region node (a timer, every minute): reads PostgreSQL's pg_stat_archiver and
writes baton_archive_* metrics atomically. Only a primary archives; a standby's figures are
written with baton_archive_primary 0, so that alerts look at the holder's alone.

    baton-archive-metrics PORT TEXTFILE_DIR
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

QUERY = ("SELECT pg_is_in_recovery()::int, "
         "coalesce(extract(epoch FROM last_archived_time), 0), "
         "coalesce(extract(epoch FROM last_failed_time), 0), archived_count, failed_count "
         "FROM pg_stat_archiver")


def read_archiver(port: str) -> tuple[list[float], str]:
    try:
        run = subprocess.run(["runuser", "-u", "postgres", "--", "psql", "-p", port, "-h",
                              "/var/run/postgresql", "-d", "postgres", "-XAtF", " ", "-c",
                              QUERY], capture_output=True, text=True, timeout=20, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [], str(exc)
    if run.returncode != 0:
        return [], (run.stderr.strip().splitlines() or [f"exit {run.returncode}"])[-1]
    try:
        return [float(v) for v in run.stdout.split()], ""
    except ValueError:
        return [], f"unreadable output: {run.stdout.strip()[:200]}"


def render(values: list[float], now: float) -> str:
    lines = ["# HELP baton_archive_up Whether PostgreSQL answered the archiver's figures.",
             "# TYPE baton_archive_up gauge", f"baton_archive_up {1 if len(values) == 5 else 0}",
             "# HELP baton_archive_metrics_timestamp_seconds When these metrics were written.",
             "# TYPE baton_archive_metrics_timestamp_seconds gauge",
             f"baton_archive_metrics_timestamp_seconds {now:.0f}"]
    if len(values) != 5:
        return "\n".join(lines) + "\n"
    recovery, archived_at, failed_at, archived, failed = values
    lines += [
        "# HELP baton_archive_primary 1 when this node is a primary (the one that archives).",
        "# TYPE baton_archive_primary gauge", f"baton_archive_primary {0 if recovery else 1}",
        "# HELP baton_archive_last_success_timestamp_seconds When the last WAL segment was "
        "archived (0: never since the statistics began).",
        "# TYPE baton_archive_last_success_timestamp_seconds gauge",
        f"baton_archive_last_success_timestamp_seconds {archived_at:.3f}",
        "# HELP baton_archive_last_failure_timestamp_seconds When archiving last failed (0: "
        "never).",
        "# TYPE baton_archive_last_failure_timestamp_seconds gauge",
        f"baton_archive_last_failure_timestamp_seconds {failed_at:.3f}",
        "# HELP baton_archive_archived_total WAL segments archived since the statistics began.",
        "# TYPE baton_archive_archived_total counter",
        f"baton_archive_archived_total {archived:.0f}",
        "# HELP baton_archive_failed_total Failed archive attempts since the statistics began.",
        "# TYPE baton_archive_failed_total counter",
        f"baton_archive_failed_total {failed:.0f}",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print("usage: baton-archive-metrics PORT TEXTFILE_DIR", file=sys.stderr)
        return 2
    values, error = read_archiver(argv[1])
    if error:
        print(f"baton-archive-metrics: {error}", file=sys.stderr)
    folder = argv[2]
    os.makedirs(folder, mode=0o755, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".baton_archive.")
    with os.fdopen(fd, "w") as handle:
        handle.write(render(values, time.time()))
    os.chmod(tmp, 0o644)
    os.replace(tmp, os.path.join(folder, "baton_archive.prom"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

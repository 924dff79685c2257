"""Ansible callback: where a Baton run's time goes.

Silent unless BATON_PROFILE is set (to 1, or to a file path that receives the table as JSON
too). At the end of the run it prints every task in the order it started: its start, counted
from the run's start, its duration and its host count, and a line for the window in which
clients were held (from the task that pauses PgBouncer to the one that resumes it, the tasks
named "Hold ..." and "... let the queries through").

    BATON_PROFILE=1 ansible-playbook switchover.yml -e target=us-west
"""

from __future__ import annotations

import json
import os
import time

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = r"""
name: baton_profile
type: aggregate
short_description: Per-task timeline of a Baton run (when BATON_PROFILE is set)
description:
  - Prints, at the end of the run, each task's start (from the run's start), its duration and
    how many hosts ran it, in the order the tasks started, and the window in which clients were
    held (PgBouncer paused until resumed).
  - Silent unless the environment variable BATON_PROFILE is set. When it names a path (not
    C(1)), the table is also written there as JSON.
requirements: [enabled in ansible.cfg (callbacks_enabled)]
"""

HOLD_START = "Hold the application's queries"
HOLD_END = "let the queries through"


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "baton_profile"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self) -> None:
        super().__init__()
        self.wanted = os.environ.get("BATON_PROFILE", "") not in ("", "0")
        self.started = time.time()
        self.rows: list[dict] = []
        self.current: dict | None = None

    def _close(self) -> None:
        if self.current is not None:
            self.current["seconds"] = round(time.time() - self.current["at"], 3)
            self.current = None

    def _open(self, task, kind: str = "task") -> None:
        self._close()
        name = task.get_name().strip()
        self.current = {"task": name, "at": time.time(), "hosts": 0, "kind": kind}
        self.rows.append(self.current)

    def v2_playbook_on_play_start(self, play) -> None:
        self._close()

    def v2_playbook_on_task_start(self, task, is_conditional) -> None:
        self._open(task)

    def v2_playbook_on_handler_task_start(self, task) -> None:
        self._open(task, "handler")

    def _count(self, result, *_args, **_kwargs) -> None:
        if self.current is not None:
            self.current["hosts"] += 1

    v2_runner_on_ok = v2_runner_on_failed = v2_runner_on_unreachable = _count

    def v2_playbook_on_stats(self, stats) -> None:
        self._close()
        if not self.wanted:
            return
        total = time.time() - self.started
        lines = [f"PROFILE ({total:.1f} s in all; start and duration in seconds)",
                 f"{'start':>7} {'took':>7} {'hosts':>5}  task"]
        hold_from = hold_to = None
        for row in self.rows:
            start = row["at"] - self.started
            if row["hosts"] == 0 and row["seconds"] < 0.05:
                continue  # skipped everywhere, costs nothing
            lines.append(f"{start:7.2f} {row['seconds']:7.2f} {row['hosts']:5d}  {row['task']}")
            if row["task"].startswith(HOLD_START) and row["hosts"]:
                hold_from = row["at"]
            if HOLD_END in row["task"] and row["hosts"]:
                hold_to = row["at"] + row["seconds"]
        if hold_from is not None and hold_to is not None:
            lines.append(f"clients held by PgBouncer: {hold_to - hold_from:.2f} s (from "
                         f"{hold_from - self.started:.2f} s to {hold_to - self.started:.2f} s)")
        self._display.display("\n".join(lines))
        path = os.environ.get("BATON_PROFILE", "")
        if path not in ("1", "true", "yes"):
            with open(path, "w", encoding="utf-8") as handle:
                json.dump({"seconds": round(total, 3), "tasks": [
                    dict(row, at=round(row["at"] - self.started, 3)) for row in self.rows]},
                    handle, indent=2)

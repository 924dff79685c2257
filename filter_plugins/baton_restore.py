"""restore.yml's plan: which backup, which recovery target, how much to copy and replay.

Pure decision logic over `pgbackrest info --output=json`, unit-tested with recorded output.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Any

SEGMENT = 16 * 1024 * 1024
# Rough rates for the estimate when no drill has measured this deployment's (bytes per second).
COPY_RATE = 50 * 1024 * 1024
REPLAY_RATE = 20 * 1024 * 1024
KINDS = ("time", "lsn", "name", "latest")


def parse_time(text: str) -> datetime:
    """'2026-12-06 08:30:00+00' (zone required) -> aware datetime; ValueError otherwise."""
    value = text.strip().replace("T", " ")
    value = re.sub(r"Z$", "+00:00", value)
    value = re.sub(r"([+-]\d\d)$", r"\1:00", value)
    value = re.sub(r"([+-]\d\d)(\d\d)$", r"\1:\2", value)
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{text} has no time zone")
    return parsed


def parse_lsn(text: str) -> int:
    high, low = text.strip().split("/")
    return (int(high, 16) << 32) | int(low, 16)


def segment_number(name: str) -> int:
    """WAL file name (timeline, log, seg) -> a running segment number (16 MiB segments)."""
    return int(name[8:16], 16) * 256 + int(name[16:24], 16)


def _when(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%d %H:%M:%S+00")


def _size(nbytes: float) -> str:
    return f"{nbytes / 1024 / 1024:.0f} MiB" if nbytes < 1024 ** 3 else \
        f"{nbytes / 1024 ** 3:.1f} GiB"


def baton_restore_plan(info: str | list, kind: str, value: str, rc: int = 0, stderr: str = "",
                       now: float | None = None, repo: int | str = 0,
                       prefer: list | tuple = (2, 1)) -> dict[str, Any]:
    """The plan, or a refusal (one sentence) when no repository can restore the target.

    With several repositories (pgBackRest's repo1, repo2...), `repo` names the one to use;
    without it the first of `prefer` that can restore the target is used (the region's own
    repository, repo2, before the off-region one, repo1): a repository that does not answer,
    was deleted or does not go back far enough is passed over for the next."""
    plan: dict[str, Any] = {"refusal": "", "set": "", "target_options": [], "text": "",
                            "target_text": "", "repo": 0, "repo_options": [], "passed_over": []}
    if kind not in KINDS:
        plan["refusal"] = f"unknown recovery target kind {kind}: use one of {', '.join(KINDS)}."
        return plan
    if rc != 0:
        last = (stderr.strip().splitlines() or ["no output"])[-1]
        plan["refusal"] = (f"the repository did not answer (pgbackrest info: {last}): check "
                           "that the repository host runs pgBackRest's TLS server (systemd "
                           "unit pgbackrest) and is reachable on its port, then run again.")
        return plan
    stanzas = json.loads(info) if isinstance(info, str) else info
    if not stanzas:
        plan["refusal"] = ("the repository knows no stanza: run site.yml (role pgbackrest "
                           "creates it), then run again.")
        return plan
    stanza = stanzas[0]
    statuses = {int(r.get("key", 1)): r.get("status", {}) for r in stanza.get("repo", [])}
    keys = sorted(set(statuses) | {int(b.get("database", {}).get("repo-key", 1))
                                   for b in stanza.get("backup", [])} or {1})
    several = len(keys) > 1
    try:
        wanted = int(repo or 0)
    except (TypeError, ValueError):
        wanted = -1
    if wanted:
        if wanted not in keys:
            plan["refusal"] = (f"repo {repo} is not one of this node's repositories "
                               f"({', '.join(f'repo{k}' for k in keys)}): choose one of them.")
            return plan
        order = [wanted]
    else:
        order = [int(k) for k in prefer if int(k) in keys] + [k for k in keys
                                                              if k not in [int(p) for p in prefer]]
    last: dict[str, Any] = {}
    for key in order:
        one = _plan_in_repo(stanza, key, statuses.get(key, stanza.get("status", {})), kind,
                            value, now, several)
        if not one["refusal"]:
            one["passed_over"] = [f"repo{p['repo']}: {p['refusal']}" for p in plan["passed_over"]]
            return one
        plan["passed_over"].append(one)
        last = one
    plan["refusal"] = last["refusal"]
    plan["passed_over"] = [f"repo{p['repo']}: {p['refusal']}" for p in plan["passed_over"][:-1]]
    return plan


def _plan_in_repo(stanza: dict, key: int, status: dict, kind: str, value: str,
                  now: float | None, several: bool) -> dict[str, Any]:
    """The plan from one repository's backups and WAL, or why that repository cannot."""
    where = f"repo{key}" if several else "the repository"
    plan: dict[str, Any] = {"refusal": "", "set": "", "target_options": [], "text": "",
                            "target_text": "", "repo": key, "repo_options": [f"--repo={key}"]}

    def refuse(why: str) -> dict[str, Any]:
        plan["refusal"] = why
        return plan

    backups = [b for b in stanza.get("backup", [])
               if not b.get("error") and int(b.get("database", {}).get("repo-key", 1)) == key]
    if status.get("code") not in (0, None) and not backups:
        return refuse(f"stanza {stanza.get('name')} cannot be restored from {where}: "
                      f"{status.get('message', 'unknown status')} (pgbackrest info).")
    if not backups:
        return refuse(f"stanza {stanza.get('name')} has no backup in {where} yet: take one "
                      "(systemctl start baton-backup@full on the repository host), then run "
                      "again.")
    backups.sort(key=lambda b: b["timestamp"]["stop"])
    chosen = backups[-1]
    now = datetime.now(UTC).timestamp() if now is None else now
    options: list[str] = []
    if kind == "time":
        try:
            target = parse_time(value).timestamp()
        except ValueError:
            return refuse(f"target_time '{value}' is not a time with its zone: write it as "
                          "'YYYY-MM-DD HH:MM:SS+00'.")
        earlier = [b for b in backups if b["timestamp"]["stop"] <= target]
        if not earlier:
            first = backups[0]
            return refuse(f"target_time {value} is before the oldest backup's end "
                          f"({first['label']}, {_when(first['timestamp']['stop'])}): "
                          f"{where} cannot go back that far.")
        if target > now:
            return refuse(f"target_time {value} is in the future (now {_when(now)}): no WAL "
                          "reaches it yet.")
        chosen = earlier[-1]
        plan["target_text"] = f"time {value}"
        options = ["--type=time", f"--target={value}", "--target-action=promote"]
    elif kind == "lsn":
        try:
            target_lsn = parse_lsn(value)
        except ValueError:
            return refuse(f"target_lsn '{value}' is not an LSN: write it as PostgreSQL does, "
                          "e.g. 0/5000060.")
        earlier = [b for b in backups if parse_lsn(b["lsn"]["stop"]) <= target_lsn]
        if not earlier:
            first = backups[0]
            return refuse(f"target_lsn {value} is before the oldest backup's end "
                          f"({first['label']}, LSN {first['lsn']['stop']}): {where} "
                          "cannot go back that far.")
        chosen = earlier[-1]
        plan["target_text"] = f"LSN {value}"
        options = ["--type=lsn", f"--target={value}", "--target-action=promote"]
    elif kind == "name":
        # When the restore point was made is not known: the oldest backup reaches it wherever
        # it is (a newer one may have ended after it, and recovery would never find it).
        chosen = backups[0]
        plan["target_text"] = f"restore point {value}"
        options = ["--type=name", f"--target={value}", "--target-action=promote"]
    else:
        plan["target_text"] = f"the latest WAL in {where}"
    newest_wal = max((a.get("max") or "" for a in stanza.get("archive", [])
                      if int(a.get("database", {}).get("repo-key", 1)) == key), default="")
    stop_wal = chosen.get("archive", {}).get("stop") or ""
    wal_bytes = 0
    if newest_wal and stop_wal:
        wal_bytes = max(0, segment_number(newest_wal) - segment_number(stop_wal)) * SEGMENT
    copy_bytes = chosen.get("info", {}).get("size", 0)
    estimate = copy_bytes / COPY_RATE + wal_bytes / REPLAY_RATE
    plan.update({
        "set": chosen["label"],
        "target_options": options,
        "copy_bytes": copy_bytes,
        "wal_bytes_at_most": wal_bytes,
        "estimate_seconds": round(estimate, 1),
        "backup_stop": _when(chosen["timestamp"]["stop"]),
        "newest_wal": newest_wal,
    })
    plan["text"] = "\n".join([
        f"restore {plan['target_text']}",
        f"from backup {chosen['label']} ({chosen.get('type', '?')}, ended "
        f"{plan['backup_stop']}), repository repo{key}",
        f"copy {_size(copy_bytes)}; replay at most {_size(wal_bytes)} of WAL "
        f"(from {stop_wal or '?'} to {newest_wal or '?'})",
        f"estimated {estimate:.0f} s at {COPY_RATE // 2 ** 20} MiB/s copy and "
        f"{REPLAY_RATE // 2 ** 20} MiB/s replay (drill.yml measures this deployment's)",
    ])
    return plan


def baton_recovery_short(current_wal: str, newest_wal: str) -> str:
    """After a restore to the latest WAL: '' when recovery went through the newest archived
    segment, else a sentence (recovery stopped at a hole in the archive, before that segment).
    current_wal: the restored cluster's WAL file after its promotion."""
    if not current_wal or not newest_wal:
        return ""
    if segment_number(current_wal) >= segment_number(newest_wal):
        return ""
    return (f"recovery stopped in WAL segment {current_wal[8:]}, before the newest archived one "
            f"({newest_wal}): the archive is missing WAL in between (a lost primary's last "
            "segments, or WAL dropped by archive-push-queue-max), so the restored data ends "
            "earlier than the archive says")


def baton_in_place_step(earlier: dict | None, target: dict, again: bool = False) -> str:
    """What a restore in place does, from the note an earlier run left on the node (pure):
    "done" (the same target restored and every region cloned: nothing to do), "resume" (the
    same target restored and promoted, a later step stopped: go on without restoring twice) or
    "restore". again: restore even the same target once more."""
    earlier = earlier or {}
    if again or earlier.get("target") != target:
        return "restore"
    return {"done": "done", "promoted": "resume"}.get(str(earlier.get("state")), "restore")


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"baton_restore_plan": baton_restore_plan,
                "baton_recovery_short": baton_recovery_short,
                "baton_in_place_step": baton_in_place_step}

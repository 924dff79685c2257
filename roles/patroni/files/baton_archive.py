#!/usr/bin/python3
"""Baton (role patroni): PostgreSQL's and Patroni's way into the pgBackRest repositories.

    baton-archive --stanza=S [--repos=2,1] get WAL PATH   restore_command: a WAL file or history
    baton-archive --stanza=S [--repos=2,1] --data-dir=D clone
                                 Patroni's replica method "pgbackrest": a member from a backup

Both try the repositories in the order of --repos (default "2,1": the region's own, then the
global site's).

get. PostgreSQL calls restore_command while it waits for WAL (a standby that lost its stream, a
member starting, a promotion asking for timeline history) and cannot be told to stop while the
command runs: a promotion waits for it. So every attempt is bounded (pgBackRest's io-timeout,
then a hard limit), and a repository that did not answer is passed over for a while (noted in
--state) instead of costing the same wait on every call. The exit status is 0 (the
file is at PATH) or 1 (not found, to PostgreSQL "not in the archive, try streaming"); never a
status above 125, which would make PostgreSQL abort recovery.

clone. A member created from the newest backup in a repository that has one on the stanza's
current timeline (a backup from before the last promotion needs WAL of several timelines; the
source's stream is the safer way then), restored as a standby. Patroni then starts it, and it
catches up from the archive (restore_command) and the stream. Exit 1 says "no usable backup":
Patroni goes on to its next method, pg_basebackup from the source.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

NOT_FOUND = 1  # pgBackRest archive-get's status when no repository has the file
PROMOTING = -1  # run()'s status when it stopped a command because a promotion waits
PROMOTE_SIGNAL = "promote"  # pg_ctl promote's file in the data directory (the command's cwd)
STUCK_AFTER = 0.5  # s: a repository that had not answered by then, when stopped, is away

Runner = Callable[..., "tuple[int | None, str, float]"]


def run(cmd: list[str], limit: float, abort: Callable[[], bool] | None = None
        ) -> tuple[int | None, str, float]:
    """Run a command; its status (None when it ran past `limit` s, PROMOTING when `abort`
    said so first), its output and how long it ran."""
    started = time.monotonic()
    try:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True)
    except OSError as exc:
        return 127, f"cannot run {cmd[0]}: {exc.strerror}", 0.0
    code: int | None = None
    while True:
        try:
            output, _ = proc.communicate(timeout=0.1)
            code = proc.returncode
            break
        except subprocess.TimeoutExpired:
            elapsed = time.monotonic() - started
            if elapsed >= limit or (abort is not None and abort()):
                proc.kill()
                output, _ = proc.communicate()
                code = None if elapsed >= limit else PROMOTING
                output = (f"no answer within {limit:g} s" if code is None
                          else f"stopped after {elapsed:.1f} s: a promotion waits")
                break
    return code, (output or "").strip(), time.monotonic() - started


def repos_from(text: str) -> list[int]:
    """'2,1' -> [2, 1]; anything not a repository number is dropped."""
    return [int(part) for part in text.replace(" ", "").split(",") if part.isdigit()]


def load_state(path: str) -> dict[str, float]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return {str(k): float(v) for k, v in data.items()} if isinstance(data, dict) else {}


def save_state(path: str, state: dict[str, float]) -> None:
    try:
        tmp = f"{path}.{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(state, handle)
        os.replace(tmp, path)
    except OSError:
        pass  # without its notes the command is only slower when a repository is away


def get(stanza: str, repos: list[int], wal: str, path: str, *, state: dict[str, float],
        now: float, runner: Runner, io_timeout: float, limit: float, skip_for: float,
        log: Callable[[str], None], promoting: Callable[[], bool] = lambda: False) -> int:
    """One archive-get through the repositories in order (pure but for `runner`). Updates
    `state` (repository -> time it last failed to answer). A promotion (`promoting`) stops
    the attempt under way: PostgreSQL notices the request only once the command returns."""
    for repo in repos:
        failed_at = state.get(str(repo))
        if failed_at is not None and now - failed_at < skip_for:
            continue
        code, output, took = runner(["pgbackrest", f"--stanza={stanza}", f"--repo={repo}",
                                     "--no-archive-async", f"--io-timeout={io_timeout:g}",
                                     "--log-level-console=warn", "--log-level-stderr=off",
                                     "archive-get", wal, path], limit, promoting)
        if code == 0:
            state.pop(str(repo), None)
            return 0
        if code == NOT_FOUND:
            state.pop(str(repo), None)
            continue
        if code == PROMOTING:
            # The promotion asks for timeline history next: not from a repository that had
            # kept this call waiting.
            if took >= STUCK_AFTER:
                state[str(repo)] = now
            log(f"baton-archive: repo{repo}: {output} (for {wal})")
            return NOT_FOUND
        state[str(repo)] = now
        last = output.splitlines()[-1] if output else f"status {code}"
        log(f"baton-archive: repo{repo} did not answer for {wal} ({last}); passed over for "
            f"{skip_for:g} s")
    return NOT_FOUND


def timeline(wal: str) -> int | None:
    """The timeline of a WAL segment's name (its first 8 hex digits)."""
    try:
        return int(wal[:8], 16) if len(wal) >= 24 else None
    except ValueError:
        return None


def usable_backup(info: Any) -> tuple[str | None, str]:
    """From `pgbackrest info --output=json` of one repository: the label of its newest backup
    when that backup is on the newest archived timeline, else None; with the reason (pure)."""
    stanza = info[0] if isinstance(info, list) and info else {}
    if isinstance(stanza, dict) and (stanza.get("status") or {}).get("code") == 2:
        return None, "no backup"  # pgBackRest's "no valid backups"
    if not isinstance(stanza, dict) or (stanza.get("status") or {}).get("code") not in (0, None):
        message = ((stanza.get("status") or {}).get("message") if isinstance(stanza, dict)
                   else None) or "no stanza"
        return None, f"the stanza is not usable ({message})"
    backups = [b for b in stanza.get("backup") or [] if not b.get("error")]
    if not backups:
        return None, "no backup"
    newest = max(backups, key=lambda b: (b.get("timestamp") or {}).get("stop") or 0)
    archives = [a for a in stanza.get("archive") or [] if a.get("max")]
    newest_wal = max((a["max"] for a in archives), key=lambda w: (w[:8], w[8:]), default="")
    backup_tl = timeline(str((newest.get("archive") or {}).get("start") or ""))
    current_tl = timeline(newest_wal)
    if backup_tl is None or current_tl is None:
        return None, "the archive does not say which timeline is current"
    if backup_tl != current_tl:
        return None, (f"its newest backup {newest.get('label')} is on timeline {backup_tl}, "
                      f"the archive goes on on timeline {current_tl}")
    return str(newest.get("label")), f"backup {newest.get('label')} (timeline {backup_tl})"


def clone(stanza: str, repos: list[int], data_dir: str, *, runner: Runner,
          log: Callable[[str], None]) -> int:
    """Restore a standby from the first repository with a usable backup (but for `runner`,
    pure)."""
    for repo in repos:
        code, output, _ = runner(["pgbackrest", f"--stanza={stanza}", f"--repo={repo}",
                                  "--output=json", "info"], 60)
        try:
            info = json.loads(output) if code == 0 else None
        except ValueError:
            info = None
        if info is None:
            last = output.splitlines()[-1] if output else f"status {code}"
            log(f"baton-archive clone: repo{repo} passed over: it does not answer ({last})")
            continue
        label, why = usable_backup(info)
        if label is None:
            log(f"baton-archive clone: repo{repo} passed over: {why}")
            continue
        log(f"baton-archive clone: restoring {why} from repo{repo} into {data_dir}")
        code, output, _ = runner(["pgbackrest", f"--stanza={stanza}", f"--repo={repo}",
                                  f"--set={label}", f"--pg1-path={data_dir}",
                                  "--type=standby", "--log-level-console=warn", "restore"],
                                 6 * 3600)
        if code == 0:
            log(f"baton-archive clone: restored {label} from repo{repo}")
            return 0
        last = output.splitlines()[-1] if output else f"status {code}"
        log(f"baton-archive clone: the restore from repo{repo} failed ({last})")
        return 1  # Patroni empties the directory and goes on to its next method
    log("baton-archive clone: no repository has a usable backup; Patroni copies from the "
        "source instead")
    return 1


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="baton-archive")
    parser.add_argument("--stanza", default="")
    parser.add_argument("--repos", default="2,1", help="repositories in the order to try")
    parser.add_argument("--state", default="/run/postgresql/baton-archive.json")
    parser.add_argument("--io-timeout", type=float, default=5.0)
    parser.add_argument("--limit", type=float, default=60.0)
    parser.add_argument("--skip-for", type=float, default=60.0)
    parser.add_argument("--data-dir", default="")
    parser.add_argument("action", choices=("get", "clone"))
    parser.add_argument("files", nargs="*")
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit:
        return 1  # never argparse's 2 to PostgreSQL: a usage error reads as "not found"
    repos = repos_from(args.repos)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    if args.action == "get":
        if len(args.files) != 2 or not args.stanza or not repos:
            log("baton-archive get: needs --stanza, --repos, and WAL PATH")
            return NOT_FOUND
        state = load_state(args.state)
        before = dict(state)
        code = get(args.stanza, repos, args.files[0], args.files[1], state=state,
                   now=time.time(), runner=run, io_timeout=args.io_timeout, limit=args.limit,
                   skip_for=args.skip_for, log=log,
                   promoting=lambda: os.path.exists(PROMOTE_SIGNAL))
        if state != before:
            save_state(args.state, state)
        return code
    if not args.stanza or not repos or not args.data_dir:
        log("baton-archive clone: no stanza, repositories or data directory: nothing to "
            "restore from")
        return 1
    os.makedirs(args.data_dir, mode=0o700, exist_ok=True)
    return clone(args.stanza, repos, args.data_dir, runner=run, log=log)


if __name__ == "__main__":
    sys.exit(main(sys.argv))

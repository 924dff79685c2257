#!/usr/bin/python
"""Ansible module: read a stopped PostgreSQL's timeline, and count and keep what it committed
past the point where the baton's holder forked from it."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_diverged
short_description: Count and keep the transactions an old primary committed past the fork
description:
  - Runs on a database node, as root. With C(state=read), returns the timeline its data
    directory ends on and that timeline's history (a holder's node tells where the holder
    forked from each older timeline).
  - With C(state=kept), before C(failback.yml) lets Patroni rewind or re-clone the node, and
    when its PostgreSQL is stopped and its data ends on a timeline the holder forked from (the
    old primary of an unplanned failover), runs C(pg_waldump) over its C(pg_wal) from the fork
    point, counts the transactions committed there (how many, the first and last commit time,
    the WAL bytes, the relations each wrote), copies those WAL segments and the history files to
    O(keep_dir)/tl<timeline>-<fork>/pg_wal and writes C(summary.json) beside them. A re-run finds
    the summary and changes nothing, also after the rewind has overwritten the data directory.
  - The node's history must be a part of the holder's (timeline numbers alone can clash). A
    running PostgreSQL is not read (status C(running)); WAL around the fork that is no longer
    in C(pg_wal), or a data directory that is gone, is said (status C(unknown), with the
    problem), and failback goes on.
  - Check mode counts and keeps nothing on disk.
requirements: [pg_waldump and pg_controldata of the node's PostgreSQL version]
attributes:
  check_mode:
    description: Can run in check mode and return the same result without changing anything.
    support: full
options:
  state:
    description: C(read) the node's timeline, or count and keep what it holds past the fork.
    type: str
    choices: [read, kept]
    default: read
  data_dir:
    description: PostgreSQL's data directory (default, the C(data_dir) of O(patroni_config)).
    type: path
  bin_dir:
    description: Where pg_waldump and pg_controldata are (default, C(bin_dir) of O(patroni_config)).
    type: path
  patroni_config:
    description: Patroni's configuration file, as the C(patroni) role writes it.
    type: path
    default: /etc/patroni/patroni.yml
  keep_dir:
    description: Where the WAL past the fork and its summary are kept (root only, 0700).
    type: path
    default: /var/lib/baton/diverged
  holder_timeline:
    description: The timeline the holder is on (C(state=kept)).
    type: int
  holder_history:
    description: The text of the holder's timeline history file (C(state=kept)).
    type: str
    default: ""
author: Baton
"""

EXAMPLES = r"""
- name: Read the holder's timeline (data and bin directories from /etc/patroni/patroni.yml)
  baton_diverged:
  delegate_to: us-west-1
  register: holder_tl

- name: Count and keep what us-east-1 committed past the fork
  baton_diverged:
    state: kept
    data_dir: /var/lib/postgresql/17/baton
    bin_dir: /usr/lib/postgresql/17/bin
    holder_timeline: "{{ holder_tl.timeline }}"
    holder_history: "{{ holder_tl.history }}"
  delegate_to: us-east-1
"""

RETURN = r"""
node:
  description: The node's host name.
  returned: always
  type: str
timeline:
  description: The timeline the data directory ends on.
  returned: always
  type: int
history:
  description: The text of that timeline's history file (empty on timeline 1).
  returned: always
  type: str
running:
  description: Whether PostgreSQL runs on the node.
  returned: always
  type: bool
status:
  description: >-
    C(state=kept): C(diverged) (counted and kept), C(not_diverged) (its data ends at the
    fork), C(behind) (it ends before the fork - a replica that had not received all of the old
    timeline), C(following) (on the holder's timeline, with the same history, already:
    rewound or re-cloned), C(running) (not read), C(unknown) (see problem).
  returned: when state is kept
  type: str
problem:
  description: Why what the node holds past the fork is not known.
  returned: when status is unknown
  type: str
fork_lsn:
  description: Where the holder's timeline left the node's.
  returned: when the node's timeline is an ancestor of the holder's
  type: str
fork_timeline:
  description: The timeline the holder began there (the failover report's promoted_timeline).
  returned: when the node's timeline is an ancestor of the holder's
  type: int
count:
  description: >-
    fork_lsn, first_lsn, end_lsn, bytes, records (past the fork), transactions (committed),
    aborted (abort records, rolled-back savepoints included), first_commit and last_commit
    (Unix times), relation_sets (the tablespace/database/relfilenode sets changed, with their
    transactions), other_transactions, wal_end (pg_waldump's last line).
  returned: when status is diverged, not_diverged or behind
  type: dict
kept:
  description: The directory the WAL past the fork and summary.json are kept in.
  returned: when status is diverged
  type: str
"""

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_wal import (  # noqa: E402
    WalCount,
    fork_of,
    lsn_int,
    lsn_text,
    parse_history,
    wal_file_name,
)


def patroni_dirs(config: str) -> dict[str, str]:
    """data_dir and bin_dir of the postgresql section Baton's patroni role writes."""
    with open(config) as handle:
        text = handle.read()
    return {key: m.group(1).strip("'\"") for key in ("data_dir", "bin_dir")
            if (m := re.search(rf"^\s+{key}:\s*(\S+)\s*$", text, re.M))}


def controldata(bin_dir: str, data_dir: str) -> dict[str, str]:
    out = subprocess.run([os.path.join(bin_dir, "pg_controldata"), data_dir], check=True,
                         capture_output=True, text=True, env={**os.environ, "LC_ALL": "C"})
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in out.stdout.splitlines()) if v}


def postgres_runs(data_dir: str) -> bool:
    """A postmaster.pid whose process is a live postgres (a crashed node leaves a stale one)."""
    try:
        with open(os.path.join(data_dir, "postmaster.pid")) as handle:
            pid = int(handle.readline().strip())
        with open(f"/proc/{pid}/comm") as handle:
            return handle.read().strip() in ("postgres", "postmaster")
    except (OSError, ValueError):
        return False


def read_node(bin_dir: str, data_dir: str) -> dict:
    control = controldata(bin_dir, data_dir)
    wal = os.path.join(data_dir, "pg_wal")
    timelines = {int(control["Latest checkpoint's TimeLineID"])}
    timelines |= {int(os.path.basename(p).split(".")[0], 16)
                  for p in glob.glob(os.path.join(wal, "*.history"))}
    timeline = max(timelines)
    history = ""
    if timeline > 1:
        try:
            with open(os.path.join(wal, f"{timeline:08X}.history")) as handle:
                history = handle.read()
        except OSError:
            history = ""
    return {"node": socket.gethostname(), "timeline": timeline, "history": history,
            "running": postgres_runs(data_dir),
            "segment_size": int(control.get("Bytes per WAL segment", 16777216))}


def count_past(bin_dir: str, wal: str, timeline: int, fork: str,
               segment_size: int) -> tuple[WalCount, str]:
    """pg_waldump over timeline from the start of the fork's segment (so that a transaction
    that changed rows before the fork and committed after it is counted with its tables) to
    the end of the readable WAL; its last error line, if any."""
    start = lsn_int(fork) // segment_size * segment_size
    counter = WalCount(fork)
    with tempfile.TemporaryFile("w+") as errors:
        process = subprocess.Popen(
            [os.path.join(bin_dir, "pg_waldump"), "--path", wal, "--timeline", str(timeline),
             "--start", lsn_text(start)], stdout=subprocess.PIPE, stderr=errors, text=True,
            env={**os.environ, "TZ": "UTC", "LC_ALL": "C"})
        assert process.stdout is not None
        for line in process.stdout:
            counter.feed(line)
        process.wait()
        errors.seek(0)
        error = errors.read().strip()
    counter.end_at(error)
    return counter, error


def keep(node: dict, count: dict, wal: str, timeline: int, target: str) -> None:
    os.makedirs(os.path.join(target, "pg_wal"), mode=0o700, exist_ok=True)
    os.chmod(os.path.dirname(target), 0o700)
    os.chmod(target, 0o700)
    size = node["segment_size"]
    first = lsn_int(count["fork_lsn"]) // size
    # One segment more than the end names, when there is one: the last record may end in it.
    last = max(first, (lsn_int(count["end_lsn"]) - 1) // size) + 1
    names = [wal_file_name(timeline, seg * size, size) for seg in range(first, last + 1)]
    names += [os.path.basename(p) for p in glob.glob(os.path.join(wal, "*.history"))]
    for name in names:
        source = os.path.join(wal, name)
        if os.path.exists(source):
            shutil.copy2(source, os.path.join(target, "pg_wal", name))
    summary = os.path.join(target, "summary.json")
    with open(summary + ".tmp", "w") as handle:
        json.dump({"node": node["node"], "timeline": timeline, "count": count,
                   "counted_at": time.time(), "kept": target}, handle, indent=1)
    os.chmod(summary + ".tmp", 0o600)
    os.replace(summary + ".tmp", summary)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["read", "kept"], "default": "read"},
            "data_dir": {"type": "path"},
            "bin_dir": {"type": "path"},
            "patroni_config": {"type": "path", "default": "/etc/patroni/patroni.yml"},
            "keep_dir": {"type": "path", "default": "/var/lib/baton/diverged"},
            "holder_timeline": {"type": "int"},
            "holder_history": {"type": "str", "default": ""},
        },
        required_if=[("state", "kept", ["holder_timeline"])],
        supports_check_mode=True,
    )
    p = module.params
    if not (p["data_dir"] and p["bin_dir"]):
        try:
            found = patroni_dirs(p["patroni_config"])
        except OSError as exc:
            module.fail_json(msg=f"{socket.gethostname()}: cannot read {p['patroni_config']} "
                                 f"({exc}): give data_dir and bin_dir, or run site.yml")
        p["data_dir"] = p["data_dir"] or found.get("data_dir")
        p["bin_dir"] = p["bin_dir"] or found.get("bin_dir")
        if not (p["data_dir"] and p["bin_dir"]):
            module.fail_json(msg=f"{socket.gethostname()}: {p['patroni_config']} names no "
                                 "data_dir or bin_dir: give them, or run site.yml")
    where = f"{socket.gethostname()}:{p['data_dir']}"
    try:
        node = read_node(p["bin_dir"], p["data_dir"])
    except (OSError, subprocess.CalledProcessError, KeyError, ValueError) as exc:
        problem = (f"pg_controldata could not read {p['data_dir']} ({exc}): no data directory "
                   "(moved aside by a re-clone?) or not PostgreSQL's")
        if p["state"] == "read":
            module.fail_json(msg=f"{where}: {problem}")
        # A region whose data is gone (a re-clone killed half-way) is still reprotected.
        module.exit_json(changed=False, status="unknown", problem=problem,
                         node=socket.gethostname(), running=False, timeline=None, history="")
    base = {k: node[k] for k in ("node", "timeline", "history", "running")}
    if p["state"] == "read":
        module.exit_json(changed=False, **base)
    try:
        fork = fork_of(node["timeline"], parse_history(node["history"]), p["holder_timeline"],
                       parse_history(p["holder_history"]))
    except ValueError as exc:
        module.fail_json(msg=f"{where}: a timeline history is unreadable ({exc})")
    if fork.get("following"):
        module.exit_json(changed=False, status="following", **base)
    if fork.get("problem"):
        module.exit_json(changed=False, status="unknown", problem=fork["problem"], **base)
    fork_info = {"fork_lsn": fork["fork"], "fork_timeline": fork["child"]}
    if node["running"]:
        module.exit_json(changed=False, status="running", **fork_info, **base)
    target = os.path.join(p["keep_dir"],
                          f"tl{node['timeline']}-{fork['fork'].replace('/', '-')}")
    try:
        with open(os.path.join(target, "summary.json")) as handle:
            kept = json.load(handle)
        module.exit_json(changed=False, status="diverged", count=kept["count"], kept=target,
                         **fork_info, **base)
    except (OSError, ValueError, KeyError):
        pass
    wal = os.path.join(p["data_dir"], "pg_wal")
    try:
        counter, error = count_past(p["bin_dir"], wal, node["timeline"], fork["fork"],
                                    node["segment_size"])
    except OSError as exc:
        module.fail_json(msg=f"{where}: pg_waldump did not run ({exc}): install PostgreSQL's "
                             "client programs there")
    status, count = counter.status(), counter.result()
    last = error.splitlines()[-1] if error else "no error"
    if status == "unread":
        module.exit_json(changed=False, status="unknown", **fork_info, **base,
                         problem=f"the WAL of timeline {node['timeline']} around the fork at "
                                 f"{fork['fork']} is not in {wal} ({last}): what it held past "
                                 "the fork is not known")
    if status != "diverged":
        # behind: a node that had not received all the fork's parent timeline holds nothing
        # the holder lacks; not_diverged: the data ends where the holder's timeline begins.
        module.exit_json(changed=False, status=status, count=count, **fork_info, **base)
    count["wal_end"] = last  # pg_waldump's own words for where the readable WAL ends
    if not module.check_mode:
        try:
            keep(node, count, wal, node["timeline"], target)
        except OSError as exc:
            module.fail_json(msg=f"{where}: could not keep the WAL past the fork in {target} "
                                 f"({exc}): free space there, then re-run failback.yml")
    module.exit_json(changed=True, status="diverged", count=count, kept=target, **fork_info,
                     **base)


if __name__ == "__main__":
    main()

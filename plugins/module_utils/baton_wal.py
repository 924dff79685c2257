"""What a region's old timeline holds past the point where the baton's holder forked from it:
the codec of PostgreSQL's timeline history files and WAL file names, and a reader of
pg_waldump's output that counts the transactions committed there (pure; stdlib only, it runs
on the nodes)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

RECORD = re.compile(
    r"^rmgr: (?P<rmgr>\S+)\s+len \(rec/tot\):\s*\d+/\s*(?P<tot>\d+), tx:\s*(?P<tx>\d+), "
    r"lsn: (?P<lsn>[0-9A-Fa-f]+/[0-9A-Fa-f]+), prev [0-9A-Fa-f]+/[0-9A-Fa-f]+, desc: (?P<desc>.*)$")
BLOCK_REL = re.compile(r"blkref #\d+: rel (\d+)/(\d+)/(\d+)")
COMMIT = re.compile(r"^COMMIT(?:_PREPARED)?\b(?:\s+\d+:)?\s*(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d"
                    r"(?:\.\d+)?)\s+(?P<zone>[A-Za-z+\-0-9]+)")
ABORT = re.compile(r"^ABORT(?:_PREPARED)?\b")
SUBXACTS = re.compile(r"subxacts: ([\d ]+)")
# Row changes of a table (the resource managers of heap pages); index and catalog-cache
# records say nothing more about which tables a transaction wrote.
HEAP_RMGRS = ("Heap", "Heap2")
# Distinct sets of tables counted one by one; beyond, transactions are counted as "other".
MAX_SETS = 500


def lsn_int(lsn: str) -> int:
    """'0/30020C0' -> 50340032."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def lsn_text(position: int) -> str:
    return f"{position >> 32:X}/{position & 0xFFFFFFFF:X}"


def wal_file_name(timeline: int, position: int, segment_size: int) -> str:
    """The name of the WAL segment file that holds position on timeline."""
    per_id = 0x100000000 // segment_size
    segment = position // segment_size
    return f"{timeline:08X}{segment // per_id:08X}{segment % per_id:08X}"


def parse_history(text: str) -> list[dict[str, Any]]:
    """A timeline history file (<timeline>.history): one line per switch, the parent timeline,
    the switch point (the first position of the next timeline) and the reason."""
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        fields = line.split(None, 2)
        if len(fields) < 2:
            raise ValueError(f"not a timeline history line: {line!r}")
        entries.append({"parent": int(fields[0]), "switchpoint": fields[1].upper(),
                        "reason": fields[2] if len(fields) > 2 else ""})
    return entries


def fork_of(node_timeline: int, node_history: list[dict[str, Any]], holder_timeline: int,
            holder_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the holder's history left the timeline a node's data ends on.

    {'following': True} when the node is on the holder's timeline, with the same history;
    {'fork': '0/30020C0', 'child': 5} when the holder branched from node_timeline there into
    timeline 5: what the node holds on node_timeline from that position on, the holder never
    received; {'problem': ...} when the node's history is not a part of the holder's (timeline
    numbers are not enough: a promotion inside the region after the baton moved gives the same
    number to another branch)."""
    same_past = holder_history[:len(node_history)] == node_history
    if node_timeline == holder_timeline and same_past:
        return {"following": True}
    for index, entry in enumerate(holder_history):
        if entry["parent"] == node_timeline and same_past and index == len(node_history):
            child = (holder_history[index + 1]["parent"] if index + 1 < len(holder_history)
                     else holder_timeline)
            return {"fork": entry["switchpoint"], "child": child}
    return {"problem": f"timeline {node_timeline} (history {_history_text(node_history)}) is not "
                       f"a part of the history of the holder's timeline {holder_timeline} "
                       f"({_history_text(holder_history)}): the region's data branched in a way "
                       "Baton does not count (a promotion inside the region after the baton "
                       "moved?)"}


def _history_text(history: list[dict[str, Any]]) -> str:
    return ", ".join(f"{e['parent']}@{e['switchpoint']}" for e in history) or "none"


def _commit_time(match: re.Match[str]) -> float | None:
    if match.group("zone") != "UTC":  # pg_waldump runs with TZ=UTC; anything else is not read
        return None
    text = match.group("at")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


ERROR_AT = re.compile(r"at ([0-9A-Fa-f]+/[0-9A-Fa-f]+)")
ASSIGNMENT = re.compile(r"^ASSIGNMENT xtop (\d+):")
PREPARED_XID = re.compile(r"^(?:COMMIT|ABORT)_PREPARED\s+(\d+):")


class WalCount:
    """Reads pg_waldump's lines from somewhat before the fork and counts, from the fork on, the
    transactions committed (two-phase commits included), the abort records, when the first and
    last committed, and for each set of relations (tablespace/database/relfilenode of the heap
    pages a transaction changed, its subtransactions' and its changes before the fork
    included; row locks are not changes) how many committed transactions changed exactly that
    set; and the transactions prepared past the fork (two-phase commit) that were neither
    committed nor rolled back by the end of the WAL. end_lsn is where the readable WAL ends."""

    def __init__(self, fork: str) -> None:
        self.fork = lsn_int(fork)
        self.records = 0
        self.committed = 0
        self.aborted = 0
        self.first_lsn: int | None = None
        self.end_lsn: int | None = None
        self.first_commit: float | None = None
        self.last_commit: float | None = None
        self._open: dict[int, set[str]] = {}
        self._prepared: dict[int, set[str]] = {}
        # Prepared (PREPARE TRANSACTION) past the fork and neither committed nor rolled back
        # by the end of the WAL: in doubt, and gone with the old timeline.
        self._prepared_past_fork: set[int] = set()
        self.sets: dict[frozenset[str], int] = {}
        self.other = 0

    def feed(self, line: str) -> None:
        found = RECORD.match(line.rstrip("\n"))
        if not found:
            return
        lsn = lsn_int(found.group("lsn"))
        self.end_lsn = (lsn + int(found.group("tot")) + 7) // 8 * 8  # refined by end_at()
        tx, desc, rmgr = int(found.group("tx")), found.group("desc"), found.group("rmgr")
        past_fork = lsn >= self.fork
        if past_fork:
            self.records += 1
            if self.first_lsn is None:
                self.first_lsn = lsn
        if rmgr in HEAP_RMGRS and tx and not desc.startswith("LOCK"):
            self._open.setdefault(tx, set()).update("/".join(m) for m in BLOCK_REL.findall(desc))
        if rmgr != "Transaction":
            return
        prepared = PREPARED_XID.match(desc)
        assignment = ASSIGNMENT.match(desc)
        if assignment:  # subtransactions named to their top one: their rows go with it
            self._open.setdefault(int(assignment.group(1)), set()).update(
                self._gather(0, desc))
            return
        if desc.startswith("PREPARE"):
            self._prepared[tx] = self._gather(tx, desc)
            if past_fork:
                self._prepared_past_fork.add(tx)
            return
        commit = COMMIT.match(desc)
        if not commit and not ABORT.match(desc):
            return  # ASSIGNMENT and the like end nothing
        if prepared:
            self._prepared_past_fork.discard(int(prepared.group(1)))
        touched = (self._prepared.pop(int(prepared.group(1)), set()) if prepared
                   else self._gather(tx, desc))
        if not past_fork:
            return
        if not commit:
            self.aborted += 1
            return
        self.committed += 1
        at = _commit_time(commit)
        if at is not None:
            self.first_commit = at if self.first_commit is None else min(self.first_commit, at)
            self.last_commit = at if self.last_commit is None else max(self.last_commit, at)
        key = frozenset(touched)
        if key in self.sets or len(self.sets) < MAX_SETS:
            self.sets[key] = self.sets.get(key, 0) + 1
        else:
            self.other += 1

    def _gather(self, tx: int, desc: str) -> set[str]:
        """The relations of a transaction and of the subtransactions its record names."""
        subs = SUBXACTS.search(desc)
        touched = self._open.pop(tx, set())
        for member in ([int(x) for x in subs.group(1).split()] if subs else []):
            touched |= self._open.pop(member, set())
        return touched

    def feed_all(self, lines: Iterable[str]) -> WalCount:
        for line in lines:
            self.feed(line)
        return self

    def end_at(self, error: str) -> None:
        """pg_waldump's last line names where the readable WAL ends ('... invalid record length
        at 0/30178E8: ...'): the end of the last record, page headers included."""
        found = ERROR_AT.findall(error.strip().splitlines()[-1]) if error.strip() else []
        if found and self.end_lsn is not None and lsn_int(found[-1]) >= self.end_lsn - 8:
            self.end_lsn = lsn_int(found[-1])

    def status(self) -> str:
        """'diverged' (records past the fork), 'not_diverged' (the WAL ends at the fork),
        'behind' (it ends before: a replica that had not received all), 'unread'."""
        if self.end_lsn is None:
            return "unread"
        if self.records:
            return "diverged"
        return "not_diverged" if self.end_lsn >= self.fork else "behind"

    def result(self) -> dict[str, Any]:
        end = self.end_lsn if self.end_lsn is not None else self.fork
        return {
            "fork_lsn": lsn_text(self.fork),
            "first_lsn": None if self.first_lsn is None else lsn_text(self.first_lsn),
            "end_lsn": lsn_text(end),
            "bytes": max(0, end - self.fork),
            "records": self.records,
            "transactions": self.committed,
            "aborted": self.aborted,
            "prepared_undecided": len(self._prepared_past_fork),
            "first_commit": self.first_commit,
            "last_commit": self.last_commit,
            "relation_sets": [{"relations": sorted(rels), "transactions": n}
                              for rels, n in sorted(self.sets.items(),
                                                    key=lambda kv: (-kv[1], sorted(kv[0])))],
            "other_transactions": self.other,
        }


def by_table(relation_sets: list[dict[str, Any]], names: dict[str, str],
             other: int = 0) -> dict[str, int]:
    """Committed transactions per table: names maps 'tablespace/database/relfilenode' to a
    table's name ('app.public.orders'); a transaction that wrote several tables counts once in
    each; one that wrote no table row (DDL only, sequences) under '(no table rows)'."""
    counts: dict[str, int] = {}
    for entry in relation_sets:
        tables = {names.get(rel, f"relfilenode {rel} (not found on the holder)")
                  for rel in entry["relations"]} or {"(no table rows)"}
        for table in tables:
            counts[table] = counts.get(table, 0) + int(entry["transactions"])
    if other:
        counts["(tables not itemised)"] = other
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def _iso(at: float | None) -> str | None:
    return None if at is None else datetime.fromtimestamp(at, tz=UTC).isoformat(
        timespec="milliseconds")


def reconcile(region: str, holder: str, nodes: list[dict[str, Any]], names: dict[str, str],
              now: float) -> dict[str, Any]:
    """What a returning region's nodes (baton_diverged state=kept, one result each) held past
    the fork, as one reconciliation: the node that holds the most (the old primary; the others
    hold a part of the same timeline) gives the figures.

    status: 'counted' (what the old timeline committed past the fork); 'nothing' (the region's
    data ends at the fork: nothing was lost); 'partial' (a node could not be read - running,
    or its WAL unreadable: the figures, if any, are a lower bound and amend no report);
    'following' (the region already follows the holder: reconciled earlier, or rewound without
    Baton); 'unknown' (no node could be read: 'problems' says why)."""
    by_status: dict[str, list[dict[str, Any]]] = {}
    for n in nodes:
        by_status.setdefault(n.get("status", "unknown"), []).append(n)
    problems = [f"{n.get('node', '?')}: {n['problem']}" for n in nodes if n.get("problem")]
    problems += [f"{n.get('node', '?')}: PostgreSQL runs there, its WAL was not read"
                 for n in by_status.get("running", [])]
    forks = [n for n in nodes if n.get("fork_lsn")]
    base: dict[str, Any] = {
        "region": region, "holder": holder, "reconciled_at": _iso(now), "problems": problems,
        "fork_lsn": forks[0]["fork_lsn"] if forks else None,
        "fork_timeline": forks[0].get("fork_timeline") if forks else None}
    unread = by_status.get("running", []) + by_status.get("unknown", [])
    diverged = by_status.get("diverged", [])
    if not diverged and not by_status.get("not_diverged") and not by_status.get("behind"):
        if nodes and len(by_status.get("following", [])) == len(nodes):
            return {**base, "status": "following"}
        return {**base, "status": "unknown"}
    if not diverged:
        figures: dict[str, Any] = {"transactions": 0, "bytes": 0, "by_table": {}}
        return {**base, **figures, "status": "partial" if unread else "nothing"}
    best = max(diverged, key=lambda n: lsn_int(n["count"]["end_lsn"]))
    count = best["count"]
    return {
        **base, "status": "partial" if unread else "counted", "node": best.get("node"),
        "kept": best.get("kept"), "end_lsn": count["end_lsn"], "bytes": count["bytes"],
        "transactions": count["transactions"], "aborted": count["aborted"],
        "prepared_undecided": count.get("prepared_undecided", 0),
        "first_commit": _iso(count["first_commit"]), "last_commit": _iso(count["last_commit"]),
        "by_table": by_table(count["relation_sets"], names, count.get("other_transactions", 0)),
    }


def report_to_amend(reports: list[tuple[str, dict[str, Any]]], region: str,
                    fork_timeline: int | None) -> str | None:
    """Of the failover reports (name, content), the one whose promotion began fork_timeline -
    the timeline the holder forked into from the region's data - when it moved the baton away
    from region and carries no reconciliation yet (a re-run keeps the first one)."""
    for name, report in reports:
        if (report.get("kind") == "failover" and report.get("old") == region
                and fork_timeline is not None
                and report.get("promoted_timeline") == fork_timeline
                and not report.get("reconciled")):
            return name
    return None


def amend(report: dict[str, Any], reconciliation: dict[str, Any]) -> dict[str, Any]:
    """The failover report with the failback's reconciliation: the loss counted in the old
    timeline replaces the bound the failover could give."""
    counted = reconciliation["status"] in ("counted", "nothing")
    return {**report, "reconciled": reconciliation,
            "reconciled_lost_transactions": reconciliation["transactions"] if counted else None,
            "reconciled_lost_bytes": reconciliation["bytes"] if counted else None}

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


def fork_of(node_timeline: int, holder_timeline: int,
            holder_history: list[dict[str, Any]]) -> dict[str, Any]:
    """Where the holder's history left the timeline a node's data ends on.

    {'fork': None, 'following': True} when the node is on the holder's timeline;
    {'fork': '0/30020C0'} when the holder branched from node_timeline there: what the node
    holds on node_timeline from that position on, the holder never received;
    {'fork': None, 'problem': ...} when the node's timeline is not in the holder's history."""
    if node_timeline == holder_timeline:
        return {"fork": None, "following": True}
    for entry in holder_history:
        if entry["parent"] == node_timeline:
            return {"fork": entry["switchpoint"]}
    return {"fork": None,
            "problem": f"timeline {node_timeline} is not in the history of the holder's timeline "
                       f"{holder_timeline}: the region's data branched in a way Baton does not "
                       "count (a promotion inside the region after the baton moved?)"}


def _commit_time(match: re.Match[str]) -> float | None:
    if match.group("zone") != "UTC":  # pg_waldump runs with TZ=UTC; anything else is not read
        return None
    text = match.group("at")
    fmt = "%Y-%m-%d %H:%M:%S.%f" if "." in text else "%Y-%m-%d %H:%M:%S"
    return datetime.strptime(text, fmt).replace(tzinfo=UTC).timestamp()


class WalCount:
    """Counts, from pg_waldump's lines, the transactions committed and aborted, when the first
    and last committed, where the readable WAL ends, and for each set of relations
    (tablespace/database/relfilenode of the heap pages a transaction wrote, its
    subtransactions' included) how many committed transactions wrote exactly that set."""

    def __init__(self) -> None:
        self.records = 0
        self.committed = 0
        self.aborted = 0
        self.first_lsn: int | None = None
        self.end_lsn: int | None = None
        self.first_commit: float | None = None
        self.last_commit: float | None = None
        self._open: dict[int, set[str]] = {}
        self.sets: dict[frozenset[str], int] = {}
        self.other = 0

    def feed(self, line: str) -> None:
        found = RECORD.match(line.rstrip("\n"))
        if not found:
            return
        self.records += 1
        lsn = lsn_int(found.group("lsn"))
        if self.first_lsn is None:
            self.first_lsn = lsn
        self.end_lsn = (lsn + int(found.group("tot")) + 7) // 8 * 8  # records are 8-aligned
        tx, desc, rmgr = int(found.group("tx")), found.group("desc"), found.group("rmgr")
        if rmgr in HEAP_RMGRS and tx:
            rels = self._open.setdefault(tx, set())
            rels.update("/".join(m) for m in BLOCK_REL.findall(desc))
        if rmgr != "Transaction":
            return
        commit = COMMIT.match(desc)
        subs = SUBXACTS.search(desc)
        members = [tx] + ([int(x) for x in subs.group(1).split()] if subs else [])
        touched: set[str] = set()
        for member in members:
            touched |= self._open.pop(member, set())
        if commit:
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
        elif ABORT.match(desc):
            self.aborted += 1

    def feed_all(self, lines: Iterable[str]) -> WalCount:
        for line in lines:
            self.feed(line)
        return self

    def result(self, fork: str) -> dict[str, Any]:
        start = lsn_int(fork)
        return {
            "fork_lsn": lsn_text(start),
            "first_lsn": None if self.first_lsn is None else lsn_text(self.first_lsn),
            "end_lsn": lsn_text(self.end_lsn) if self.end_lsn is not None else lsn_text(start),
            "bytes": max(0, (self.end_lsn or start) - start),
            "records": self.records,
            "transactions": self.committed,
            "aborted": self.aborted,
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
    the fork, as one reconciliation: the node that holds the most (the old primary; the
    others hold a part of the same timeline) gives the figures.

    status: 'counted' (the figures are what the old timeline committed past the fork);
    'nothing' (the region's data ends at the fork: nothing was lost); 'unknown' (no node
    could be read before the rewind: 'problems' says why); 'following' (the region already
    follows the holder: reconciled earlier, or rewound without Baton)."""
    diverged = [n for n in nodes if n.get("status") == "diverged"]
    problems = [f"{n.get('node', '?')}: {n['problem']}" for n in nodes if n.get("problem")]
    problems += [f"{n.get('node', '?')}: PostgreSQL runs, its WAL was not read"
                 for n in nodes if n.get("status") == "running"]
    base: dict[str, Any] = {"region": region, "holder": holder, "reconciled_at": _iso(now),
                            "problems": problems}
    if not diverged:
        if any(n.get("status") == "not_diverged" for n in nodes):
            return {**base, "status": "nothing", "transactions": 0, "bytes": 0, "by_table": {}}
        if nodes and all(n.get("status") == "following" for n in nodes):
            return {**base, "status": "following"}
        return {**base, "status": "unknown"}
    best = max(diverged, key=lambda n: lsn_int(n["count"]["end_lsn"]))
    count = best["count"]
    return {
        **base, "status": "counted", "node": best.get("node"), "kept": best.get("kept"),
        "fork_lsn": count["fork_lsn"], "end_lsn": count["end_lsn"], "bytes": count["bytes"],
        "transactions": count["transactions"], "aborted": count["aborted"],
        "first_commit": _iso(count["first_commit"]), "last_commit": _iso(count["last_commit"]),
        "by_table": by_table(count["relation_sets"], names, count.get("other_transactions", 0)),
    }


def report_to_amend(reports: list[tuple[str, dict[str, Any]]], region: str) -> str | None:
    """Of the failover reports (name, content; names sort by time), the newest that moved the
    baton away from region - None when there is none, or it carries a reconciliation already
    (a re-run keeps the first one)."""
    moved = [(name, r) for name, r in sorted(reports)
             if r.get("kind") == "failover" and r.get("old") == region
             and r.get("actions_taken")]
    if not moved or moved[-1][1].get("reconciled"):
        return None
    return moved[-1][0]


def amend(report: dict[str, Any], reconciliation: dict[str, Any]) -> dict[str, Any]:
    """The failover report with the failback's reconciliation: the loss counted in the old
    timeline replaces the bound the failover could give."""
    counted = reconciliation["status"] in ("counted", "nothing")
    return {**report, "reconciled": reconciliation,
            "reconciled_lost_transactions": reconciliation["transactions"] if counted else None,
            "reconciled_lost_bytes": reconciliation["bytes"] if counted else None}

"""Failback's reconciliation of an unplanned failover's loss, on pg_waldump's output recorded
from a real fork (PostgreSQL 15: a standby promoted at 0/30020C0, the old primary went on
writing): the timeline codec, the count, the tables, the report it amends."""

from pathlib import Path

import pytest
from baton_failover import baton_failover_summary, loss_sentence, reconciled_sentence
from baton_wal import (
    WalCount,
    amend,
    by_table,
    fork_of,
    lsn_int,
    lsn_text,
    parse_history,
    reconcile,
    report_to_amend,
    wal_file_name,
)

FIXTURES = Path(__file__).parent / "fixtures"
FORK = "0/30020C0"
FENCE, BIG = "1663/16384/16385", "1663/16384/16388"


def reading() -> WalCount:
    """pg_waldump from the start of the fork's segment, as baton_diverged runs it."""
    lines = (FIXTURES / "pg_waldump-15-past-fork.txt").read_text().splitlines()
    counter = WalCount(FORK).feed_all(lines)
    counter.end_at(lines[-1])
    return counter


def counted() -> dict:
    return reading().result()


def test_lsn_codec_and_wal_file_names():
    assert lsn_int("0/30020C0") == 0x30020C0 and lsn_text(0x1_0000_00A8) == "1/A8"
    assert wal_file_name(1, lsn_int(FORK), 16 * 1024 * 1024) == "000000010000000000000003"
    assert wal_file_name(7, lsn_int("2/FF000000"), 16 * 1024 * 1024) == "0000000700000002000000FF"


def test_the_holder_history_gives_the_fork_of_each_older_timeline():
    history = parse_history((FIXTURES / "00000002.history").read_text()
                            + "2\t0/5000000\tno recovery target specified\n")
    assert history[0] == {"parent": 1, "switchpoint": FORK,
                          "reason": "no recovery target specified"}
    assert fork_of(1, [], 3, history) == {"fork": FORK, "child": 2}
    assert fork_of(2, history[:1], 3, history) == {"fork": "0/5000000", "child": 3}
    assert fork_of(3, history, 3, history) == {"following": True}


def test_a_timeline_number_the_holder_has_on_another_branch_is_not_its_history():
    holder = parse_history("1\t0/30020C0\tno recovery target specified\n")
    # The old region promoted inside itself after the fork: its timeline 2 began elsewhere.
    own = parse_history("1\t0/3100000\tno recovery target specified\n")
    assert "not a part of the history" in fork_of(2, own, 2, holder)["problem"]
    later = [*own, {"parent": 2, "switchpoint": "0/3200000", "reason": ""}]
    assert "not a part of the history" in fork_of(3, later, 2, holder)["problem"]


def test_history_lines_that_are_not_history_are_refused():
    with pytest.raises(ValueError):
        parse_history("garbage\n")


def test_pg_waldump_past_the_fork_counts_commits_not_aborts_with_times_and_bytes():
    count = counted()
    # 3 single inserts, 1 transaction with a savepoint (two tables), 1 CREATE TABLE, 1 UPDATE;
    # the rolled-back insert is not a commit; the commit before the fork is not counted.
    assert count["transactions"] == 6 and count["aborted"] == 1
    assert count["first_lsn"] == FORK and count["end_lsn"] == "0/30178E8"
    assert count["bytes"] == 0x30178E8 - 0x30020C0
    assert count["last_commit"] - count["first_commit"] == pytest.approx(0.056287, abs=1e-5)
    assert reading().status() == "diverged"


def test_where_the_wal_ends_against_the_fork_says_diverged_at_the_fork_or_behind():
    lines = (FIXTURES / "pg_waldump-15-past-fork.txt").read_text().splitlines()
    before_fork = [line for line in lines if "lsn: 0/0300209" in line or "lsn: 0/0300205" in line]
    at_fork = WalCount(FORK).feed_all(before_fork)
    at_fork.end_at("pg_waldump: error: error in WAL record at 0/3002098: invalid record length "
                   "at 0/30020C0: wanted 24, got 0")
    assert at_fork.status() == "not_diverged" and at_fork.result()["transactions"] == 0
    behind = WalCount(FORK).feed_all(before_fork[:1])
    assert behind.status() == "behind"
    assert WalCount(FORK).status() == "unread"


def test_two_phase_commits_row_locks_and_assignments_are_read_for_what_they_are():
    def rec(tx, lsn, rmgr, desc):
        return (f"rmgr: {rmgr:<11} len (rec/tot):     34/    34, tx: {tx:>10}, lsn: {lsn}, "
                f"prev 0/00000000, desc: {desc}")
    lines = [
        rec(900, "0/3003000", "Heap", "INSERT off 2 flags 0x00, blkref #0: rel 1663/5/16385 blk 0"),
        rec(901, "0/3003100", "Heap", "INSERT off 3 flags 0x00, blkref #0: rel 1663/5/16386 blk 0"),
        rec(900, "0/3003200", "Transaction", "ASSIGNMENT xtop 900: subxacts: 901"),
        rec(900, "0/3003300", "Transaction", "PREPARE gid t1: 2026-12-03 14:19:33.000000 UTC"),
        rec(902, "0/3003400", "Heap", "LOCK off 2: xid 902: flags 0x00 LOCK_ONLY EXCL_LOCK , "
                                     "blkref #0: rel 1663/5/16385 blk 0"),
        rec(902, "0/3003500", "Transaction", "COMMIT 2026-12-03 14:19:34.000000 UTC"),
        rec(0, "0/3003600", "Transaction",
            "COMMIT_PREPARED 900: 2026-12-03 14:19:35.000000 UTC; subxacts: 901"),
    ]
    count = WalCount("0/3003000").feed_all(lines).result()
    assert count["transactions"] == 2
    assert count["prepared_undecided"] == 0
    # A transaction prepared past the fork and never decided there: in doubt, reported apart.
    undecided = [
        *lines,
        rec(903, "0/3003700", "Heap", "INSERT off 4 flags 0x00, blkref #0: rel 1663/5/16385 blk 0"),
        rec(903, "0/3003800", "Transaction", "PREPARE gid t2: 2026-12-03 14:19:36.000000 UTC")]
    count = WalCount("0/3003000").feed_all(undecided).result()
    assert (count["transactions"], count["prepared_undecided"]) == (2, 1)
    assert {tuple(e["relations"]): e["transactions"] for e in count["relation_sets"]} == {
        ("1663/5/16385", "1663/5/16386"): 1, (): 1}


def test_each_transaction_counts_once_per_table_it_wrote_subtransactions_included():
    names = {FENCE: "app.public.baton_fence", BIG: "app.public.big"}
    names.update({f"1663/16384/{n}": "app: (system catalogs - DDL, ANALYZE)"
                  for n in (1247, 1249, 1259, 2608)})
    tables = by_table(counted()["relation_sets"], names)
    assert tables == {"app.public.baton_fence": 5, "app: (system catalogs - DDL, ANALYZE)": 1,
                      "app.public.big": 1}


def test_a_relation_the_holder_does_not_know_is_named_as_such():
    tables = by_table([{"relations": ["1663/5/99999"], "transactions": 2},
                       {"relations": [], "transactions": 1}], {}, other=4)
    assert tables == {"(tables not itemised)": 4,
                      "relfilenode 1663/5/99999 (not found on the holder)": 2,
                      "(no table rows)": 1}


def node(name, status, end=None, **more):
    out = {"node": name, "status": status, "fork_lsn": FORK, "fork_timeline": 2, **more}
    if end:
        out["count"] = {**counted(), "end_lsn": end}
        out["kept"] = f"/var/lib/baton/diverged/tl1-{FORK.replace('/', '-')}"
    return out


def test_the_node_holding_most_of_the_old_timeline_gives_the_figures():
    rec = reconcile("us-east", "us-west", [node("us-east-2", "diverged", "0/3002168"),
                                           node("us-east-1", "diverged", "0/30178E8"),
                                           node("us-east-3", "behind")],
                    {FENCE: "app.public.baton_fence"}, 0)
    assert rec["status"] == "counted" and rec["node"] == "us-east-1"
    assert rec["transactions"] == 6 and rec["by_table"]["app.public.baton_fence"] == 5
    assert rec["fork_lsn"] == FORK and rec["fork_timeline"] == 2 and rec["problems"] == []


def test_a_node_not_read_makes_the_figures_a_lower_bound_that_amends_nothing():
    rec = reconcile("us-east", "us-west", [node("us-east-2", "diverged", "0/3002168"),
                                           node("us-east-1", "running")], {}, 0)
    assert rec["status"] == "partial" and rec["node"] == "us-east-2"
    assert rec["problems"] == ["us-east-1: PostgreSQL runs there, its WAL was not read"]
    assert "known only in part" in reconciled_sentence(rec)
    unread = reconcile("a", "b", [node("a-1", "unknown", problem="gone"),
                                  node("a-2", "not_diverged")], {}, 0)
    assert unread["status"] == "partial"


def test_nothing_past_the_fork_is_a_loss_of_none_and_a_rewound_region_is_not_counted_again():
    assert reconcile("a", "b", [node("a-1", "not_diverged")], {}, 0)["transactions"] == 0
    assert reconcile("a", "b", [node("a-1", "following")], {}, 0)["status"] == "following"
    unknown = reconcile("a", "b", [node("a-1", "unknown", problem="WAL gone")], {}, 0)
    assert unknown["status"] == "unknown" and unknown["problems"] == ["a-1: WAL gone"]


def test_the_failover_whose_promotion_began_the_forked_timeline_is_amended_once():
    def done(kind, old, timeline, actions=("x",)):
        return {"kind": kind, "old": old, "promoted_timeline": timeline,
                "actions_taken": list(actions)}
    reports = [
        ("20261203T100000Z a", done("failover", "us-east", 4)),
        ("20261203T110000Z b", done("failover", "us-east", 6)),
        ("20261203T120000Z c", done("switchover", "us-east", 7)),
        ("20261203T130000Z d", done("failover", "us-west", 8)),
        ("20261203T140000Z e", {"kind": "failover", "old": "us-east", "actions_taken": ["x"]}),
    ]
    assert report_to_amend(reports, "us-east", 6) == "20261203T110000Z b"
    assert report_to_amend(reports, "us-east", 7) is None  # a switchover loses nothing
    assert report_to_amend(reports, "us-west", 6) is None  # not the region that lost it
    assert report_to_amend(reports, "us-east", None) is None
    reports[1][1]["reconciled"] = {"status": "counted"}
    assert report_to_amend(reports, "us-east", 6) is None


def test_the_amended_report_states_the_reconciled_loss_instead_of_the_bound():
    rec = reconcile("us-east", "us-west", [node("us-east-1", "diverged", "0/30178E8")],
                    {FENCE: "app.public.baton_fence"}, 0)
    report = {"kind": "failover", "target": "us-west", "old": "us-east", "already": False,
              "epoch": 9, "rto_seconds": 12.0, "data_lost_bytes": None,
              "data_loss_window": {"from": "x", "to": "y", "seconds": 8.5, "at_least_bytes": 0},
              "actions_taken": ["target promoted"], "not_following": [], "timeline": []}
    done = amend(report, rec)
    assert done["reconciled_lost_transactions"] == 6 and done["data_loss_window"]
    assert loss_sentence(done) == reconciled_sentence(rec)
    assert "6 transactions committed on us-east-1 after the fork at 0/30020C0" in \
        baton_failover_summary(done)[2]
    assert "app.public.baton_fence 5" in loss_sentence(done)
    assert "prepared transactions" not in loss_sentence(done)
    undecided = reconciled_sentence({**rec, "prepared_undecided": 2})
    assert "; 2 prepared transactions (two-phase commit) neither committed nor rolled back " \
        "there, gone with it; its WAL is kept" in undecided
    assert "could not be counted: a-1: gone" in reconciled_sentence(
        reconcile("a", "b", [node("a-1", "unknown", problem="gone")], {}, 0))

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


def counted() -> dict:
    lines = (FIXTURES / "pg_waldump-15-past-fork.txt").read_text().splitlines()
    return WalCount().feed_all(lines).result(FORK)


def test_lsn_codec_and_wal_file_names():
    assert lsn_int("0/30020C0") == 0x30020C0 and lsn_text(0x1_0000_00A8) == "1/A8"
    assert wal_file_name(1, lsn_int(FORK), 16 * 1024 * 1024) == "000000010000000000000003"
    assert wal_file_name(7, lsn_int("2/FF000000"), 16 * 1024 * 1024) == "0000000700000002000000FF"


def test_the_holder_history_gives_the_fork_of_each_older_timeline():
    history = parse_history((FIXTURES / "00000002.history").read_text()
                            + "2\t0/5000000\tno recovery target specified\n")
    assert history[0] == {"parent": 1, "switchpoint": FORK,
                          "reason": "no recovery target specified"}
    assert fork_of(1, 3, history) == {"fork": FORK}
    assert fork_of(2, 3, history) == {"fork": "0/5000000"}
    assert fork_of(3, 3, history) == {"fork": None, "following": True}
    assert "not in the history" in fork_of(4, 3, history)["problem"]


def test_history_lines_that_are_not_history_are_refused():
    with pytest.raises(ValueError):
        parse_history("garbage\n")


def test_pg_waldump_past_the_fork_counts_commits_not_aborts_with_times_and_bytes():
    count = counted()
    # 3 single inserts, 1 transaction with a savepoint (two tables), 1 CREATE TABLE, 1 UPDATE;
    # the rolled-back insert is not a commit.
    assert count["transactions"] == 6 and count["aborted"] == 1
    assert count["first_lsn"] == FORK and count["end_lsn"] == "0/30178E8"
    assert count["bytes"] == 0x30178E8 - 0x30020C0
    assert count["last_commit"] - count["first_commit"] == pytest.approx(0.056287, abs=1e-5)


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
    out = {"node": name, "status": status, **more}
    if end:
        out["count"] = {**counted(), "end_lsn": end}
        out["kept"] = f"/var/lib/baton/diverged/tl1-{FORK.replace('/', '-')}"
    return out


def test_the_node_holding_most_of_the_old_timeline_gives_the_figures():
    rec = reconcile("us-east", "us-west", [node("us-east-2", "diverged", "0/3002168"),
                                           node("us-east-1", "diverged", "0/30178E8"),
                                           node("us-east-3", "running")],
                    {FENCE: "app.public.baton_fence"}, 0)
    assert rec["status"] == "counted" and rec["node"] == "us-east-1"
    assert rec["transactions"] == 6 and rec["by_table"]["app.public.baton_fence"] == 5
    assert rec["problems"] == ["us-east-3: PostgreSQL runs, its WAL was not read"]


def test_nothing_past_the_fork_is_a_loss_of_none_and_a_rewound_region_is_not_counted_again():
    assert reconcile("a", "b", [node("a-1", "not_diverged")], {}, 0)["transactions"] == 0
    assert reconcile("a", "b", [node("a-1", "following")], {}, 0)["status"] == "following"
    unknown = reconcile("a", "b", [node("a-1", "unknown", problem="WAL gone")], {}, 0)
    assert unknown["status"] == "unknown" and unknown["problems"] == ["a-1: WAL gone"]


def test_the_newest_failover_away_from_the_region_is_amended_once():
    reports = [
        ("20261203T100000Z a", {"kind": "failover", "old": "us-east", "actions_taken": ["x"]}),
        ("20261203T110000Z b", {"kind": "failover", "old": "us-east", "actions_taken": ["x"]}),
        ("20261203T120000Z c", {"kind": "switchover", "old": "us-east", "actions_taken": ["x"]}),
        ("20261203T130000Z d", {"kind": "failover", "old": "us-west", "actions_taken": ["x"]}),
        ("20261203T140000Z e", {"kind": "failover", "old": "us-east", "actions_taken": []}),
    ]
    assert report_to_amend(reports, "us-east") == "20261203T110000Z b"
    reports[1][1]["reconciled"] = {"status": "counted"}
    assert report_to_amend(reports, "us-east") is None


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
    assert "could not be counted: a-1: gone" in reconciled_sentence(
        reconcile("a", "b", [node("a-1", "unknown", problem="gone")], {}, 0))

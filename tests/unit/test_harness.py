"""The lifecycle harness's verifier (tests/integration/harness.py): the figures it reports are
pure functions of the logged events, checked here on made-up logs."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))

from harness import Event, Measurement, Stream, Workload

NODES = {"a-1": ("region-a", "10.0.1.11"), "b-1": ("region-b", "10.0.2.11")}


def probe(name: str, samples: list[tuple[float, bool]]) -> Stream:
    """A probe log: (reply time, accepted) every 0.2 s, each sent 0.05 s before its reply."""
    stream = Stream(name)
    for at, ok in samples:
        stream.add(Event(at, ok, sent=at - 0.05, error=None if ok else "ReadOnlyError: no"))
    return stream


def workload(pg_a: list[tuple[float, bool]], pg_b: list[tuple[float, bool]]) -> Workload:
    load = Workload.__new__(Workload)  # no lab: only what the verifier reads
    load.nodes, load.started, load.ended, load.stuck = NODES, 0.0, 10.0, []
    load.pg, load.redis, load.pg_asyncpg = Stream("pg"), Stream("redis"), Stream("asyncpg")
    load.probes = {("postgres", "a-1"): probe("a", pg_a), ("postgres", "b-1"): probe("b", pg_b),
                   ("redis", "a-1"): Stream("ra"), ("redis", "b-1"): Stream("rb")}
    return load


def test_a_clean_handover_has_no_certain_two_writer_interval_and_a_small_possible_one():
    a = [(0.2, True), (0.4, True), (0.6, False), (0.8, False)]
    b = [(0.3, False), (0.5, False), (0.7, True), (0.9, True)]
    m = Measurement(workload(a, b))
    assert m.two_writer_intervals("postgres") == []
    possible = m.two_writer_intervals("postgres", possible=True)
    # a may have taken writes until its refused sample was sent (0.55), b from its last refusal
    # (0.5): at most 0.05 s in which both might have.
    assert [round(i["seconds"], 3) for i in possible] == [0.05]


def test_two_regions_acknowledging_in_the_same_time_are_a_two_writer_interval():
    a = [(1.0, True), (1.2, True), (1.4, True), (1.6, True), (1.8, False)]
    b = [(1.1, False), (1.3, True), (1.5, True), (1.7, True), (1.9, True)]
    m = Measurement(workload(a, b))
    found = m.two_writer_intervals("postgres")
    assert len(found) == 1
    assert found[0]["nodes"] == ["a-1", "b-1"]
    assert (found[0]["from"], found[0]["to"]) == (1.3, 1.6)


def test_longest_gap_counts_from_the_start_and_to_the_end():
    stream = Stream("client")
    for at, ok in [(1.0, True), (2.0, False), (6.5, True), (7.0, True)]:
        stream.add(Event(at, ok, seq=int(at * 10)))
    assert stream.longest_gap(0.0, 7.5) == 5.5
    assert stream.longest_gap(0.0, 20.0) == 13.0


def test_lost_writes_and_error_kinds_are_counted_per_tier():
    load = workload([], [])
    for seq, ok in [(1, True), (2, True), (3, False), (4, True)]:
        load.pg.add(Event(float(seq), ok, seq=seq,
                          error=None if ok else "OperationalError: connection refused"))
    m = Measurement(load)
    m.lost_pg = [e.seq for e in m.pg.acked() if e.seq not in {1, 2}]
    m.lost_redis = []
    summary = m.summary()["postgres"]
    assert (summary["acked"], summary["lost"], summary["errors"]) == (3, 1, 1)
    assert summary["error_kinds"] == {"OperationalError": 1}


def test_the_asyncpg_client_is_counted_apart_from_the_psycopg_one():
    load = workload([], [])
    load.pg.add(Event(1.0, True, seq=1))
    for seq, ok in [(1, True), (2, False), (3, True)]:
        load.pg_asyncpg.add(Event(float(seq), ok, seq=seq,
                                  error=None if ok else "InvalidSQLStatementNameError: gone"))
    m = Measurement(load)
    m.lost_pg, m.lost_redis, m.lost_pg_asyncpg = [], [], [3]
    summary = m.summary()
    assert (summary["postgres"]["acked"], summary["postgres"]["errors"]) == (1, 0)
    asyncpg = summary["postgres_asyncpg"]
    assert (asyncpg["acked"], asyncpg["lost"], asyncpg["errors"]) == (2, 1, 1)
    assert asyncpg["error_kinds"] == {"InvalidSQLStatementNameError": 1}
    assert "asyncpg acked 2 lost 1 errors 1" in m.line("step")


def test_what_a_stuck_writer_logs_after_the_stop_is_not_counted():
    load = workload([], [])
    load.pg.add(Event(1.0, True, seq=1))
    m = Measurement(load)
    load.pg.add(Event(11.0, True, seq=2))  # a writer that was stuck in a call at the stop
    assert [e.seq for e in m.pg.acked()] == [1]


def test_waiting_for_acknowledged_writes_names_every_postgres_client():
    load = workload([], [])
    load.pg_asyncpg.add(Event(1.0, False, seq=1, error="OSError: refused"))
    with pytest.raises(AssertionError, match=r"asyncpg 0 \(last error OSError: refused\)"):
        load.wait_acked(1, timeout=0.2, tiers=("postgres",))

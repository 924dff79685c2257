"""The decisions of a failover or switchover run, from recorded assessments: the gates (unknown
target, unhealthy or lagging target, split brain, a switchover without its old primary), the
plan, the Redis chain, the report; and the pure parts of the modules that act (the Patroni
cluster plan, PgBouncer's repoint, Redis's role changes). No server needed."""

import pytest
from baton_assess import global_view, primary_position, region_summary, region_verdict
from baton_failover import (
    baton_bouncers_to_release,
    baton_dns_in_place,
    baton_endpoints_first,
    baton_failover_metrics,
    baton_failover_plan,
    baton_failover_report,
    baton_failover_summary,
    baton_lsn,
    baton_lsn_int,
    baton_pgbouncer_holds,
    baton_redis_chain,
    baton_redis_in_place,
    baton_regions_to_repoint,
)
from baton_patroni import leader_first, plan_cluster, reached, standby_source
from test_assess_verdicts import node, unreachable

MiB = 1 << 20


def assessment(regions, last_known=None):
    """What baton_assess returns for these recorded probes."""
    summaries = {r: region_summary(r, nodes) for r, nodes in regions.items()}
    position, _ = primary_position(summaries, last_known)
    out = {}
    for r, s in summaries.items():
        verdict, reasons = region_verdict(s, None, position)
        out[r] = {"verdict": verdict, "reasons": reasons, "facts": s}
    view = global_view(summaries, {r: e["verdict"] for r, e in out.items()}, last_known)
    return {"regions": out, "global": view}


def lab(east="up", west_received="0/5000000", eu_received="0/5000000"):
    east_nodes = {"up": {"us-east-1": node("us-east-1", "primary", lsn="0/5000000")},
                  "down": {"us-east-1": unreachable("us-east-1")}}[east]
    return {"us-east": east_nodes,
            "us-west": {"us-west-1": node("us-west-1", "standby_leader",
                                          received=west_received, redis_role="slave")},
            "eu-west": {"eu-west-1": node("eu-west-1", "standby_leader",
                                          received=eu_received, redis_role="slave")}}


HOLDER_EAST = {"region": "us-east", "epoch": 1}


def test_an_unknown_target_is_refused_naming_the_regions():
    plan = baton_failover_plan(assessment(lab()), HOLDER_EAST, "us-north", "failover", MiB)
    assert plan["refuse"] == ("unknown target region 'us-north': choose one of us-east, "
                              "us-west, eu-west")


def test_failover_of_a_dead_region_waits_for_its_leases_then_promotes_the_target():
    plan = baton_failover_plan(assessment(lab(east="down"), last_known=0x5000000),
                               HOLDER_EAST, "us-west", "failover", MiB)
    assert plan["refuse"] is None
    assert (plan["old"], plan["old_answers"], plan["already"]) == ("us-east", False, False)
    assert plan["unreachable"] == ["us-east"] and plan["others"] == ["eu-west"]
    assert plan["not_following"] == ["us-east"]
    assert plan["data_loss_bytes"] == 0
    assert ("wait until us-east's fence agents have let their leases go (they fence their "
            "nodes first; cut-off ones fence before their leases expire)") in plan["steps"]
    assert "promote us-west's standby cluster; wait until it takes writes" in plan["steps"]


def test_failover_refuses_when_target_lags_beyond_bound_and_names_a_better_candidate():
    assessed = assessment(lab(east="down", west_received="0/4000000"), last_known=0x5000000)
    plan = baton_failover_plan(assessed, HOLDER_EAST, "us-west", "failover", MiB)
    assert plan["refuse"].startswith("target us-west lags 16777216 bytes of WAL behind the "
                                     "last known primary position, above max_data_loss "
                                     "(1048576 bytes): fail over to eu-west instead,")
    forced = baton_failover_plan(assessed, HOLDER_EAST, "us-west", "failover", MiB, force=True)
    assert forced["refuse"] is None and forced["data_loss_bytes"] == 16 * MiB


def test_failover_refuses_an_unhealthy_target():
    regions = lab(east="down")
    regions["us-west"] = {"us-west-1": unreachable("us-west-1")}
    plan = baton_failover_plan(assessment(regions, last_known=0x5000000), HOLDER_EAST,
                               "us-west", "failover", MiB)
    assert plan["refuse"].startswith("target us-west is unhealthy (no node of the region "
                                     "answers (down or cut off))")
    assert plan["refuse"].endswith("candidates: eu-west")


def test_a_target_that_already_holds_the_baton_is_nothing_to_do():
    regions = lab(east="down")
    regions["us-west"] = {"us-west-1": node("us-west-1", "primary", lsn="0/6000000")}
    plan = baton_failover_plan(assessment(regions), {"region": "us-west", "epoch": 2},
                               "us-west", "failover", MiB)
    assert plan["refuse"] is None and plan["already"] is True
    assert plan["steps"][0].startswith("us-west already holds the baton")
    assert plan["others"] == ["eu-west"]


def test_split_brain_is_refused_unless_forced():
    regions = lab()
    regions["us-west"] = {"us-west-1": node("us-west-1", "primary")}
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "failover", MiB)
    assert plan["refuse"].startswith("split brain: us-east, us-west all accept writes")


def test_a_switchover_needs_the_old_primary_to_answer():
    plan = baton_failover_plan(assessment(lab(east="down"), last_known=0x5000000),
                               HOLDER_EAST, "us-west", "switchover", MiB)
    assert plan["refuse"].startswith("a switchover needs the old primary region us-east to "
                                     "answer")
    live = baton_failover_plan(assessment(lab()), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert live["refuse"] is None and live["old_answers"]
    assert "demote us-east to a standby cluster of eu-west" in live["steps"]
    assert "wait until eu-west has received us-east's final WAL position" in live["steps"]


def test_a_switchover_is_refused_before_anything_moves_when_redis_cannot_be_handed_over():
    regions = lab()
    regions["eu-west"]["eu-west-1"]["redis"]["link"] = "down"
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert plan["refuse"].startswith(
        "a switchover hands Redis over without losing a write, and it cannot now: no Redis "
        "server of eu-west streams from us-east's master 10.231.1.11:6379 (eu-west-1: replica "
        "of 10.231.1.11:6379, link down)")
    assert "failback.yml -e region=eu-west" in plan["refuse"]
    # An unplanned failover does not hand over: it goes on.
    assert baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "failover",
                               MiB)["refuse"] is None
    # Two masters in the old region (its Sentinels failed it over, say): no single offset.
    regions = lab()
    regions["us-east"]["us-east-2"] = node("us-east-2", "replica")
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert "us-east has 2 Redis masters (10.231.1.11:6379, 10.231.1.12:6379), not one" \
        in plan["refuse"]
    # The master's probe timed out: the refusal names the server that did not answer.
    regions = lab()
    regions["us-east"]["us-east-1"]["redis"] = {"ok": False, "error": "timed out"}
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert ("us-east has 0 Redis masters (none among the servers that answered; us-east-1 did "
            "not answer the assessment), not one") in plan["refuse"], plan["refuse"]
    # A re-run after Redis moved already: the target has its master, nothing to hand over.
    regions = lab()
    regions["eu-west"]["eu-west-1"]["redis"] = {"ok": True, "role": "master", "offset": 1,
                                                "address": "10.231.3.11:6379"}
    regions["us-east"]["us-east-1"]["redis"]["fenced"] = True
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert plan["refuse"] is None


def test_a_switchover_is_refused_while_a_third_regions_redis_takes_writes():
    """The handover pauses the old master only: another master taking writes outside the
    target would stop it after PostgreSQL moved. A fenced one takes no write."""
    regions = lab()
    regions["us-west"]["us-west-1"]["redis"] = {"ok": True, "role": "master", "offset": 1,
                                                "address": "10.231.2.11:6379"}
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert "10.231.2.11:6379 also take writes as Redis masters, outside us-east" \
        in plan["refuse"]
    regions["us-west"]["us-west-1"]["redis"]["fenced"] = True
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "eu-west", "switchover", MiB)
    assert plan["refuse"] is None


def test_an_unknown_data_loss_is_refused_unless_forced():
    regions = lab(east="down")
    regions["us-west"]["us-west-1"]["postgres"]["receive_lsn"] = None
    regions["us-west"]["us-west-1"]["postgres"]["replay_lsn"] = None
    del regions["eu-west"]
    plan = baton_failover_plan(assessment(regions), HOLDER_EAST, "us-west", "failover", MiB)
    assert "the data loss of a failover to us-west cannot be estimated" in plan["refuse"]


def test_the_redis_chain_puts_the_new_master_first_and_skips_unreachable_regions():
    hostvars = {h: {"baton_address": a} for h, a in (
        ("e1", "10.0.1.11"), ("e2", "10.0.1.12"), ("w1", "10.0.2.11"), ("w2", "10.0.2.12"),
        ("u1", "10.0.3.11"), ("u2", "10.0.3.12"))}
    regions = {"us-east": ["e1", "e2"], "us-west": ["w1", "w2"], "eu-west": ["u1", "u2"]}
    chain = baton_redis_chain(regions, hostvars, "us-west", ["us-east"])
    assert chain == [
        {"address": "10.0.2.11", "port": 6379, "replicaof": "", "priority": 100,
         "unfence": True},
        {"address": "10.0.2.12", "port": 6379, "replicaof": "10.0.2.11:6379", "priority": 100,
         "unfence": True},
        {"address": "10.0.3.11", "port": 6379, "replicaof": "10.0.2.11:6379", "priority": 0,
         "unfence": False},
        {"address": "10.0.3.12", "port": 6379, "replicaof": "10.0.3.11:6379", "priority": 0,
         "unfence": False},
    ]


def test_the_report_states_rto_data_lost_and_the_timeline():
    plan = baton_failover_plan(assessment(lab()), HOLDER_EAST, "us-west", "failover", MiB)
    report = baton_failover_report(plan, {"start": 1000.0, "target promoted": 1012.5,
                                          "writes accepted through db": 1020.25},
                                   {"epoch": 2, "write_accepted_at": 1020.25,
                                    "reference_position": 0x5000100,
                                    "reference_source": "live",
                                    "promoted_position": "0/5000000", "promoted": True,
                                    "actions_taken": ["target promoted"]})
    assert report["rto_seconds"] == 20.25 and report["data_lost_bytes"] == 0x100
    assert report["data_lost_known"] is True and report["data_loss_window"] is None
    assert report["timeline"] == [{"step": "target promoted", "at": 12.5},
                                  {"step": "writes accepted through db", "at": 20.25}]
    summary = baton_failover_summary(report)
    assert summary[0] == "failover to us-west (from us-east): epoch 2"
    assert summary[2].startswith("data lost: 256 bytes of WAL")
    metrics = baton_failover_metrics(report, 1020.0)
    assert ('baton_failover_last_timestamp_seconds{epoch="2",source_region="us-east",'
            'target_region="us-west"} 1020.0') in metrics
    assert "baton_failover_last_data_loss_bytes 256.0" in metrics
    assert "baton_failover_last_data_loss_known 1.0" in metrics


def test_a_failover_from_a_primary_nobody_could_read_states_the_loss_as_unknown_and_bounded():
    """The old primary (cut off) may have acknowledged writes until its fence deadline: the
    report says so, with the window, instead of a figure no one measured."""
    plan = baton_failover_plan(assessment(lab(east="down"), last_known=0x5000100),
                               HOLDER_EAST, "us-west", "failover", MiB)
    report = baton_failover_report(plan, {"start": 1000.0, "assessed": 1002.0,
                                          "old region fenced, baton moved": 1011.0,
                                          "target promoted": 1012.5},
                                   {"epoch": 2, "reference_position": 0x5000100,
                                    "reference_source": "last known",
                                    "promoted_position": "0/5000000", "promoted": True,
                                    "last_replayed_at": 1001.5})
    assert report["data_lost_known"] is False and report["data_lost_bytes"] is None
    assert report["data_loss_window"] == {
        "from": "1970-01-01T00:16:41.500+00:00", "to": "1970-01-01T00:16:51.000+00:00",
        "seconds": 9.5, "at_least_bytes": 256}
    summary = baton_failover_summary(report)
    assert summary[2].startswith("data lost: unknown - the old primary could not be read; it "
                                 "may have acknowledged writes from 1970-01-01T00:16:41.500")
    assert "at most 9.5 s of writes, at least 256 bytes of WAL" in summary[2]
    metrics = baton_failover_metrics(report, 1020.0)
    assert "baton_failover_last_data_loss_known 0.0" in metrics
    assert "baton_failover_last_data_loss_window_seconds 9.5" in metrics


def test_lsn_round_trip():
    assert baton_lsn(baton_lsn_int("16/B374D848")) == "16/B374D848"
    assert baton_lsn(None) == "" and baton_lsn_int("") is None


# --- the modules' pure decisions ------------------------------------------------------------

SOURCE = standby_source(["10.231.2.11"], 5000, "baton_us_east")


@pytest.mark.parametrize(("config", "want", "source", "expected"), [
    ({}, "primary", None, None),
    ({"standby_cluster": {"host": "10.231.1.11", "port": 5000}}, "primary", None,
     {"standby_cluster": None}),
    ({}, "standby", SOURCE, {"standby_cluster": SOURCE}),
    ({"standby_cluster": dict(SOURCE)}, "standby", SOURCE, None),
    ({"standby_cluster": {**SOURCE, "host": "10.231.1.11"}}, "standby", SOURCE,
     {"standby_cluster": SOURCE}),
])
def test_the_cluster_plan_patches_only_what_differs(config, want, source, expected):
    body, _reason = plan_cluster(config, [{"role": "leader", "state": "running"}], want, source)
    assert body == expected


def test_a_standby_section_names_how_its_leader_is_created_and_converges_to_it():
    backed = standby_source(["10.231.2.11"], 5000, "baton_us_east", ["pgbackrest", "basebackup"])
    assert backed["create_replica_methods"] == ["pgbackrest", "basebackup"]
    assert SOURCE["create_replica_methods"] == ["basebackup"]
    body, reason = plan_cluster({"standby_cluster": dict(SOURCE)}, [], "standby", backed)
    assert body == {"standby_cluster": backed}
    assert reason == ("already a standby cluster of 10.231.2.11; its leader is created by "
                      "pgbackrest, basebackup")
    assert plan_cluster({"standby_cluster": dict(backed)}, [], "standby", backed)[0] is None


def test_a_promotion_is_waited_for_until_the_new_leader_takes_writes(monkeypatch):
    """Its own /patroni, not /primary (200 as soon as it holds the lock, still in recovery)."""
    import time

    import baton_patroni

    answers = iter([{"role": "replica", "state": "running"},
                    {"role": "replica", "state": "running"},
                    {"role": "primary", "state": "running"}])
    asked = []

    def rest(method, url, timeout, auth=None, body=None):
        asked.append(url)
        return 200, next(answers)
    monkeypatch.setattr(baton_patroni, "rest", rest)
    read = {"members": [{"name": "us-west-1", "role": "leader", "state": "running",
                         "host": "10.231.2.11"}]}
    baton_patroni.wait_primary_writes(read, ["10.231.2.11"], 8008, time.monotonic() + 5, 1)
    assert len(asked) == 3 and asked[0].endswith("10.231.2.11:8008/patroni")
    # Still in recovery at the deadline: one sentence naming the leader and what it said.
    monkeypatch.setattr(baton_patroni, "rest",
                        lambda *a, **k: (200, {"role": "replica", "state": "running"}))
    with pytest.raises(baton_patroni.PatroniProblem, match="Patroni says replica/running"):
        baton_patroni.wait_primary_writes(read, ["10.231.2.11"], 8008, time.monotonic(), 1)


def test_a_wait_for_streaming_makes_the_source_write_every_tick_until_the_region_streams(
        monkeypatch):
    """failback's wait for a rewound region: keep_wal_coming (the holder commits an empty
    transaction with an ID) is called every tick_every seconds while the region is not
    streaming, and no more once it is."""

    import baton_patroni

    not_yet = {"members": [{"role": "standby_leader", "state": "running"}]}
    streams = {"members": [{"role": "standby_leader", "state": "streaming"}]}
    reads = iter([not_yet] * 20 + [streams])  # one read every 0.25 s: streams at 5 s
    monkeypatch.setattr(baton_patroni, "read_cluster", lambda *a, **k: next(reads))
    now = [0.0]  # a clock that only the wait's sleeps move
    monkeypatch.setattr(baton_patroni.time, "monotonic", lambda: now[0])
    monkeypatch.setattr(baton_patroni.time, "sleep", lambda s: now.__setitem__(0, now[0] + s))
    ticks = []
    after = baton_patroni.wait_cluster(["10.231.1.11"], 8008, "standby", 1000.0, 1.0,
                                       streaming=True, tick=lambda: ticks.append(now[0]),
                                       tick_every=2.0)
    assert after is streams
    assert ticks == [2.0, 4.0]
    # A region that streams at the first read: the source is not asked to write.
    reads = iter([streams])
    ticks.clear()
    baton_patroni.wait_cluster(["10.231.1.11"], 8008, "standby", now[0] + 5, 1.0,
                               streaming=True, tick=lambda: ticks.append(now[0]))
    assert ticks == []


def test_an_outcome_is_reached_only_when_the_leader_runs_in_its_new_role():
    assert reached([{"role": "leader", "state": "running"}], "primary")
    assert not reached([{"role": "standby_leader", "state": "running"}], "primary")
    assert not reached([{"role": "leader", "state": "starting"}], "primary")
    assert reached([{"role": "standby_leader", "state": "streaming"}], "standby")


def test_pgbouncer_repoint_rewrites_only_the_host_of_its_line():
    from baton_pgbouncer import rewrite_hosts

    text = ("[databases]\napp = host=10.231.1.11 port=5000 dbname=app pool_mode=transaction\n"
            "app_ro = host=127.0.0.1 port=5001 dbname=app\n")
    new, changed = rewrite_hosts(text, "app", "10.231.2.11")
    assert changed and new == text.replace("host=10.231.1.11", "host=10.231.2.11")
    assert rewrite_hosts(new, "app", "10.231.2.11") == (new, False)
    with pytest.raises(ValueError):
        rewrite_hosts(text, "other", "10.0.0.1")


def test_redis_role_changes_only_what_differs():
    from baton_redis import plan_server

    master = {"role": "master", "master": None}
    replica = {"role": "replica", "master": "10.231.1.11:6379"}
    assert plan_server(master, "100", "", 100) == []
    assert plan_server(replica, "0", "", 100) == [["REPLICAOF", "NO", "ONE"],
                                                   ["CONFIG", "SET", "replica-priority", "100"],
                                                   ["CONFIG", "REWRITE"]]
    assert plan_server(master, "100", "10.231.2.11:6379", 0) == [
        ["REPLICAOF", "10.231.2.11", "6379"], ["CONFIG", "SET", "replica-priority", "0"],
        ["CONFIG", "REWRITE"]]
    assert plan_server(replica, "0", "10.231.1.11:6379", 0) == []


def test_a_fence_is_lifted_only_on_the_holder_regions_servers():
    from baton_redis import REDIS_FENCE, plan_server

    master = {"role": "master", "master": None}
    fenced = str(REDIS_FENCE)
    assert plan_server(master, "100", "", 100, fenced, 0) == [
        ["CONFIG", "SET", "min-replicas-to-write", "0"], ["CONFIG", "REWRITE"]]
    assert plan_server(master, "100", "", 100, "0", 0) == []
    # Not marked unfence (another region's server): the fence stays.
    assert plan_server(master, "0", "10.231.2.11:6379", 0, fenced, None) == [
        ["REPLICAOF", "10.231.2.11", "6379"], ["CONFIG", "REWRITE"]]


def test_patroni_byte_positions_read_as_postgresql_prints_them():
    from baton_patroni import as_lsn, lsn_to_int

    assert as_lsn(84079072) == "0/502F1E0" and lsn_to_int(as_lsn(84079072)) == 84079072
    assert as_lsn("16/B374D848") == "16/B374D848" and as_lsn(None) is None


def test_a_run_killed_after_the_baton_moved_finishes_from_the_region_it_left():
    regions = lab()
    regions["us-east"] = {"us-east-1": node("us-east-1", "standby_leader",
                                            received="0/5000000")}
    plan = baton_failover_plan(assessment(regions, last_known=0x5000000),
                               {"region": "eu-west", "epoch": 2, "from": "us-east"},
                               "eu-west", "switchover", MiB)
    assert plan["refuse"] is None and not plan["already"]
    assert (plan["old"], plan["old_answers"]) == ("us-east", True)
    assert "promote eu-west's standby cluster; wait until it takes writes" in plan["steps"]


def test_the_target_regions_witness_member_is_tried_first():
    members = ["10.231.1.11:2391", "10.231.2.11:2391", "10.231.3.11:2391"]
    assert baton_endpoints_first(members, ["10.231.2.11", "10.231.2.12"]) == [
        "10.231.2.11:2391", "10.231.1.11:2391", "10.231.3.11:2391"]
    assert baton_endpoints_first(members, []) == members
    # 10.231.1.1 is not 10.231.1.11: addresses match whole.
    assert baton_endpoints_first(members, ["10.231.1.1"]) == members


def test_a_last_known_position_counts_only_from_a_recent_report_of_the_same_holder():
    import json

    from baton_failover import baton_last_known_position

    report = json.dumps({"assessed_at": "2026-12-03T11:42:07.832224",
                         "global": {"baton_holder": "us-east", "primary_position": 0x5000100}})
    at = 1796298127.832224  # 2026-12-03T11:42:07.832224Z
    assert baton_last_known_position(report, "us-east", 300, at + 60) == "0/5000100"
    assert baton_last_known_position(report, "us-east", 300, at + 301) == ""  # too old
    assert baton_last_known_position(report, "us-west", 300, at + 60) == ""  # another primary
    assert baton_last_known_position("", "us-east", 300, at) == ""
    assert baton_last_known_position("{not json", "us-east", 300, at) == ""


def test_a_failover_from_a_silent_primary_without_a_recent_position_is_refused_unless_forced():
    plan = baton_failover_plan(assessment(lab(east="down")), HOLDER_EAST, "us-west",
                               "failover", MiB)
    assert plan["refuse"].startswith("the old primary region us-east does not answer and no "
                                     "recent health report")
    assert "-e force=true" in plan["refuse"]
    forced = baton_failover_plan(assessment(lab(east="down")), HOLDER_EAST, "us-west",
                                 "failover", MiB, force=True)
    assert forced["refuse"] is None


def test_the_patch_goes_to_the_leader_first_which_acts_on_it_at_once():
    members = [{"host": "10.0.0.1", "role": "replica"}, {"host": "10.0.0.3", "role": "leader"},
               {"host": "10.0.0.2", "role": "replica"}]
    assert leader_first(["10.0.0.1", "10.0.0.2", "10.0.0.3"], members) == [
        "10.0.0.3", "10.0.0.1", "10.0.0.2"]
    standby = [{"host": "10.0.0.2", "role": "standby_leader"}]
    assert leader_first(["10.0.0.1", "10.0.0.2"], standby) == ["10.0.0.2", "10.0.0.1"]
    assert leader_first(["10.0.0.1", "10.0.0.2"], []) == ["10.0.0.1", "10.0.0.2"]


def test_the_report_states_the_clients_write_pause_apart_from_the_rto_and_the_wall_time():
    """A switchover: PgBouncer's hold, not the run's length (which includes the assessment,
    while clients still write)."""
    plan = baton_failover_plan(assessment(lab()), HOLDER_EAST, "us-west", "switchover", MiB)
    marks = {"start": 1000.0, "assessed": 1002.0, "clients held": 1003.0,
             "target promoted": 1005.5, "PgBouncers repointed and resumed": 1006.25,
             "writes accepted through db": 1012.0}
    report = baton_failover_report(plan, marks, {
        "epoch": 2, "write_accepted_at": 1012.0, "reference_position": 0x5000000,
        "promoted_position": "0/5000000", "promoted": True, "reported_at": 1013.5})
    assert report["write_pause"]["seconds"] == 3.25
    assert report["write_pause"]["from"] == "1970-01-01T00:16:43.000+00:00"
    assert report["rto_seconds"] == 12.0 and report["wall_seconds"] == 13.5
    summary = baton_failover_summary(report)
    assert summary[3].startswith("clients could not write for 3.2 s at most: PgBouncer held")
    assert "baton_failover_last_write_pause_seconds 3.25" in baton_failover_metrics(report, 1.0)


def test_after_a_region_loss_the_write_pause_is_a_range_from_what_is_known_of_the_fault():
    plan = baton_failover_plan(assessment(lab(east="down"), last_known=0x5000100),
                               HOLDER_EAST, "us-west", "failover", MiB, True)
    outcome = {"epoch": 2, "promoted": True, "promoted_position": "0/5000000",
               "reference_position": 0x5000100, "reference_source": "last known",
               "last_replayed_at": 992.5, "write_accepted_at": 1008.0, "lease_ttl": 10}
    marks = {"start": 1000.0, "clients held": 1003.0, "old region fenced, baton moved": 1004.0,
             "PgBouncers repointed and resumed": 1005.0}
    # A busy database: the last replayed transaction (992.5) came just before the region's
    # last lease renewal (994): the fault lies between. No client wrote before the
    # PgBouncers' release (1005), and one resolving afresh wrote by the probe's write (1008):
    # clients waited 11 to 15.5 s.
    pause = baton_failover_report(plan, marks, outcome)["write_pause"]
    assert (pause["at_least_seconds"], pause["seconds"]) == (11.0, 15.5)
    assert pause["from"] == "1970-01-01T00:16:32.500+00:00"
    summary = baton_failover_summary(baton_failover_report(plan, marks, outcome))
    assert summary[3].startswith("clients could not write for about 11.0 to 15.5 s: from the "
                                 "fault")
    # An idle database: the upper figure counts from its last transaction, long before.
    idle = baton_failover_report(plan, marks, {**outcome, "last_replayed_at": 900.0})
    assert (idle["write_pause"]["at_least_seconds"], idle["write_pause"]["seconds"]) == (
        11.0, 108.0)
    # The first host's own RESUME, when known, is earlier than the play's mark.
    holds = [{"paused_at": 1003.1, "resumed_at": 1004.5}, {"paused_at": 1003.2,
                                                          "resumed_at": 1004.9}]
    early = baton_failover_report(plan, marks, {**outcome, "pgbouncer_holds": holds})
    assert early["write_pause"]["at_least_seconds"] == 10.5
    # Without the release's mark, the lower figure ends at the probe's write too.
    unmarked = {k: v for k, v in marks.items() if k != "PgBouncers repointed and resumed"}
    assert baton_failover_report(plan, unmarked, outcome)["write_pause"][
        "at_least_seconds"] == 14.0
    nothing = baton_failover_plan(assessment(lab()), {"region": "us-west", "epoch": 2},
                                  "us-west", "failover", MiB)
    assert baton_failover_report(nothing, {"start": 1.0}, {})["write_pause"] is None


def test_a_rerun_releases_only_the_pgbouncers_not_seen_done():
    def probe(host: str, paused: bool = False, disabled: bool = False, ok: bool = True) -> dict:
        return {"ok": ok, "host": host, "paused": paused, "disabled": disabled}

    target = ["10.0.2.11", "10.0.2.12"]
    assessment = {"regions": {
        "us-west": {"facts": {"pgbouncer": {"w1": probe("10.0.2.11,10.0.2.12"),
                                            "w2": probe("10.0.2.11,10.0.2.12", paused=True)}}},
        "us-east": {"facts": {"pgbouncer": {"e1": probe("10.0.1.11"),
                                            "e2": probe("10.0.2.11,10.0.2.12", disabled=True),
                                            "e3": probe("", ok=False)}}},
        "eu-west": {"facts": {"pgbouncer": {"x1": probe("10.0.2.11,10.0.2.12")}}}}}
    hosts = ["w1", "w2", "e1", "e2", "e3", "x1", "unseen"]
    assert baton_bouncers_to_release(assessment, hosts, target, []) == [
        "w2", "e1", "e2", "e3", "unseen"]
    # Every host the run held is released, whatever the assessment saw before.
    assert baton_bouncers_to_release(assessment, hosts, target, hosts) == hosts


def test_the_write_pause_of_a_switchover_is_the_longest_hold_of_one_pgbouncer():
    # As `raw` registers baton-pgbouncer's output (b) and as the module returns it (a, c).
    raw_b = {"rc": 0, "stdout": 'sudo: a warning\r\n{"changed": true, "paused_at": 1003.5}\r\n'}
    hostvars = {"a": {"__fo_paused": {"paused_at": 1003.0}, "__fo_bouncer": {"resumed_at": 1006.5}},
                "b": {"__fo_paused": raw_b, "__fo_bouncer": {"stdout": '{"resumed_at": 1008.0}'}},
                "c": {"__fo_paused": {"changed": False}, "__fo_bouncer": {"resumed_at": 1009.0}},
                "d": {"__fo_paused": {"stdout": "not json"},
                      "__fo_bouncer": {"resumed_at": 1009.0}}}
    holds = baton_pgbouncer_holds(["a", "b", "c", "d", "gone"], hostvars)
    assert [h["host"] for h in holds] == ["a", "b"]
    plan = baton_failover_plan(assessment(lab()), HOLDER_EAST, "us-west", "switchover", MiB)
    report = baton_failover_report(plan, {"start": 1000.0, "clients held": 1002.0,
                                          "PgBouncers repointed and resumed": 1009.5},
                                   {"epoch": 2, "pgbouncer_holds": holds, "promoted": True,
                                    "promoted_position": "0/5000000"})
    assert report["write_pause"]["seconds"] == 4.5  # b: 1003.5 -> 1008.0
    assert "the longest hold of a host" in report["write_pause"]["basis"]


def test_redis_is_left_alone_on_a_rerun_only_when_the_assessment_saw_it_as_the_move_leaves_it():
    hostvars = {h: {"baton_address": a} for h, a in (
        ("w1", "10.0.2.11"), ("w2", "10.0.2.12"), ("u1", "10.0.3.11"))}
    regions = {"us-west": ["w1", "w2"], "eu-west": ["u1"]}
    chain = baton_redis_chain(regions, hostvars, "us-west")
    master = "10.0.2.11:6379"

    def seen(**changes) -> dict:
        redis = {"w1": {"ok": True, "address": master, "role": "master", "fenced": False},
                 "w2": {"ok": True, "address": "10.0.2.12:6379", "role": "slave",
                        "master": master, "link": "up", "fenced": False},
                 "u1": {"ok": True, "address": "10.0.3.11:6379", "role": "slave",
                        "master": master, "link": "up", "fenced": True}}
        monitor = {"quorum": "2", "down-after-milliseconds": "5000"}
        sentinel = {"w1": {"ok": True, "watching": master, "quorum": True,
                           "settings": dict(monitor)},
                    "w2": {"ok": True, "watching": master, "quorum": True,
                           "settings": dict(monitor)},
                    "u1": {"ok": True, "watching": None}}
        for key, value in changes.items():
            node, field = key.split("__")
            if field == "downafter":
                sentinel[node]["settings"]["down-after-milliseconds"] = value
            elif field in ("watching", "quorum"):
                sentinel[node][field] = value
            else:
                redis[node][field] = value
        return {"regions": {"us-west": {"facts": {"redis": {k: redis[k] for k in ("w1", "w2")},
                                                  "sentinel": {k: sentinel[k]
                                                               for k in ("w1", "w2")}}},
                            "eu-west": {"facts": {"redis": {"u1": redis["u1"]},
                                                  "sentinel": {"u1": sentinel["u1"]}}}}}

    wanted = {"quorum": 2, "down-after-milliseconds": 5000}
    assert baton_redis_in_place(chain, seen(), regions, "us-west", hostvars, wanted)
    for drift in ({"w1__fenced": True}, {"w2__link": "down"}, {"u1__master": "10.0.2.12:6379"},
                  {"w1__role": "slave"}, {"u1__watching": master}, {"w2__watching": None},
                  {"u1__ok": False}, {"w2__quorum": False}, {"w1__downafter": "30000"}):
        assert not baton_redis_in_place(chain, seen(**drift), regions, "us-west", hostvars,
                                        wanted), drift


def test_a_host_of_a_pgbouncer_play_counts_as_done_only_with_a_result_that_succeeded():
    from baton_failover import baton_hosts_not_done

    hostvars = {"ok": {"r": {"changed": True}}, "failed": {"r": {"failed": True}},
                "unreachable": {"r": {"unreachable": True, "changed": False, "msg": "down"}},
                "skipped": {"r": {"skipped": True}}, "none": {}}
    assert baton_hosts_not_done(["ok", "failed", "unreachable", "skipped", "none", "gone"],
                                hostvars, "r") == ["failed", "unreachable", "skipped", "none",
                                                   "gone"]


def _following(source):
    """The lab with us-west the primary region and eu-west's cluster following `source`
    (its /config's standby_cluster; "unread" when /config did not answer)."""
    regions = lab()
    regions["us-east"] = {"us-east-1": node("us-east-1", "standby_leader", redis_role="slave")}
    regions["us-west"] = {"us-west-1": node("us-west-1", "primary")}
    if source != "unread":
        regions["eu-west"]["eu-west-1"]["config"] = {"ok": True, "standby_source": source}
    return assessment(regions)


def test_a_re_run_leaves_a_region_that_follows_the_target_alone():
    follows = {"host": "10.231.2.11", "port": 5000, "primary_slot_name": "baton_eu_west"}
    plan = {"others": ["eu-west"]}
    assert baton_regions_to_repoint(plan, _following(follows), ["10.231.2.11"], 5000) == []


@pytest.mark.parametrize("source", [
    "unread",                                                     # /config did not answer
    None,                                                         # a primary cluster
    {"host": "10.231.1.11", "port": 5000, "primary_slot_name": "baton_eu_west"},  # old primary
    {"host": "10.231.2.11", "port": 5001, "primary_slot_name": "baton_eu_west"},  # other port
    {"host": "10.231.2.11", "port": 5000, "primary_slot_name": "baton_us_west"},  # other slot
    {"host": "10.231.2.11,10.231.2.12", "port": 5000,                             # other hosts
     "primary_slot_name": "baton_eu_west"},
])
def test_a_region_not_seen_following_the_target_exactly_is_repointed(source):
    plan = {"others": ["eu-west"]}
    assert baton_regions_to_repoint(plan, _following(source), ["10.231.2.11"], 5000) == [
        {"region": "eu-west", "slot": "baton_eu_west"}]


def test_a_region_following_the_target_whose_standby_leader_is_stopped_is_repointed():
    follows = {"host": "10.231.2.11", "port": 5000, "primary_slot_name": "baton_eu_west"}
    regions = _following(follows)
    regions["regions"]["eu-west"]["facts"]["patroni"]["members"][0]["state"] = "stopped"
    assert baton_regions_to_repoint({"others": ["eu-west"]}, regions, ["10.231.2.11"],
                                    5000) == [{"region": "eu-west", "slot": "baton_eu_west"}]


def test_a_region_following_the_target_without_a_standby_leader_is_repointed():
    follows = {"host": "10.231.2.11", "port": 5000, "primary_slot_name": "baton_eu_west"}
    regions = _following(follows)
    regions["regions"]["eu-west"]["facts"]["patroni"]["cluster_role"] = None
    assert baton_regions_to_repoint({"others": ["eu-west"]}, regions, ["10.231.2.11"],
                                    5000) == [{"region": "eu-west", "slot": "baton_eu_west"}]


def test_a_rerun_leaves_dns_alone_only_when_every_server_answers_as_the_move_leaves_it():
    home, west, east = "10.0.0.11", "10.0.2.11", "10.0.1.11"
    want = {"db": ["10.0.2.11", "10.0.2.12"], "redis": ["10.0.2.11"]}

    def seen(serials, db=("10.0.2.12", "10.0.2.11"), redis=("10.0.2.11",), errors=None):
        answering = [s for s in serials if s not in (errors or {})]
        return {"dns": {"serials": {s: serials[s] for s in answering},
                        "names": {"db": {s: {"values": list(db)} for s in answering},
                                  "redis": {s: {"values": list(redis)} for s in answering}},
                        "errors": errors or {}}}
    agree = {home: 7, west: 7, east: 7}
    assert baton_dns_in_place(seen(agree), None, home, [home, west, east], want)
    # The order of the answers does not matter; a lost region's server is not asked.
    assert baton_dns_in_place(seen(agree), None, home, [home, west], want)
    # Each of these leaves the DNS steps to run again:
    assert not baton_dns_in_place(seen(agree), {"host": "us-west-1"}, home, [home, west], want)
    assert not baton_dns_in_place(seen(agree), {"malformed": "x"}, home, [home, west], want)
    assert not baton_dns_in_place(seen({home: 7, west: 7, east: 6}), None, home,
                                  [home, west, east], want)
    assert not baton_dns_in_place(seen(agree, db=("10.0.1.11",)), None, home, [home, west], want)
    assert not baton_dns_in_place(seen(agree, redis=()), None, home, [home, west], want)
    assert not baton_dns_in_place(seen(agree, errors={home: "timeout"}), None, home, [west], want)
    assert not baton_dns_in_place(seen(agree, errors={east: "timeout"}), None, home,
                                  [home, west, east], want)
    assert not baton_dns_in_place({}, None, home, [home, west], want)
    # Servers that answered without a serial do not "agree".
    assert not baton_dns_in_place(seen({home: None, west: None}), None, home, [home, west], want)
    assert not baton_dns_in_place(seen(agree), None, home, [], want)

"""baton_assess's verdicts and global view from recorded probes (healthy, lagging, split
brain, no primary, a region unreachable): pure decision logic, no server needed."""

import pytest
from baton_assess import (
    DEGRADED,
    HEALTHY,
    UNHEALTHY,
    dns_view,
    global_view,
    lsn_to_int,
    primary_position,
    region_summary,
    region_verdict,
)

DOWN = {"ok": False, "error": "TimeoutError: timed out"}


def _redis_at(name):
    """The lab address of a node's Redis (us-west-2 -> 10.231.2.12:6379)."""
    region, _, index = name.rpartition("-")
    site = {"us-east": 1, "us-west": 2, "eu-west": 3}.get(region, 9)
    return f"10.231.{site}.{10 + int(index)}:6379" if index.isdigit() else f"{name}:6379"


def node(name, role, *, lsn="0/5000000", received=None, in_recovery=None, paused=False,
         redis_role="master", sentinel_quorum=True, etcd=True):
    """Probes of one node as the module records them."""
    primary = role == "primary"
    recovering = (not primary) if in_recovery is None else in_recovery
    return {
        "patroni": {"ok": True, "name": name, "role": role,
                    "state": "running" if role in ("primary", "standby_leader") else "streaming",
                    "timeline": 1, "pending_restart": False},
        "cluster": {"ok": True, "members": [{"name": name, "role": role, "state": "running"}]},
        "etcd": {"ok": True, "healthy": etcd},
        "postgres": {"ok": True, "in_recovery": recovering,
                     "current_lsn": None if recovering else lsn,
                     "receive_lsn": received if recovering else None,
                     "replay_lsn": received if recovering else None,
                     "replay_delay_seconds": 0.5 if recovering else None},
        "pgbouncer": {"ok": True, "host": "10.231.1.11", "port": 5000, "paused": paused},
        "haproxy_rw": {"ok": True, "in_recovery": recovering},
        "haproxy_ro": {"ok": True, "in_recovery": recovering},
        "redis": {"ok": True, "role": redis_role, "offset": 100, "address": _redis_at(name),
                  **({"link": "up", "master": "10.231.1.11:6379"} if redis_role == "slave"
                     else {})},
        "sentinel": {"ok": True, "watching": "10.231.1.11:6379" if primary else None,
                     "quorum": sentinel_quorum if primary else None},
    }


def unreachable(name):
    return dict.fromkeys(node(name, "replica"), DOWN)


def assess(regions, max_lag=None, last_known=None):
    summaries = {r: region_summary(r, nodes) for r, nodes in regions.items()}
    position, _ = primary_position(summaries, last_known)
    verdicts = {r: region_verdict(s, max_lag, position) for r, s in summaries.items()}
    view = global_view(summaries, {r: v[0] for r, v in verdicts.items()}, last_known)
    return verdicts, view


def healthy_lab(west_received="0/5000000", east=None):
    return {
        "us-east": {"us-east-1": east or node("us-east-1", "primary", lsn="0/5000000")},
        "us-west": {"us-west-1": node("us-west-1", "standby_leader", received=west_received,
                                      redis_role="slave")},
        "eu-west": {"eu-west-1": node("eu-west-1", "standby_leader", received="0/4F00000",
                                      redis_role="slave")},
    }


def test_a_healthy_lab_has_one_baton_holder_and_ranked_candidates():
    verdicts, view = assess(healthy_lab())
    assert {r: v[0] for r, v in verdicts.items()} == dict.fromkeys(verdicts, HEALTHY)
    assert view["baton_holder"] == "us-east" and not view["split_brain"]
    assert view["problem"] is None and view["primary_position_source"] == "live"
    assert [(c["region"], c["data_loss_bytes"]) for c in view["candidates"]] == [
        ("us-west", 0), ("eu-west", 0x100000)]


def test_a_standby_lagging_beyond_the_budget_is_degraded_and_ranked_last():
    verdicts, view = assess(healthy_lab(west_received="0/1000000"), max_lag=0x200000)
    assert verdicts["us-west"][0] == DEGRADED
    assert "standby lags 67108864 bytes, above the budget of 2097152" in verdicts["us-west"][1]
    assert [c["region"] for c in view["candidates"]] == ["eu-west", "us-west"]


def test_two_writable_regions_are_split_brain_with_no_holder():
    regions = healthy_lab()
    regions["us-west"] = {"us-west-1": node("us-west-1", "primary", lsn="0/5100000")}
    _verdicts, view = assess(regions)
    assert view["split_brain"] and view["baton_holder"] is None
    assert view["writable_regions"] == ["us-east", "us-west"]
    assert view["problem"] == "split brain: us-east, us-west all accept writes"


def test_a_node_that_accepts_writes_behind_patronis_back_counts_as_writable():
    regions = healthy_lab()
    regions["eu-west"]["eu-west-1"] = node("eu-west-1", "standby_leader", in_recovery=False)
    _verdicts, view = assess(regions)
    assert view["split_brain"] and "eu-west" in view["writable_regions"]


def test_no_writable_region_is_a_problem_and_the_most_advanced_standby_sets_the_position():
    regions = healthy_lab()
    regions["us-east"] = {"us-east-1": unreachable("us-east-1")}
    verdicts, view = assess(regions)
    assert verdicts["us-east"] == (UNHEALTHY, ["no node of the region answers (down or cut off)"])
    assert view["baton_holder"] is None and view["problem"] == "no region accepts writes"
    assert view["primary_position_source"] == "most advanced standby"
    assert view["candidates"][0] == {"region": "us-west", "verdict": HEALTHY,
                                     "data_loss_bytes": 0, "replay_delay_seconds": 0.5}


def test_a_region_nobody_can_see_is_unknown_not_counted_as_a_standby():
    regions = healthy_lab()
    regions["us-east"] = {"us-east-1": unreachable("us-east-1")}
    regions["us-west"] = {"us-west-1": node("us-west-1", "primary", lsn="0/5100000")}
    _verdicts, view = assess(regions)
    assert view["baton_holder"] == "us-west" and view["unknown_regions"] == ["us-east"]
    assert "us-east" not in [c["region"] for c in view["candidates"]]


def test_a_last_known_primary_position_gives_the_data_loss_of_each_candidate():
    regions = healthy_lab()
    regions["us-east"] = {"us-east-1": unreachable("us-east-1")}
    _verdicts, view = assess(regions, last_known=lsn_to_int("0/5000100"))
    assert view["primary_position_source"] == "last known"
    assert {c["region"]: c["data_loss_bytes"] for c in view["candidates"]} == {
        "us-west": 0x100, "eu-west": 0x100100}


def test_etcd_without_quorum_and_a_dead_postgres_leader_make_a_region_unhealthy():
    east = node("us-east-1", "primary", etcd=False)
    east["postgres"] = DOWN
    verdict, reasons = assess(healthy_lab(east=east))[0]["us-east"]
    assert verdict == UNHEALTHY
    assert "etcd has no quorum (0 of 1 healthy)" in reasons
    assert "PostgreSQL on the leader us-east-1 does not answer" in reasons


@pytest.mark.parametrize(("change", "reason"), [
    ({"pgbouncer": {"ok": True, "host": "x", "port": 1, "paused": True}},
     "PgBouncer on us-east-1 has app paused"),
    ({"sentinel": {"ok": True, "watching": "10.231.1.11:6379", "quorum": False,
                   "quorum_message": "NOQUORUM 1 usable Sentinels"}},
     "Sentinel on us-east-1: no quorum (NOQUORUM 1 usable Sentinels)"),
    ({"redis": DOWN}, "Redis on us-east-1 does not answer"),
    ({"haproxy_ro": DOWN}, "HAProxy read-only endpoint on us-east-1 does not reach PostgreSQL"),
])
def test_a_problem_outside_the_database_core_degrades_the_region(change, reason):
    east = {**node("us-east-1", "primary"), **change}
    verdict, reasons = assess(healthy_lab(east=east))[0]["us-east"]
    assert (verdict, reasons) == (DEGRADED, [reason])


def test_dns_answers_are_traced_to_regions_and_serials_compared():
    probes = {"10.231.0.11": {"ok": True, "records": {"db": ["10.231.1.11"]}, "serial": 7},
              "10.231.2.11": {"ok": True, "records": {"db": ["10.231.2.11"]}, "serial": 6},
              "10.231.3.11": DOWN}
    view = dns_view(probes, {"10.231.1.11": "us-east", "10.231.2.11": "us-west"})
    assert view["names"]["db"]["10.231.0.11"]["regions"] == ["us-east"]
    assert view["names"]["db"]["10.231.2.11"]["regions"] == ["us-west"]
    assert not view["in_sync"] and view["errors"] == {"10.231.3.11": DOWN["error"]}


def test_wal_positions_parse_as_postgresql_writes_them():
    assert lsn_to_int("16/B374D848") == (0x16 << 32) + 0xB374D848
    assert lsn_to_int(None) is None


# --- every tier against the witness --------------------------------------------------------

def redis_node(address: str, role: str = "slave", master: str | None = None,
               link: str = "up", fenced: bool = False) -> dict:
    probe = {"ok": True, "role": role, "address": f"{address}:6379", "fenced": fenced}
    if role == "slave":
        probe.update(master=f"{master}:6379", link=link)
    return probe


def tiers(east: dict, west: dict, euw: dict, sentinels: dict | None = None) -> dict:
    sentinels = sentinels or {}
    return {region: {"redis": {f"{region}-1": probe},
                     "sentinel": {f"{region}-1": sentinels.get(region, {"ok": True,
                                                                         "watching": None})}}
            for region, probe in (("us-east", east), ("us-west", west), ("eu-west", euw))}


E, W, U = "10.231.1.11", "10.231.2.11", "10.231.3.11"


def test_one_writable_redis_in_the_holder_region_with_everything_following_is_no_problem():
    from baton_assess import redis_tier_problems

    lab = tiers(redis_node(E, "master"), redis_node(W, master=E), redis_node(U, master=E),
                {"us-east": {"ok": True, "watching": f"{E}:6379"}})
    assert redis_tier_problems(lab, "us-east") == []
    lab["us-east"]["sentinel"]["us-east-1"]["watching"] = None
    assert redis_tier_problems(lab, "us-east") == [
        "Sentinel on us-east-1 in us-east, which holds the baton, watches nothing: a lost "
        "master would not be failed over (site.yml sets its monitor again)"]


def test_a_returned_regions_writable_master_and_its_watching_sentinel_are_problems():
    from baton_assess import redis_tier_problems

    # us-west holds the baton; us-east came back as a writable master, its Sentinel watching.
    lab = tiers(redis_node(E, "master"), redis_node(W, "master"), redis_node(U, master=W),
                {"us-east": {"ok": True, "watching": f"{E}:6379"},
                 "us-west": {"ok": True, "watching": f"{W}:6379"}})
    problems = redis_tier_problems(lab, "us-west")
    assert problems[0] == ("Redis accepts writes on more than one server: us-east-1 (us-east), "
                           "us-west-1 (us-west)")
    assert any("Sentinel on us-east-1 (us-east) watches 10.231.1.11:6379 outside" in p
               for p in problems)
    # Fenced by its gate, it is still a master that does not follow: pending failback.
    lab["us-east"]["redis"]["us-east-1"]["fenced"] = True
    lab["us-east"]["sentinel"]["us-east-1"]["watching"] = None
    assert redis_tier_problems(lab, "us-west") == [
        "Redis on us-east-1 (us-east) is a master (fenced): it does not follow the holder; run "
        "failback.yml"]


def test_a_replication_loop_and_no_writable_redis_are_named():
    from baton_assess import redis_tier_problems

    lab = tiers(redis_node(E, master=W), redis_node(W, master=E), redis_node(U, master=W))
    problems = redis_tier_problems(lab, "us-west")
    assert problems[0].startswith("no Redis accepts writes")
    assert sum("replication loop" in p for p in problems) == 1
    assert "us-east-1 -> us-west-1 -> us-east-1" in " ".join(problems)


def test_a_writable_redis_outside_the_holder_and_a_broken_link_are_problems():
    from baton_assess import redis_tier_problems

    lab = tiers(redis_node(E, "master"), redis_node(W, master=E, link="down"),
                redis_node(U, master=E), {"us-west": {"ok": True, "watching": f"{E}:6379"}})
    problems = redis_tier_problems(lab, "us-west")[:2]
    assert problems == ["Redis accepts writes on us-east-1 in us-east, but us-west holds the "
                        "baton", "Redis on us-west-1 (us-west): link to its master is down"]


def test_every_name_server_must_answer_the_holder_at_the_primarys_serial():
    from baton_assess import dns_tier_problems

    dns = {"names": {"db": {"10.231.0.11": {"regions": ["us-west"]},
                            "10.231.1.11": {"regions": ["us-east"]}},
                     "redis": {"10.231.0.11": {"regions": ["us-west"]},
                               "10.231.1.11": {"regions": ["us-east"]}}},
           "serials": {"10.231.0.11": 9, "10.231.1.11": 7}, "errors": {}}
    problems = dns_tier_problems(dns, "us-west", "10.231.0.11", "baton.internal")
    assert problems == [
        "db.baton.internal on 10.231.1.11 points at us-east, not at us-west, which holds the "
        "baton",
        "redis.baton.internal on 10.231.1.11 points at us-east, not at us-west, which holds the "
        "baton",
        "name server 10.231.1.11 serves serial 7 of baton.internal, the primary 10.231.0.11 has "
        "9: it missed updates (rndc refresh baton.internal there)"]


def test_the_witness_must_name_the_region_whose_postgresql_takes_writes():
    from baton_assess import witness_problems

    assert witness_problems("us-west", None, ["us-west"]) == []
    assert witness_problems("us-west", None, ["us-east"]) == [
        "PostgreSQL accepts writes in us-east but the witness names us-west as holder"]
    assert "does not answer" in witness_problems(None, "timed out", ["us-east"])[0]


def test_the_data_loss_estimate_uses_the_greater_of_received_and_replayed():
    from baton_assess import standby_lag_bytes

    summary = {"patroni": {"cluster_role": "standby"},
               "postgres": {"receive_lsn": "0/3000000", "replay_lsn": "0/3800000"}}
    assert standby_lag_bytes(summary, 0x3800000) == 0
    summary["postgres"]["replay_lsn"] = "0/2000000"
    assert standby_lag_bytes(summary, 0x3800000) == 0x800000


NODE_METRICS = """# HELP baton_agent_up 1 while the agent runs its loop.
# TYPE baton_agent_up gauge
baton_agent_up{region="us-west",node="us-west-1"} 1
baton_agent_fenced{region="us-west",node="us-west-1"} 1
baton_agent_holds_baton{region="us-west",node="us-west-1"} 0
node_textfile_mtime_seconds{file="/var/lib/prometheus/node-exporter/baton_agent.prom"} 1.7e+09
node_textfile_mtime_seconds{file="/var/lib/prometheus/node-exporter/baton_health.prom"} 1.6e+09
node_time_seconds 1.700000003e+09
"""


def test_the_agent_is_read_from_node_exporter_with_the_age_of_its_file():
    from baton_assess import parse_agent_metrics

    assert parse_agent_metrics(NODE_METRICS) == {"ok": True, "agent": True, "up": True,
                                                 "fenced": True, "holds": False, "age": 3.0}
    assert parse_agent_metrics("node_time_seconds 5\n") == {"ok": True, "agent": False}


def test_a_fenced_node_in_the_holder_region_and_a_silent_agent_are_problems():
    from baton_assess import agent_problems

    fenced = {"ok": True, "agent": True, "up": True, "fenced": True, "age": 1.0}
    fine = {"ok": True, "agent": True, "up": True, "fenced": False, "age": 1.0}
    lab = {"us-west": {"agent": {"us-west-1": fenced}},
           "us-east": {"agent": {"us-east-1": fenced}},
           "eu-west": {"agent": {"eu-west-1": {**fine, "age": 60.0}}}}
    problems = agent_problems(lab, "us-west")
    assert problems == [
        "the Baton agent on eu-west-1 (eu-west) last reported 60 s ago: it does not fence nor "
        "renew (systemctl status baton-agent there)",
        "us-west-1 in us-west, which holds the baton, is fenced: its PostgreSQL stays down; "
        "find why (journalctl -u baton-agent), then unfence it (baton_agent.py unfence) and "
        "start Patroni"]
    # A fenced node outside the holder region is what a returned region looks like.
    assert agent_problems({"us-east": {"agent": {"us-east-1": fenced}}}, "us-west") == []


def test_a_probe_that_ran_out_of_time_on_a_node_that_answers_is_asked_once_more():
    """A busy controller's threads can miss the deadline on a node that is up; a node that
    answered nothing (a lost region) is not asked again, so a region loss costs no more."""
    from baton_assess import ask_again

    calls: dict[str, int] = {}

    def job(name: str, answers: list[dict]):
        def run():
            calls[name] = calls.get(name, 0) + 1
            return dict(answers[min(calls[name], len(answers)) - 1])
        return run

    late = {"ok": False, "error": "no answer within 2.5 s"}
    refused = {"ok": False, "error": "ConnectionRefusedError: [Errno 111] Connection refused"}
    jobs = {("node", "us-east", "e1", "patroni"): job("e1 patroni", [{"ok": True}]),
            ("node", "us-east", "e1", "redis"): job("e1 redis", [late, {"ok": True}]),
            ("node", "us-east", "e1", "sentinel"): job("e1 sentinel", [refused]),
            ("node", "us-west", "w1", "patroni"): job("w1 patroni", [late]),
            ("node", "us-west", "w1", "redis"): job("w1 redis", [late]),
            ("dns", "10.0.0.11"): job("dns", [late])}
    first = {key: fn() for key, fn in jobs.items()}
    probes = ask_again(jobs, first, 2.5)
    assert probes[("node", "us-east", "e1", "redis")]["ok"] is True
    assert calls == {"e1 patroni": 1, "e1 redis": 2, "e1 sentinel": 1, "w1 patroni": 1,
                     "w1 redis": 1, "dns": 1}
    assert probes[("node", "us-east", "e1", "sentinel")] == refused
    assert probes[("node", "us-west", "w1", "redis")] == late
    # Nothing to ask again: the same result, no thread started.
    assert ask_again(jobs, {k: {"ok": True} for k in jobs}, 2.5) == {k: {"ok": True} for k in jobs}

"""Which region holds the primary, decided from what every region's Patroni reports."""

import pytest
from baton_patroni import PrimaryUndecided, decide_primary


def region(*roles, reachable=True):
    members = {f"m{i}": role for i, role in enumerate(roles)}
    return {"reachable": reachable, "answered_by": "10.0.0.1" if reachable else None,
            "members": members, "roles": sorted(set(roles))}


DOWN = region(reachable=False)


def test_first_deploy_uses_the_inventory_initial_primary():
    states = {"us-east": DOWN, "us-west": DOWN, "eu-west": DOWN}
    assert decide_primary(states, "us-east")[0] == "us-east"


def test_the_live_leader_wins_over_the_inventory():
    states = {"us-east": region("standby_leader"), "us-west": region("leader", "replica"),
              "eu-west": region("standby_leader")}
    primary, reason = decide_primary(states, "us-east")
    assert primary == "us-west"
    assert reason == "us-west has the only writable Patroni leader"


def test_a_lost_initial_primary_region_does_not_stop_a_promoted_one_being_found():
    states = {"us-east": DOWN, "us-west": region("leader"), "eu-west": region("standby_leader")}
    assert decide_primary(states, "us-east")[0] == "us-west"


def test_two_writable_regions_are_refused_as_split_brain():
    states = {"us-east": region("leader"), "us-west": region("leader"), "eu-west": DOWN}
    with pytest.raises(PrimaryUndecided, match="split brain"):
        decide_primary(states, "us-east")


def test_clusters_without_a_writable_leader_are_refused_pointing_at_failover():
    states = {"us-east": DOWN, "us-west": region("standby_leader"),
              "eu-west": region("standby_leader")}
    with pytest.raises(PrimaryUndecided) as err:
        decide_primary(states, "us-east")
    assert str(err.value) == (
        "Patroni clusters exist (us-west: standby_leader, eu-west: standby_leader) but no region "
        "has a writable leader: run failover.yml to choose one, or wait for the primary "
        "region's in-region failover")


def test_an_initial_primary_that_is_not_a_region_is_refused():
    with pytest.raises(PrimaryUndecided, match="'ap-south' is not one of us-east"):
        decide_primary({"us-east": DOWN}, "ap-south")


# --- a demoted leader: its final position is read once its PostgreSQL answers from recovery ---

DEMOTED_READ = {"members": [{"name": "us-east-1", "host": "10.0.1.11", "role": "standby_leader",
                             "state": "running"}]}  # /cluster, right after the PATCH


def scripted_patroni(monkeypatch, answers):
    """/patroni answers in turn (an OSError is raised); the last one repeats."""
    import baton_patroni
    calls = []

    def rest(method, url, timeout, auth=None, body=None):
        calls.append(url)
        answer = answers[min(len(calls), len(answers)) - 1]
        if isinstance(answer, OSError):
            raise answer
        return 200, answer
    monkeypatch.setattr(baton_patroni, "rest", rest)
    monkeypatch.setattr(baton_patroni.time, "sleep", lambda _s: None)
    return calls


def test_a_demoted_leaders_position_waits_until_it_answers_from_recovery(monkeypatch):
    from baton_patroni import standby_answers
    calls = scripted_patroni(monkeypatch, [
        {"role": "primary", "state": "running", "xlog": {"location": 100}},  # not yet stopping
        {"role": "demoted", "state": "stopping"},  # shutting down: no position
        OSError("connection refused"),
        {"role": "standby_leader", "state": "starting"},
        {"role": "standby_leader", "state": "running",
         "xlog": {"received_location": 0, "replayed_location": 0x3000108}},
    ])
    assert standby_answers(DEMOTED_READ, ["10.0.1.11"], "standby", 8008,
                           deadline=float("inf"), timeout=1) == "0/3000108"
    assert len(calls) == 5 and all(c.endswith("10.0.1.11:8008/patroni") for c in calls)


def test_a_demoted_leader_that_never_answers_stops_the_move_naming_it(monkeypatch):
    from baton_patroni import PatroniProblem, standby_answers
    scripted_patroni(monkeypatch, [{"role": "demoted", "state": "stopped"}])
    with pytest.raises(PatroniProblem, match=r"10\.0\.1\.11 did not answer from recovery in time "
                                             r"\(its Patroni says demoted/stopped\)"):
        standby_answers(DEMOTED_READ, ["10.0.1.11"], "standby", 8008, deadline=0, timeout=1)


def test_no_wait_for_a_primary_or_a_cluster_without_a_standby_leader(monkeypatch):
    from baton_patroni import standby_answers
    calls = scripted_patroni(monkeypatch, [OSError("not asked")])
    assert standby_answers(DEMOTED_READ, ["10.0.1.11"], "primary", 8008, 0, 1) is None
    assert standby_answers({"members": []}, ["10.0.1.11"], "standby", 8008, 0, 1) is None
    assert calls == []

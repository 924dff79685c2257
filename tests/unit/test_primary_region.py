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

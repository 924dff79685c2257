"""The full lab (3 nodes per region): Patroni roles in every region, and in-region failover
in the primary region, with writes through PgBouncer working again without any client change:
when the leader's PostgreSQL is stopped (through Patroni, which hands the leader key over at
once) and when the leader's node dies (PostgreSQL and Patroni together: the key must expire).
Killing only the postmaster does not elect anyone: Patroni starts it again in place
(bench/inregion_failover.py --fault postgres measures that).

Needs root, podman and iptables; replaces any lab that is up and takes it down at the end.
"""

from __future__ import annotations

import json
import time
import urllib.request

import psycopg
import pytest
from test_lab import labctl, playbook, sh  # same helpers, same environment

APP = {"user": "app", "password": "lab-app-not-secret", "connect_timeout": 2}  # lab throwaway
REGIONS = {"us-east": 1, "us-west": 2, "eu-west": 3}


def address(host: str) -> str:
    region, index = host.rsplit("-", 1)
    return f"10.231.{REGIONS[region]}.{10 + int(index)}"


def roles(region: str) -> dict[str, tuple[str, str]]:
    """Member -> (role, state) from the first member of REGION that answers."""
    for index in (1, 2, 3):
        try:
            url = f"http://{address(f'{region}-{index}')}:8008/cluster"
            with urllib.request.urlopen(url, timeout=2) as resp:
                return {m["name"]: (m["role"], m["state"]) for m in json.loads(resp.read())[
                    "members"]}
        except OSError:
            continue
    return {}


@pytest.fixture(scope="module")
def full_lab():
    labctl("down")
    up = labctl("up", "--size", "full")
    assert up.returncode == 0, up.stderr
    site = playbook("site.yml")
    assert site.returncode == 0, site.stdout[-4000:]
    yield
    labctl("down")


def test_each_region_has_a_leader_and_two_streaming_replicas(full_lab):
    assert sorted(roles("us-east").values()) == [
        ("leader", "running"), ("replica", "streaming"), ("replica", "streaming")]
    for region in ("us-west", "eu-west"):
        assert sorted(roles(region).values()) == [
            ("replica", "streaming"), ("replica", "streaming"),
            ("standby_leader", "streaming")], region


def write_until_accepted(node: str, since: float, limit: float = 90) -> float | None:
    """Seconds from `since` to the first INSERT accepted through PgBouncer on node."""
    while time.monotonic() - since < limit:
        try:
            with psycopg.connect(host=address(node), port=6432, dbname="app", autocommit=True,
                                 **APP) as conn:
                conn.execute("INSERT INTO baton_failover VALUES (now())")
            return time.monotonic() - since
        except psycopg.Error:
            time.sleep(0.2)
    return None


def wait_member(name: str, expected: tuple[str, str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and roles("us-east").get(name) != expected:
        time.sleep(1)
    assert roles("us-east").get(name) == expected, roles("us-east")


def test_stopping_the_leaders_postgresql_elects_another_and_writes_resume(full_lab):
    leader = next(name for name, (role, _s) in roles("us-east").items() if role == "leader")
    survivor = next(f"us-east-{i}" for i in (1, 2, 3) if f"us-east-{i}" != leader)
    with psycopg.connect(host=address(survivor), port=6432, dbname="app", autocommit=True,
                         **APP) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_failover (at timestamptz)")

    stopped_at = time.monotonic()
    stop = sh("podman", "exec", f"baton-{leader}", "systemctl", "stop", "patroni")
    assert stop.returncode == 0, stop.stderr
    recovered = write_until_accepted(survivor, stopped_at)
    assert recovered is not None, "no write through PgBouncer within 90 s of the stop"
    print(f"writes resumed {recovered:.1f} s after the leader's PostgreSQL was stopped")
    new_leaders = [n for n, (r, _s) in roles("us-east").items() if r == "leader"]
    assert len(new_leaders) == 1 and new_leaders[0] != leader

    assert sh("podman", "exec", f"baton-{leader}", "systemctl", "start", "patroni").returncode == 0
    wait_member(leader, ("replica", "streaming"))


def test_losing_the_primary_regions_leader_elects_another_and_writes_resume(full_lab):
    leader = next(name for name, (role, _s) in roles("us-east").items() if role == "leader")
    survivor = next(f"us-east-{i}" for i in (1, 2, 3) if f"us-east-{i}" != leader)

    killed_at = time.monotonic()
    assert sh("podman", "kill", f"baton-{leader}").returncode == 0
    recovered = write_until_accepted(survivor, killed_at)
    assert recovered is not None, "no write through PgBouncer within 90 s of losing the leader"
    print(f"writes resumed {recovered:.1f} s after the leader node died")
    new_leaders = [n for n, (r, _s) in roles("us-east").items() if r == "leader"]
    assert len(new_leaders) == 1 and new_leaders[0] != leader

    # The old leader comes back as a replica of the new one (pg_rewind if needed).
    assert sh("podman", "start", f"baton-{leader}").returncode == 0
    wait_member(leader, ("replica", "streaming"))


def test_standby_regions_follow_the_new_leader_of_the_primary_region(full_lab):
    """The standby leaders stream through us-east's HAProxy, so they find the new leader."""
    token = f"after-failover-{time.time_ns()}"
    with psycopg.connect(host=address("us-east-1"), port=6432, dbname="app", autocommit=True,
                         **APP) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_tokens (v text)")
        conn.execute("INSERT INTO baton_tokens VALUES (%s)", (token,))
    for region in ("us-west", "eu-west"):
        deadline = time.monotonic() + 60
        seen = False
        while not seen and time.monotonic() < deadline:
            try:
                with psycopg.connect(host=address(f"{region}-2"), port=6432, dbname="app_ro",
                                     autocommit=True, **APP) as conn:
                    seen = conn.execute("SELECT count(*) FROM baton_tokens WHERE v = %s",
                                        (token,)).fetchone()[0] == 1
            except psycopg.Error:
                pass
            if not seen:
                time.sleep(0.5)
        assert seen, f"{region} did not replay a row written after the failovers within 60 s"
        assert sorted(roles(region).values()) == [
            ("replica", "streaming"), ("replica", "streaming"),
            ("standby_leader", "streaming")], region

"""The full lab (3 nodes per region): Patroni roles in every region, and an in-region
failover when the primary region's leader node dies, with writes through PgBouncer working
again without any client change.

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


def test_losing_the_primary_regions_leader_elects_another_and_writes_resume(full_lab):
    leader = next(name for name, (role, _s) in roles("us-east").items() if role == "leader")
    survivor = next(f"us-east-{i}" for i in (1, 2, 3) if f"us-east-{i}" != leader)
    with psycopg.connect(host=address(survivor), port=6432, dbname="app", autocommit=True,
                         **APP) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_failover (at timestamptz)")

    killed_at = time.monotonic()
    assert sh("podman", "kill", f"baton-{leader}").returncode == 0
    recovered = None
    while time.monotonic() - killed_at < 90:
        try:
            with psycopg.connect(host=address(survivor), port=6432, dbname="app",
                                 autocommit=True, **APP) as conn:
                conn.execute("INSERT INTO baton_failover VALUES (now())")
            recovered = time.monotonic() - killed_at
            break
        except psycopg.Error:
            time.sleep(0.2)
    assert recovered is not None, "no write through PgBouncer within 90 s of losing the leader"
    print(f"writes resumed {recovered:.1f} s after the leader node died")
    new = roles("us-east")
    assert [n for n, (r, _s) in new.items() if r == "leader"] != [leader]
    assert any(r == "leader" for r, _s in new.values())

    # The old leader comes back as a replica of the new one (pg_rewind if needed).
    assert sh("podman", "start", f"baton-{leader}").returncode == 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and roles("us-east").get(leader) != ("replica",
                                                                           "streaming"):
        time.sleep(1)
    assert roles("us-east").get(leader) == ("replica", "streaming")

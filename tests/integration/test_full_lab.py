"""The `ha` lab shape: three nodes in the initial primary region (us-east), one in every other
(inventories/lab/lab.baton.yml). What needs three nodes: Redis's in-region failover by Sentinel
in the primary region (clients that ask Sentinel find the new master; a re-run of site.yml's
Redis tier afterwards changes and restarts nothing); Patroni's in-region failover in the primary
region, with writes through PgBouncer working again without any client change: when the leader's
PostgreSQL is stopped (through Patroni, which hands the leader key over at once) and when the
leader's node dies (PostgreSQL and Patroni together: the key must expire); and the standby
regions following the new leader through us-east's HAProxy. Killing only the postmaster does not
elect anyone: Patroni starts it again in place (bench/inregion_failover.py --fault postgres
measures that). The `full` shape (3 x 3) remains for `make demo LAB=full` and `make bench`; a
standby region's own in-region failover is the same Patroni mechanism and is not repeated.

This lab gets the data tiers only (site.yml without its DNS, monitoring, witness and backup
parts, by tag, and without WAL archiving): those are tested on the mini lab (the witness and its
fence agents with the cross-region failovers there, backups and restores too).

Needs root, podman and iptables; replaces any lab that is up and takes it down at the end.
"""

from __future__ import annotations

import json
import os
import time

import psycopg
import pytest
import redis
from harness import REDIS_TLS, open_tls, patroni_url
from test_lab import REDIS_PASSWORD, SENTINEL_PASSWORD, assert_nothing_changed, labctl, playbook, sh

APP = {"user": "app", "password": "lab-app-not-secret", "connect_timeout": 2}  # lab throwaway
REGIONS = {"us-east": 1, "us-west": 2, "eu-west": 3}


def address(host: str) -> str:
    region, index = host.rsplit("-", 1)
    return f"10.231.{REGIONS[region]}.{10 + int(index)}"


def roles(region: str) -> dict[str, tuple[str, str]]:
    """Member -> (role, state) from the first member of REGION that answers."""
    for index in (1, 2, 3):
        try:
            url = patroni_url(address(f"{region}-{index}"), "/cluster")
            with open_tls(url, 2) as resp:
                return {m["name"]: (m["role"], m["state"]) for m in json.loads(resp.read())[
                    "members"]}
        except OSError:
            continue
    return {}


# What this file's site.yml runs leave out (tested on the mini lab: tests/integration/test_lab.py).
# No backup stanza: Patroni archives nothing (role pgbackrest is left out).
DATA_TIERS_ONLY = ("--skip-tags", "dns,exporters,prometheus,alertmanager,witness,pgbackrest",
                   "-e", '{"baton_backup_stanza": ""}')


@pytest.fixture(scope="module")
def full_lab():
    labctl("down")
    up = labctl("up", "--size", "ha", "--image", "packages")
    assert up.returncode == 0, up.stderr
    site = playbook("site.yml", *DATA_TIERS_ONLY, timeout=1800)
    assert site.returncode == 0, site.stdout[-4000:]
    yield
    if os.environ.get("BATON_KEEP_LAB") != "1":  # 1: leave it up, e.g. for bench/ scripts
        labctl("down")


def sentinel_master() -> str | None:
    """The master's address as the first us-east Sentinel that answers says (as clients do)."""
    for index in (1, 2, 3):
        try:
            reply = redis.Redis(host=address(f"us-east-{index}"), port=26379,
                                password=SENTINEL_PASSWORD, socket_timeout=1,
                                socket_connect_timeout=1, decode_responses=True,
                                **REDIS_TLS).execute_command(
                "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "baton")
            if reply:
                return str(reply[0])
        except redis.RedisError:
            continue
    return None


def redis_at(addr: str) -> redis.Redis:
    return redis.Redis(host=addr, port=6379, password=REDIS_PASSWORD, socket_timeout=1,
                       socket_connect_timeout=1, decode_responses=True, **REDIS_TLS)


def node_of(addr: str) -> str:
    region = {v: k for k, v in REGIONS.items()}[int(addr.split(".")[2])]
    return f"{region}-{int(addr.split('.')[3]) - 10}"


HA_NODES = {"us-east": 3, "us-west": 1, "eu-west": 1}


def redis_pids() -> dict[str, str]:
    """'node/unit' -> MainPID of redis-server and redis-sentinel on every region node."""
    pids = {}
    for region in REGIONS:
        for index in range(1, HA_NODES[region] + 1):
            node = f"{region}-{index}"
            shown = sh("podman", "exec", f"baton-{node}", "systemctl", "show", "-p", "MainPID",
                       "--value", "redis-server", "redis-sentinel", timeout=30).stdout.split()
            pids[f"{node}/redis-server"], pids[f"{node}/redis-sentinel"] = shown
    return pids


def test_stopping_the_redis_master_makes_the_sentinels_promote_a_replica(full_lab):
    old = sentinel_master()
    assert old is not None and old.startswith("10.231.1."), old
    stopped_at = time.monotonic()
    stop = sh("podman", "exec", f"baton-{node_of(old)}", "systemctl", "stop", "redis-server")
    assert stop.returncode == 0, stop.stderr
    new, recovered = None, None
    while time.monotonic() - stopped_at < 90 and recovered is None:
        new = sentinel_master()
        if new and new != old:
            try:
                redis_at(new).set("baton:failover", str(time.time()))
                recovered = time.monotonic() - stopped_at
            except redis.RedisError:
                pass
        time.sleep(0.2)
    assert recovered is not None, f"no write through Sentinel discovery within 90 s ({new})"
    print(f"Redis writes resumed {recovered:.1f} s after the master was stopped")
    assert new.startswith("10.231.1."), f"Sentinel promoted {new}, outside us-east"

    # The old master comes back as a replica of the new one (Sentinel reconfigures it), and
    # us-west's head, a replica of the old master, was moved to the new one too.
    assert sh("podman", "exec", f"baton-{node_of(old)}", "systemctl", "start",
              "redis-server").returncode == 0
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if (redis_at(old).execute_command("ROLE")[:4] == ["slave", new, 6379, "connected"]
                    and redis_at(address("us-west-1")).execute_command("ROLE")[1] == new):
                break
        except redis.RedisError:
            pass
        time.sleep(1)
    assert redis_at(old).execute_command("ROLE")[:4] == ["slave", new, 6379, "connected"]
    assert redis_at(address("us-west-1")).execute_command("ROLE")[1] == new


# The roles that read or write what a Sentinel failover changes (which Redis is the master,
# redis.conf's replicaof, sentinel.conf's monitor); no other role of site.yml reads them, and
# every role's re-run on the real topology is the lifecycle's closing site.yml (mini lab).
REDIS_TIER_ONLY = ("--tags", "redis,redis_sentinel")


def test_site_yml_after_a_sentinel_failover_changes_and_restarts_nothing(full_lab):
    master = sentinel_master()
    pids = redis_pids()
    assert_nothing_changed(playbook("site.yml", *REDIS_TIER_ONLY))
    assert redis_pids() == pids
    assert sentinel_master() == master


def test_the_packages_image_runs_nothing_that_site_yml_did_not_configure(full_lab):
    """The ha lab starts from the image with the roles' packages installed: on the global site,
    where this deploy runs none of those roles, every service they bring stays disabled and
    stopped, and there is no PostgreSQL cluster (as on a VM before site.yml)."""
    units = ["postgresql", "redis-server", "redis-sentinel", "pgbouncer", "haproxy", "named",
             "prometheus", "prometheus-alertmanager", "prometheus-node-exporter"]
    active = sh("podman", "exec", "baton-global-1", "systemctl", "is-active", *units)
    enabled = sh("podman", "exec", "baton-global-1", "systemctl", "is-enabled", *units)
    assert active.stdout.split() == ["inactive"] * len(units), active.stdout
    assert enabled.stdout.split() == ["disabled"] * len(units), enabled.stdout
    clusters = sh("podman", "exec", "baton-global-1", "pg_lsclusters", "--no-header")
    assert clusters.returncode == 0 and clusters.stdout.strip() == "", clusters
    installed = sh("podman", "exec", "baton-global-1", "dpkg-query", "-W", "-f",
                   "${Package} ${db:Status-Status}\n", "postgresql-17", "redis-server")
    assert installed.stdout.split("\n")[:2] == ["postgresql-17 installed",
                                                 "redis-server installed"], installed.stdout


def test_the_primary_region_has_a_leader_and_two_streaming_replicas(full_lab):
    assert sorted(roles("us-east").values()) == [
        ("leader", "running"), ("replica", "streaming"), ("replica", "streaming")]
    for region in ("us-west", "eu-west"):
        assert sorted(roles(region).values()) == [("standby_leader", "streaming")], region


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
                with psycopg.connect(host=address(f"{region}-1"), port=6432, dbname="app_ro",
                                     autocommit=True, **APP) as conn:
                    seen = conn.execute("SELECT count(*) FROM baton_tokens WHERE v = %s",
                                        (token,)).fetchone()[0] == 1
            except psycopg.Error:
                pass
            if not seen:
                time.sleep(0.5)
        assert seen, f"{region} did not replay a row written after the failovers within 60 s"
        # The standby leader may still be reconnecting to the new leader ('running').
        expected = [("standby_leader", "streaming")]
        deadline = time.monotonic() + 30
        while sorted(roles(region).values()) != expected and time.monotonic() < deadline:
            time.sleep(1)
        assert sorted(roles(region).values()) == expected, region

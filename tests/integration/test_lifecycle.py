"""Whole outages under live clients, on the mini lab that test_lab.py deployed.

Each scenario is a run of ordered steps (one test each, sharing the lab and the scenario's
state); every step runs under the workload of harness.py (a PostgreSQL and a Redis client
through the failover names, and a write probe on every node's own PostgreSQL and Redis every
200 ms) and ends with the check of every tier (`check_tiers`):

- exactly one region accepts PostgreSQL writes, and it holds the baton on the witness;
- exactly one Redis accepts writes, and it is in the holder's region;
- every name server answers `db` and `redis` with the holder's node;
- the other regions follow the holder (Patroni standby leader streaming, Redis replica with its
  link up), or are reported as still to be reprotected where a step leaves them so;
- health.yml's exit status agrees: 0 exactly when nothing above is wrong or pending.

Each step prints what the harness measured (acknowledged writes lost per tier, client errors,
longest gap, two-writer intervals, and the data loss the run's report states) and appends it to
reports/lifecycle.jsonl. A scenario starts only from a lab that is healthy with the baton at
home (`home` fixture): one that finds it otherwise fails at once, saying what is wrong, instead
of cascading.

The path users take is proven here too: the planned switchover and the region loss with its
failback run every playbook through inventories/lab-ssh (SSH as an unprivileged user with
sudo, host keys checked, secrets in ansible-vault: the `over_ssh` fixture), on the lab that
test_lab.py deployed through it; the other scenarios, and the closing site.yml (which must
change nothing on that lab: both inventories deploy the same), use the lab's default podman
connection.

Assertions that fail today because of a defect in the product are marked
`xfail(strict=True)` with the defect: the suite stays green, and turns red the day the defect
is fixed, so that the mark is removed then.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time
from datetime import datetime
from typing import Any

import dns.exception
import psycopg
import pytest
import redis
from harness import (
    APP_PASSWORD,
    APP_USER,
    REDIS_APP_PASSWORD,
    REDIS_APP_USER,
    REDIS_TLS,
    TABLE,
    TABLE_ASYNCPG,
    Measurement,
    Workload,
    etcd_client,
)
from redis.backoff import NoBackoff
from redis.retry import Retry
from test_lab import (
    ACTIONS,
    BIN,
    ENV,
    MINI,
    REDIS_PASSWORD,
    ROOT,
    ZONE,
    alertmanager_alerts,
    changed_tasks,
    cluster_roles,
    dns_answer,
    labctl,
    member,
    pgbackrest,
    pgbouncer,
    playbook,
    playbook_as_awx,
    prometheus_query,
    redis_pids,
    report,
    scratch_sql,
    sh,
    total_changed,
    witness,
)

HOME = "us-east"
REGIONS = ["us-east", "us-west", "eu-west"]
NODES = {"us-east-1": ("us-east", MINI["us-east-1"]), "us-west-1": ("us-west", MINI["us-west-1"]),
         "eu-west-1": ("eu-west", MINI["eu-west-1"])}
NODE_OF = {region: node for node, (region, _a) in NODES.items()}
# A stub resolver's order: the global site's server first, then the regions' secondaries.
NAME_SERVERS = [MINI["global-1"], MINI["us-east-1"], MINI["us-west-1"], MINI["eu-west-1"]]
SERVERS = ["global-1", "us-east-1", "us-west-1", "eu-west-1"]
LOG = ROOT / "reports" / "lifecycle.jsonl"
STATE: dict[str, Any] = {}

pytestmark = pytest.mark.usefixtures("deployed")


# --------------------------------------------------------------------------- reading the lab

def holder_region() -> str | None:
    entry = witness().get("/baton/holder")
    return json.loads(entry.value)["region"] if entry else None


def pg_accepts_write(address: str) -> bool:
    try:
        with psycopg.connect(host=address, port=5432, dbname="app", user=APP_USER,
                             password=APP_PASSWORD, connect_timeout=2, autocommit=True) as conn:
            conn.execute("INSERT INTO baton_lifecycle_probe (node) VALUES ('check')")
        return True
    except psycopg.Error:
        return False


def redis_client(address: str, app: bool = False) -> redis.Redis:
    """Baton's own view of a server (the default user), or, with APP, the application's."""
    login = ({"username": REDIS_APP_USER, "password": REDIS_APP_PASSWORD} if app
             else {"password": REDIS_PASSWORD})
    return redis.Redis(host=address, port=6379, socket_timeout=2, socket_connect_timeout=2,
                       decode_responses=True, retry=Retry(NoBackoff(), 0), **login, **REDIS_TLS)


def redis_accepts_write(address: str) -> bool:
    """Whether the application could write there."""
    client = redis_client(address, app=True)
    try:
        client.set("baton:probe:check", str(time.time()))
        return True
    except (redis.RedisError, OSError):
        return False
    finally:
        client.close()


def follows(region: str, holder: str) -> str | None:
    """None when region follows holder in every tier, else what is missing."""
    node = NODE_OF[region]
    address = NODES[node][1]
    missing = []
    try:
        role = cluster_roles(node).get(node)
    except OSError:
        role = None
    if role != ("standby_leader", "streaming"):
        missing.append(f"Patroni {role or 'not answering'}")
    client = redis_client(address)
    try:
        info = client.info("replication")
        if info.get("role") != "slave" or info.get("master_link_status") != "up":
            missing.append(f"Redis {info.get('role')} link {info.get('master_link_status')}")
    except (redis.RedisError, OSError) as exc:
        missing.append(f"Redis not answering ({type(exc).__name__})")
    finally:
        client.close()
    return f"{region}: {', '.join(missing)}" if missing else None


def tier_state(holder: str, down: frozenset[str] = frozenset()) -> dict[str, Any]:
    """What every tier says now: problems (the single-writer rule, DNS) and pending (regions
    that do not follow the holder yet). Regions in `down` (stopped) are pending, not asked."""
    problems, pending = [], []
    seen = holder_region()
    if seen != holder:
        problems.append(f"the witness names {seen} as holder, not {holder}")
    up = [n for n in NODES if NODES[n][0] not in down]
    pg = sorted(NODES[n][0] for n in up if pg_accepts_write(NODES[n][1]))
    if pg != [holder]:
        problems.append(f"PostgreSQL accepts writes in {pg or 'no region'}, not only {holder}")
    rd = sorted(n for n in up if redis_accepts_write(NODES[n][1]))
    if [NODES[n][0] for n in rd] != [holder]:
        problems.append(f"Redis accepts writes on {rd or 'no node'}, not on {holder}'s only")
    want = [NODES[NODE_OF[holder]][1]]
    for server in SERVERS:
        if NODES.get(server, ("global",))[0] in down:
            continue
        for name in ("db", "redis"):
            try:
                got = dns_answer(server, name)
            except (OSError, dns.exception.DNSException) as exc:
                got = [f"no answer ({type(exc).__name__})"]
            if got != want:
                problems.append(f"{server} answers {name} with {got}, not {want}")
    for region in REGIONS:
        if region in down:
            pending.append(f"{region}: stopped")
        elif region != holder and (missing := follows(region, holder)):
            pending.append(missing)
    return {"problems": problems, "pending": pending}


# The last health.yml: (the holder the harness expected, its exit status, ACTIONS then).
LAST_HEALTH: dict[str, Any] = {}


def health(holder: str | None = None) -> subprocess.CompletedProcess:
    run = playbook("health.yml")
    LAST_HEALTH.update(holder=holder, returncode=run.returncode, actions=ACTIONS[0],
                       at=time.monotonic())
    return run


def tiers_wrong(holder: str, *, pending: tuple[str, ...] = (), down: tuple[str, ...] = (),
                settle: float = 45) -> list[str]:
    """Waits up to `settle` s for every tier to be as expected (the holder alone writable, DNS
    on it, every other region following it but those in `pending` or `down`), then asks
    health.yml. Returns every way the lab differs from that (empty: all is as expected)."""
    expected_pending = (set(pending) | set(down)) - {"global"}
    deadline = time.monotonic() + settle
    while True:
        state = tier_state(holder, frozenset(down))
        waiting = {p.split(":", 1)[0] for p in state["pending"]}
        if (not state["problems"] and waiting == expected_pending) or time.monotonic() > deadline:
            break
        time.sleep(2)
    expected_ok = not state["problems"] and not state["pending"] and "global" not in down
    run = health(holder if expected_ok else None)
    if run.returncode != 0 and expected_ok:  # services still settling: ask once more
        time.sleep(5)
        run = health(holder)
    wrong = state["problems"] + [p for p in state["pending"]
                                 if p.split(":", 1)[0] not in expected_pending]
    wrong += [f"{r} was expected to be still reprotected, but follows already"
              for r in expected_pending - {p.split(":", 1)[0] for p in state["pending"]}]
    if (run.returncode == 0) != expected_ok:
        wrong.append(f"health.yml exits {run.returncode} but the harness sees "
                     f"{'nothing wrong' if expected_ok else state['problems'] + state['pending']}"
                     f": {' '.join(run.stdout.split())[-1200:]}")
    return wrong


def check_tiers(holder: str, **kwargs: Any) -> None:
    wrong = tiers_wrong(holder, **kwargs)
    assert not wrong, "; ".join(wrong)


def record(scenario: str, step: str, m: Measurement, extra: dict | None = None) -> dict:
    """Print and log one step's figures (the issue note and the README quote them)."""
    entry = {"scenario": scenario, "step": step, **m.summary(), **(extra or {})}
    LOG.parent.mkdir(exist_ok=True)
    with LOG.open("a") as handle:
        handle.write(json.dumps(entry) + "\n")
    print(m.line(f"{scenario} / {step}"), extra or "")
    return entry


def workload(scenario: str) -> Workload:
    return Workload(zone=ZONE, name_servers=NAME_SERVERS, nodes=NODES, scenario=scenario)


def measure(scenario: str, step: str, holder_after: str, action, *, report_kind: str | None = None,
            before: float = 1.0, after: float = 2.0,
            require: tuple[str, ...] = ("postgres", "redis")) -> tuple[dict, Any]:
    """Runs action() under the workload (which must first get writes acknowledged in the
    `require`d tiers, then writes `before` s more, and `after` s past the action); verifies at
    the holder's node what survived. Returns (figures, the action's result)."""
    with workload(scenario) as load:
        load.wait_acked(3, timeout=30, tiers=require)
        time.sleep(before)
        result = action()
        if isinstance(result, subprocess.CompletedProcess) and result.returncode != 0:
            load.stop()
            raise AssertionError(f"{step}: {' '.join(result.args[:2])} failed (exit "
                                 f"{result.returncode}): {result.stdout[-3000:]}")
        time.sleep(after)
        m = load.stop()
    m.verify(NODES[NODE_OF[holder_after]][1])
    extra = {}
    if report_kind:
        done = report(report_kind)
        extra = {"stated_loss_bytes": done.get("data_lost_bytes"), "rto": done.get("rto_seconds")}
    return record(scenario, step, m, extra), result


def switch_over(scenario: str, target: str, *,
                require: tuple[str, ...] = ("postgres", "redis")) -> dict:
    """switchover.yml to target under the workload; its figures (the run must succeed)."""
    figures, run = measure(scenario, f"switchover to {target}", target,
                           lambda: playbook("switchover.yml", "-e", f"target={target}"),
                           report_kind="switchover", require=require)
    assert run.returncode == 0, run.stdout[-3000:]
    return figures


def lose_region_and_fail_over(scenario: str, lost: str, target: str, *,
                              as_awx: bool = False) -> dict:
    """Every container of `lost` stopped, then failover.yml to target, under the workload;
    as_awx: run as an AWX job with the survey's answers (playbook_as_awx), whose artifacts
    must hold the run's report."""
    def action():
        assert labctl("stop-region", lost).returncode == 0
        if as_awx:
            return playbook_as_awx("failover.yml", {"target": target, "max_data_loss": 16777216,
                                                    "force": "false"})
        return playbook("failover.yml", "-e", f"target={target}")
    figures, run = measure(scenario, f"{lost} stopped, failover to {target}", target, action,
                           report_kind="failover")
    assert run.returncode == 0, run.stdout[-3000:]
    # The report's lower figure for the clients' pause is no more than what they saw, give or
    # take one agent interval (1 s: the last lease renewal may precede the fault by that much).
    pause = report("failover")["write_pause"]
    assert pause["at_least_seconds"] <= figures["postgres"]["longest_gap"] + 1.0, (
        pause, figures["postgres"])
    if as_awx:
        artifact = run.artifacts.get("baton_report", {})
        assert artifact == report("failover"), (run.artifacts, run.stdout[-3000:])
        assert artifact["target"] == target and artifact["actions_taken"], artifact
        assert "WARNING" not in run.stdout, run.stdout[-3000:]
    return figures


def assert_single_writer(figures: dict) -> None:
    for tier in ("postgres", "redis"):
        assert figures[tier]["two_writer_intervals"] == [], (tier, figures[tier])


def no_loss(figures: dict) -> None:
    assert figures["postgres"]["lost"] == 0, figures["postgres"]
    assert figures["postgres_asyncpg"]["lost"] == 0, figures["postgres_asyncpg"]
    assert figures["redis"]["lost"] == 0, figures["redis"]


def planned_no_loss(figures: dict) -> None:
    """A planned move: no acknowledged PostgreSQL write lost (asserted here); the Redis figures
    are kept for test_planned_moves_lose_no_redis_write_and_give_no_readonly (over every move)."""
    assert figures["postgres"]["lost"] == 0, figures["postgres"]
    assert figures["postgres_asyncpg"]["lost"] == 0, figures["postgres_asyncpg"]
    STATE.setdefault("redis_planned", []).append(
        (figures["scenario"], figures["step"], figures["redis"]["lost"],
         sorted(figures["redis"]["error_kinds"])))


@pytest.fixture(scope="module", autouse=True)
def fresh_log():
    """A new log per run, and the harness's tables (created through db, as a client would)."""
    LOG.unlink(missing_ok=True)
    workload("setup")
    yield


SENTINEL_PASSWORD = "lab-sentinel-not-secret"  # lab throwaway


@pytest.fixture()
def home():
    """The lab as each scenario must find it: the baton at home, every tier healthy. An
    earlier scenario that left it otherwise is a defect: this one fails at once, saying so."""
    deadline = time.monotonic() + 30  # a resync or a zone transfer still under way
    while ((state := tier_state(HOME))["problems"] or state["pending"]) \
            and time.monotonic() < deadline:
        time.sleep(2)
    # health.yml passed with the baton home at the end of the scenario before, and nothing has
    # acted on the lab since (the tiers were just asked again): its verdict stands.
    fresh = (LAST_HEALTH.get("holder") == HOME and LAST_HEALTH.get("returncode") == 0
             and LAST_HEALTH.get("actions") == ACTIONS[0]
             and time.monotonic() - LAST_HEALTH.get("at", 0) < 120)
    run = subprocess.CompletedProcess(["health.yml"], 0, "", "") if fresh else health(HOME)
    if state["problems"] or state["pending"] or run.returncode != 0:
        pytest.fail("the lab is not healthy with the baton at home, so this scenario cannot "
                    f"start (an earlier one left it so): {state}; health.yml exit "
                    f"{run.returncode}: {' '.join(run.stdout.split())[-800:]}")


# --------------------------------------------------- 1: planned, then on: A -> B -> C -> A

def test_switchover_to_us_west_under_clients(over_ssh, home):
    """The planned move; its way back is the round trip's (below), which goes on from here."""
    figures = switch_over("round trip", "us-west")
    assert_single_writer(figures)
    planned_no_loss(figures)
    assert figures["stated_loss_bytes"] == 0
    check_tiers("us-west")
    STATE["round"] = {"there": figures}
    rerun = playbook("switchover.yml", "-e", "target=us-west")
    assert rerun.returncode == 0 and total_changed(rerun) == 0, rerun.stdout[-2000:]
    STATE["switchover"] = figures
    # psycopg 3 and asyncpg with their default settings prepare statements at protocol level;
    # PgBouncer (max_prepared_statements) prepares them again on the new region's servers.
    assert figures["postgres"]["errors"] == 0, figures["postgres"]
    assert figures["postgres_asyncpg"]["errors"] == 0, figures["postgres_asyncpg"]
    assert figures["postgres_asyncpg"]["acked"] > 0, figures["postgres_asyncpg"]
    assert set(figures["redis"]["error_kinds"]) <= {"ConnectionError"}, figures


def control_file_timelines(node: str) -> tuple[str, str]:
    """(the timeline in the node's control file, the one its WAL receiver streams; '' when it
    does not stream), read on the node as postgres."""
    proc = subprocess.run(
        ["podman", "exec", f"baton-{node}", "runuser", "-u", "postgres", "--", "psql", "-XAtc",
         "SELECT (SELECT timeline_id FROM pg_control_checkpoint()),"
         " (SELECT received_tli FROM pg_stat_wal_receiver)"],
        env=ENV, capture_output=True, text=True, timeout=30, check=False)
    control, _sep, streamed = proc.stdout.strip().partition("|")
    return control, streamed


def test_after_the_switchover_each_standby_keeps_the_new_timeline_in_its_control_file():
    """A standby's control file keeps the timeline it had before its source's promotion until
    its next restartpoint (minutes), and Patroni reads a standby leader's timeline there once
    its stream is gone: a standby leader then checks the source for a rewind on every loop,
    and when the source region is lost each check holds its loop for the connect timeouts,
    which delays its region's promotion. baton-walreceiver-watch takes the restartpoint once
    the standby streams the new timeline."""
    assert "round" in STATE, "the switchover step did not run"
    standbys = [NODE_OF["us-east"], NODE_OF["eu-west"]]
    deadline = time.monotonic() + 60
    while True:
        seen = {node: control_file_timelines(node) for node in standbys}
        behind = {node: t for node, t in seen.items() if not t[1] or t[0] != t[1]}
        if not behind or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert not behind, ("(control file's timeline, streamed timeline) 60 s after the "
                        f"switchover: {behind}")


def test_a_planned_switchover_holds_redis_clients_instead_of_failing_them():
    """The old master's writes wait (CLIENT PAUSE WRITE) until redis.<zone> names the new one;
    then its connections are closed, so a client reconnects there: no READONLY, no NOREPLICAS,
    one closed connection per client (redis-py's default retry hides it; this harness's client
    does not retry)."""
    figures = STATE["switchover"]["redis"]
    assert set(figures["error_kinds"]) <= {"ConnectionError"}, figures
    assert figures["errors"] <= 1, figures


# The round trip goes on from the planned switchover to us-west (step 1): us-west is lost with
# the global site, the baton goes to eu-west, us-west is failed back and the baton goes home
# by a planned switchover (the way back of step 1), then eu-west is re-cloned.

def dns_primary_record() -> dict | None:
    """The witness's record of the zone's primary name server (None: at home, global-1)."""
    entry = witness().get("/baton/dns_primary")
    return json.loads(entry.value) if entry else None


def test_round_trip_failover_to_eu_west_with_us_west_and_the_global_site_stopped():
    """The global site (the zone's primary name server, global Prometheus) is lost with the
    holder region: the failover makes eu-west's name server the zone's primary and every
    surviving name server answers eu-west."""
    state = STATE["round"]
    assert "there" in state, "the earlier steps did not run"
    # As a scheduled health.yml would: a recent report with us-west as the primary gives the
    # failover its last known position (without one it refuses unless forced).
    health()
    try:
        assert labctl("stop-region", "global").returncode == 0
        # As an AWX job template with its survey runs it (the report in the job's artifacts).
        figures = lose_region_and_fail_over("round trip", "us-west", "eu-west", as_awx=True)
        assert_single_writer_in(figures, "postgres")
        state["failover"] = figures
        done = report("failover")
        state["dns_primary"] = (done.get("dns_primary"), dns_primary_record(),
                                done["actions_taken"])
        # A re-run while the global site is still down finds every step done, DNS's included.
        rerun = playbook("failover.yml", "-e", "target=eu-west")
        state["rerun_changed"] = (rerun.returncode, total_changed(rerun))
        # us-east follows eu-west now (failover.yml repoints the standby regions it reaches).
        state["failover_wrong"] = tiers_wrong("eu-west", down=("us-west", "global"))
    finally:
        assert labctl("start-region", "us-west").returncode == 0
        assert labctl("start-region", "global").returncode == 0


def test_round_trip_the_global_site_returns_and_its_older_zone_stays_out_of_service():
    state = STATE["round"]
    assert "failover" in state, "the earlier steps did not run"
    stated, recorded, actions = state["dns_primary"]
    assert stated and stated["away"] and stated["host"] == "eu-west-1", stated
    assert recorded and recorded["host"] == "eu-west-1", recorded
    assert state["rerun_changed"] == (0, 0), state["rerun_changed"]
    assert "DNS primary moved to eu-west-1" in actions, actions
    named = sh("podman", "exec", "baton-global-1", "systemctl", "is-active", "named", timeout=30)
    assert named.stdout.strip() != "active", "global-1 serves its older copy of the zone"
    # The gate holds against an operator's restart too.
    sh("podman", "exec", "baton-global-1", "systemctl", "restart", "named", timeout=60)
    named = sh("podman", "exec", "baton-global-1", "systemctl", "is-active", "named", timeout=30)
    assert named.stdout.strip() != "active", "a restart brought global-1's older copy back"
    with pytest.raises((OSError, dns.exception.DNSException)):
        dns_answer("global-1", "db")


def test_round_trip_failback_of_us_west_and_switchover_home():
    state = STATE["round"]
    assert "failover" in state, "the earlier steps did not run"
    figures, run = measure("round trip", "failback of us-west", "eu-west",
                           lambda: playbook("failback.yml", "-e", "region=us-west"),
                           require=("postgres",))
    assert run.returncode == 0, run.stdout[-3000:]
    assert_single_writer_in(figures, "postgres")
    state["failback_wrong"] = tiers_wrong("eu-west", settle=20)
    # The zone's primary is home: the witness's record is gone, global-1 serves the primary.
    state["dns_home"] = dns_primary_record()
    figures = switch_over("round trip", HOME, require=("postgres",))
    assert_single_writer(figures)
    planned_no_loss(figures)
    state["home"] = figures
    # Every other region follows the holder in every tier, its standby leader streaming (the
    # move repoints them after the clients write again; they may take a few seconds to stream).
    state["home_wrong"] = tiers_wrong(HOME)


def test_round_trip_every_tier_follows_the_holder():
    state = STATE["round"]
    assert state["failover_wrong"] == [] and state["failback_wrong"] == []
    assert state["dns_home"] is None, state["dns_home"]
    assert state["home_wrong"] == []
    no_loss(state["home"])


def test_round_trip_reclone_keeps_the_old_data_and_streams(home):
    """A fresh clone of eu-west under the clients. A backup on the holder's timeline is in the
    global site's repository, so the standby leader is restored from it (Patroni's replica
    method "pgbackrest") and catches up from the archive and the stream, instead of copying
    the whole cluster from us-east."""
    diff = sh("podman", "exec", "baton-global-1", "systemctl", "start",
              "baton-backup@diff.service", timeout=900)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    since = sh("podman", "exec", "baton-eu-west-1", "date", "+%Y-%m-%d %H:%M:%S",
               timeout=30).stdout.strip()
    figures, run = measure("round trip", "failback -e region=eu-west -e reclone=true", HOME,
                           lambda: playbook("failback.yml", "-e", "region=eu-west",
                                                "-e", "reclone=true"))
    assert run.returncode == 0, run.stdout[-3000:]
    assert "eu-west is cloned afresh from us-east" in run.stdout
    assert_single_writer(figures)
    no_loss(figures)
    kept = sh("podman", "exec", "baton-eu-west-1", "sh", "-c",
              "ls -d /var/lib/postgresql/*/baton.diverged-*", timeout=30)
    assert kept.returncode == 0 and kept.stdout.strip(), "the old data directory was not kept"
    patroni = sh("podman", "exec", "baton-eu-west-1", "journalctl", "-u", "patroni", "--since",
                 since, "--no-pager", timeout=60).stdout
    assert "replica has been created using pgbackrest" in patroni, patroni[-3000:]
    print("eu-west's clone: " + "; ".join(
        line.split("baton-archive clone: ", 1)[1] for line in patroni.splitlines()
        if "baton-archive clone: " in line))
    check_tiers(HOME)
    rerun = playbook("failback.yml", "-e", "region=eu-west")
    assert rerun.returncode == 0 and total_changed(rerun) == 0, rerun.stdout[-2000:]


# --------------------------------------------------------------------------- 2: region loss

def test_region_loss_failover_under_clients(over_ssh, home):
    figures = lose_region_and_fail_over("region loss", "us-east", "us-west")
    assert_single_writer(figures)
    STATE["loss"] = {"failover": figures}
    check_tiers("us-west", down=("us-east",))
    assert report("failover")["unreachable"] == ["us-east"]
    rerun = playbook("failover.yml", "-e", "target=us-west")
    assert rerun.returncode == 0 and total_changed(rerun) == 0, rerun.stdout[-2000:]


def test_region_loss_the_region_returns_and_stays_fenced(over_ssh):
    assert "loss" in STATE, "the failover step did not run"

    def come_back():
        assert labctl("start-region", "us-east").returncode == 0
        time.sleep(35)  # its Sentinel, Redis and agent act within seconds of the start
    figures, _ = measure("region loss", "us-east back for 35 s", "us-west", come_back)
    STATE["loss"]["returned"] = figures
    STATE["loss"]["returned_wrong"] = tiers_wrong("us-west", pending=("us-east",), settle=10)
    assert figures["postgres"]["two_writer_intervals"] == [], figures["postgres"]
    assert "us-east" not in [r for r in REGIONS if pg_accepts_write(NODES[NODE_OF[r]][1])
                             and r != "us-west"]


def test_region_loss_the_returned_region_is_fenced_in_every_tier():
    assert STATE["loss"]["returned_wrong"] == []
    assert_single_writer(STATE["loss"]["returned"])
    no_loss(STATE["loss"]["returned"])


def test_region_loss_backups_follow_the_baton_and_a_restore_reaches_past_the_failover():
    """After the failover to us-west (us-east back and fenced), with no operator step: the new
    holder archives its WAL into the repository, the next scheduled backup (the timers' unit)
    is taken on its new timeline, and restore.yml to the latest WAL brings back, in a scratch
    cluster in eu-west, a row written after the failover. The scratch cluster is removed."""
    assert "loss" in STATE, "the failover step did not run"
    token = f"after-failover-{time.time_ns()}"
    with pgbouncer("us-west-1", "app") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_backup_probe (token text)")
        conn.execute("INSERT INTO baton_backup_probe VALUES (%s)", (token,))
        timeline = conn.execute("SELECT left(pg_walfile_name(pg_current_wal_lsn()), 8)"
                                ).fetchone()[0]
    check = pgbackrest("us-west-1", "check")  # a WAL switch, archived from the new holder
    assert check.returncode == 0, check.stdout + check.stderr
    diff = sh("podman", "exec", "baton-global-1", "systemctl", "start",
              "baton-backup@diff.service", timeout=900)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    info = json.loads(pgbackrest("global-1", "--output=json", "info").stdout)[0]
    newest = info["backup"][-1]
    assert newest["type"] == "diff" and newest["archive"]["start"].startswith(timeline), newest
    try:
        run = playbook("restore.yml", "-e", "region=eu-west")
        assert run.returncode == 0, run.stdout[-3000:]
        rows = scratch_sql("eu-west-1", "SELECT token FROM baton_backup_probe ORDER BY token")
        assert token in rows.stdout.split(), rows.stdout + rows.stderr
    finally:
        clean = playbook("restore.yml", "-e", "restore_cleanup=true", "-e", "region=eu-west")
        assert clean.returncode == 0, clean.stdout[-2000:]


def test_region_loss_the_fences_survive_a_restart_of_each_service(over_ssh):
    """On the returned, fenced node: Redis and Sentinel restarted by hand come back fenced (no
    writes, no monitor); Patroni refuses to start; every tier is as before."""
    assert STATE["loss"].get("returned_wrong") == [], "the returned region was not fenced"
    node = NODE_OF["us-east"]
    for unit in ("redis-server", "redis-sentinel"):
        done = sh("podman", "exec", f"baton-{node}", "systemctl", "restart", unit, timeout=60)
        assert done.returncode == 0, (unit, done.stderr)
    patroni = sh("podman", "exec", f"baton-{node}", "systemctl", "start", "patroni", timeout=60)
    running = sh("podman", "exec", f"baton-{node}", "systemctl", "is-active", "patroni",
                 timeout=30).stdout.strip()
    assert running != "active", f"Patroni started on the fenced node ({patroni.stderr})"
    address = NODES[node][1]
    assert not redis_accepts_write(address), "the restarted Redis accepts writes"
    sentinel = redis.Redis(host=address, port=26379, password=SENTINEL_PASSWORD,
                           socket_timeout=2, decode_responses=True, **REDIS_TLS)
    try:
        assert sentinel.execute_command("SENTINEL", "MASTERS") in ([], {}), "it watches a master"
    finally:
        sentinel.close()
    assert tiers_wrong("us-west", pending=("us-east",), settle=20) == []


def failback_and_home(scenario: str, state: dict, holder: str, *args: str) -> None:
    """failback.yml (a re-run changes nothing), then switchover.yml home, under the workload;
    what the tiers show after each goes to state (the known defects are asserted apart)."""
    figures, run = measure(scenario, f"failback {' '.join(args)}".strip(), holder,
                           lambda: playbook("failback.yml", *args), require=("postgres",))
    assert run.returncode == 0, run.stdout[-3000:]
    state["failback"] = figures
    # failback.yml waits for streaming itself; what is still wrong now is a defect.
    state["failback_wrong"] = tiers_wrong(holder, settle=20)
    assert_single_writer_in(figures, "postgres")
    rerun = playbook("failback.yml", *args)
    assert rerun.returncode == 0, rerun.stdout[-3000:]
    state["failback_rerun_changed"] = total_changed(rerun)
    figures = state["home"] = switch_over(scenario, HOME, require=("postgres",))
    state["home_wrong"] = tiers_wrong(HOME)
    print(f"{scenario}: after failback {state['failback_wrong']}; after the switchover home "
          f"{state['home_wrong']}")
    assert_single_writer_in(figures, "postgres")
    planned_no_loss(figures)


def assert_single_writer_in(figures: dict, tier: str) -> None:
    assert figures[tier]["two_writer_intervals"] == [], (tier, figures[tier])


def test_region_loss_failback_and_home(over_ssh):
    assert "returned" in STATE.get("loss", {}), "the earlier steps did not run"
    failback_and_home("region loss", STATE["loss"], "us-west")


def failover_away_from(region: str) -> dict:
    """The newest report of a failover that moved the baton away from region (a re-run's
    report, which changed nothing, is failover-latest.json then)."""
    found = []
    for path in (ROOT / "reports").glob("failover-*-*T*Z-*.json"):
        done = json.loads(path.read_text())
        if done.get("old") == region and done.get("actions_taken"):
            found.append((re.search(r"\d{8}T\d{6}Z", path.name).group(0), done))
    assert found, f"no failover report moved the baton away from {region}"
    return max(found, key=lambda f: f[0])[1]


def test_region_loss_failback_reconciles_the_loss_with_what_the_clients_lost():
    """The stopped region's old primary shut down (its in-flight transactions aborted): what it
    committed that us-west never received is exactly what the clients lost, plus at most the
    one write in flight when the client's connection was cut."""
    assert "failback" in STATE.get("loss", {}), "the failback step did not run"
    rec = failover_away_from("us-east").get("reconciled") or {}
    lost = STATE["loss"]["failover"]["postgres"]["lost"]
    lost_asyncpg = STATE["loss"]["failover"]["postgres_asyncpg"]["lost"]
    print(f"region loss: reconciled {rec.get('status')} {rec.get('transactions')} "
          f"{rec.get('by_table')}; the clients lost {lost} (psycopg), {lost_asyncpg} (asyncpg)")
    assert rec.get("status") in ("counted", "nothing"), rec
    by_table = rec.get("by_table") or {}
    assert 0 <= by_table.get(f"app.public.{TABLE}", 0) - lost <= 1, (rec, lost)
    assert 0 <= by_table.get(f"app.public.{TABLE_ASYNCPG}", 0) - lost_asyncpg <= 1, \
        (rec, lost_asyncpg)


def test_region_loss_every_tier_follows_the_holder_after_failback_and_home():
    assert STATE["loss"]["failback_wrong"] == []
    assert STATE["loss"]["failback_rerun_changed"] == 0
    assert STATE["loss"]["home_wrong"] == []
    no_loss(STATE["loss"]["home"])


# --------------------------------------------------------------------------- 3: partition

# Each line of /tmp/baton-acks: the row's commit-time stamp, then when psql returned (the
# acknowledgement, as the client saw it).
INSIDE_WRITER = ("while true; do r=$(psql -XAtq -h 127.0.0.1 -p 6432 -U app app -c "
                 "\"INSERT INTO baton_fence (at) VALUES (clock_timestamp()) RETURNING "
                 "extract(epoch FROM at)\" 2>/dev/null) && echo \"$r $(date +%s.%N)\" "
                 ">> /tmp/baton-acks; sleep 0.2; done")


def start_inside_writer() -> None:
    """A client inside us-east writing through its own PgBouncer, its acks in /tmp/baton-acks."""
    with psycopg.connect(host=MINI["us-east-1"], port=6432, dbname="app", user=APP_USER,
                         password=APP_PASSWORD, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_fence (at timestamptz)")
    started = sh("podman", "exec", "-d", "-e", f"PGPASSWORD={APP_PASSWORD}", "baton-us-east-1",
                 "bash", "-c", f"rm -f /tmp/baton-acks; {INSIDE_WRITER}")
    assert started.returncode == 0, started.stderr


def stop_inside_writer() -> None:
    sh("podman", "exec", "baton-us-east-1", "pkill", "-f", "baton-acks", timeout=30)


def witness_member(address: str):
    """One witness member, as its root user (moving the raft leadership needs it)."""
    from baton_witness import Witness

    return Witness([f"{address}:2391"], 10, client=etcd_client("root"))


def witness_status(address: str) -> dict:
    return witness_member(address).call("maintenance/status", {})


def make_witness_leader(node: str) -> None:
    """Moves the witness's raft leadership to node's member (asked of the current leader)."""
    target = witness_status(NODES[node][1])["header"]["member_id"]
    for _ in range(3):
        for _region, address in NODES.values():
            status = witness_status(address)
            if status["leader"] == target:
                return
            if status["header"]["member_id"] == status["leader"]:
                witness_member(address).call("maintenance/transfer-leadership",
                                             {"targetID": target})
        time.sleep(1)
    assert witness_status(NODES[node][1])["leader"] == target, f"{node} did not become leader"


def cut_off_failover(scenario: str, step: str, action, state: dict) -> dict:
    """action (it cuts us-east off and runs failover.yml to us-west) under the workload. Its
    figures, when the baton moved and what the tiers show go to state; one writer per tier."""
    try:
        figures, run = measure(scenario, step, "us-west", action, report_kind="failover")
        state["failover"] = figures
        assert run.returncode == 0, run.stdout[-3000:]
        state["wrong"] = tiers_wrong("us-west", down=("us-east",), settle=20)
    except BaseException:
        labctl("heal", "us-east")
        raise
    moved = json.loads(witness().get("/baton/holder").value)["since"]
    state["moved_at"] = datetime.fromisoformat(moved).timestamp()
    assert_single_writer_in(figures, "postgres")
    assert_single_writer_in(figures, "redis")
    assert state["wrong"] == [], state["wrong"]
    return figures


@pytest.fixture(scope="class")
def partition_cleanup():
    """Whatever a step left: the partition healed, the writer inside us-east stopped."""
    yield
    labctl("heal", "us-east")
    stop_inside_writer()


@pytest.mark.usefixtures("partition_cleanup")
class TestPartition:
    """A partition of the holder (us-east) while a client inside it keeps writing through its
    own PgBouncer -> failover to us-west -> heal -> 30 s -> failback -> home.

    us-east's witness member leads the witness when it is cut off, so the other two elect a
    leader during the failover, and after the heal the returning former leader must not take
    the baton back. This is the harder form of the partition: with a follower cut off, the
    fence and the failover take the same steps without the election (the witness churn
    scenario below cuts off a follower too), so the suite runs only this one."""

    witness_leader = "us-east-1"
    name = "partition"

    def test_failover_while_the_holder_is_cut_off(self, home):
        state = STATE[self.name] = {}
        start_inside_writer()
        if self.witness_leader:
            make_witness_leader(self.witness_leader)

        def cut_and_fail_over():
            assert labctl("partition", "us-east").returncode == 0
            state["cut_at"] = time.time()
            return playbook("failover.yml", "-e", "target=us-west")
        cut_off_failover(self.name, "us-east cut off, failover to us-west", cut_and_fail_over,
                         state)

    def test_heal_and_the_cut_off_region_stays_fenced(self):
        state = STATE[self.name]
        assert "moved_at" in state, "the failover step did not run"

        def heal_and_wait():
            assert labctl("heal", "us-east").returncode == 0
            time.sleep(30)  # its Sentinel, Redis and agent act within seconds of the heal
        figures, _ = measure(self.name, "healed, 30 s", "us-west", heal_and_wait,
                             require=("postgres",))
        state["healed"] = figures
        stop_inside_writer()
        lines = sh("podman", "exec", "baton-us-east-1", "cat", "/tmp/baton-acks",
                   timeout=30).stdout.splitlines()
        acks = [tuple(float(x) for x in line.split()) for line in lines if line.strip()]
        with psycopg.connect(host=MINI["us-west-1"], port=5432, dbname="app", user=APP_USER,
                             password=APP_PASSWORD, autocommit=True) as conn:
            kept = {round(float(r[0]), 3) for r in conn.execute(
                "SELECT extract(epoch FROM at) FROM baton_fence")}
        inside_lost = [row for row, _acked in acks if round(row, 3) not in kept]
        last_ack = max(acked for _row, acked in acks) if acks else None
        state["inside"] = {"acked": len(acks), "lost": len(inside_lost),
                           "lost_at": inside_lost,
                           "last_ack_before_move": None if last_ack is None
                           else round(state["moved_at"] - last_ack, 1),
                           "last_ack_before_fence_deadline": None if last_ack is None
                           else round(datetime.fromisoformat(report("failover")[
                               "data_loss_window"]["to"]).timestamp() - last_ack, 1)}
        shown = {k: v for k, v in state["inside"].items() if k != "lost_at"}
        print(f"{self.name}: the client inside us-east: {shown}; failover report: "
              f"{report('failover')['timeline']}")
        state["wrong"] = tiers_wrong("us-west", pending=("us-east",), settle=10)
        # The single-writer rule for PostgreSQL: every write us-east acknowledged came before
        # its fence deadline (when its leases were gone from the witness: the report's loss
        # window ends there), the target was promoted only after that, and us-east takes none
        # now. Not before the baton moved: the move (the witness's compare-and-swap) comes
        # first and may precede a cut-off holder's own fence by up to fence_after + one agent
        # loop; its leases, which outlive its writes, are what the promotion waits for.
        done = report("failover")
        deadline = datetime.fromisoformat(done["data_loss_window"]["to"]).timestamp()
        marks = {mark["step"]: mark["at"] for mark in done["timeline"]}
        assert marks["old region fenced, baton moved"] <= marks["target promoted"], marks
        assert acks and last_ack < deadline, (last_ack, deadline)
        # The old primary acknowledged writes the new one never received (asynchronous
        # replication, a cut-off primary): the loss the report must state below.
        assert state["failover"]["postgres"]["lost"] + state["inside"]["lost"] > 0
        assert_single_writer_in(figures, "postgres")
        assert sh("podman", "exec", "baton-us-east-1", "test", "-e", "/var/lib/baton/fenced",
                  timeout=30).returncode == 0, "us-east-1 is not fenced"
        assert not pg_accepts_write(MINI["us-east-1"])

    def test_the_report_states_the_loss_as_unknown_within_a_window_holding_every_lost_write(
            self):
        """The cut-off primary could not be read: the report must not give a figure, but the
        window in which it may have acknowledged writes the new primary never received (from
        the last transaction the target replayed to the old region's fence deadline), and every
        write the clients lost must lie in it."""
        state = STATE[self.name]
        done = report("failover")
        window = done["data_loss_window"]
        assert done["data_lost_known"] is False and done["data_lost_bytes"] is None, done
        assert window and window["seconds"] > 0, done
        start = datetime.fromisoformat(window["from"]).timestamp()
        end = datetime.fromisoformat(window["to"]).timestamp()
        lost = state["inside"]["lost_at"]
        assert lost, "the client inside us-east lost no write: nothing to bound"
        assert start - 0.5 <= min(lost) and max(lost) <= end + 0.5, (start, end, lost)

    def test_the_healed_region_is_fenced_in_every_tier(self):
        state = STATE[self.name]
        assert state["wrong"] == []
        assert_single_writer(state["healed"])
        no_loss(state["healed"])

    def test_failback_and_home(self):
        state = STATE[self.name]
        assert "healed" in state, "the earlier steps did not run"
        failback_and_home(self.name, state, "us-west", "-e", "region=us-east")

    def test_every_tier_follows_the_holder_after_failback_and_home(self):
        state = STATE[self.name]
        assert state["failback_wrong"] == [] and state["home_wrong"] == []
        assert state["failback_rerun_changed"] == 0
        no_loss(state["home"])

    def test_failback_reconciles_the_loss_with_what_the_clients_lost(self):
        """Before rewinding us-east, failback.yml counted what its old timeline committed after
        us-west forked from it (pg_waldump), kept that WAL on the node and amended the
        failover's report: per table, exactly the acknowledged writes the clients lost, plus at
        most the one write each client had in flight when its connection was cut (committed,
        never acknowledged: nobody can tell it from the client's side)."""
        state = STATE[self.name]
        assert "failback" in state, "the failback step did not run"
        done = failover_away_from("us-east")
        rec = done.get("reconciled") or {}
        print(f"{self.name}: reconciled {rec.get('transactions')} transactions "
              f"{rec.get('by_table')}; the clients lost: inside us-east "
              f"{state['inside']['lost']}, through db.{ZONE} "
              f"{state['failover']['postgres']['lost']}")
        assert rec.get("status") == "counted", rec
        tables = rec["by_table"]
        failover = state["failover"]
        for table, lost in (("app.public.baton_fence", state["inside"]["lost"]),
                            (f"app.public.{TABLE}", failover["postgres"]["lost"]),
                            (f"app.public.{TABLE_ASYNCPG}", failover["postgres_asyncpg"]["lost"])):
            assert 0 <= tables.get(table, 0) - lost <= 1, (table, lost, tables)
        assert done["reconciled_lost_transactions"] == rec["transactions"] \
            >= state["inside"]["lost"] + failover["postgres"]["lost"] \
            + failover["postgres_asyncpg"]["lost"]
        assert rec["node"] == "us-east-1" and rec["first_commit"] <= rec["last_commit"]
        assert sh("podman", "exec", "baton-us-east-1", "test", "-s", f"{rec['kept']}/summary.json",
                  timeout=30).returncode == 0, "the old timeline's WAL is not kept on us-east-1"


# ------------------------------------------------- the holder's agent dead, then partition

def main_pid(node: str, unit: str = "baton-agent") -> int:
    """The unit's main process on the node (0: not running)."""
    return int(sh("podman", "exec", f"baton-{node}", "systemctl", "show", "-p", "MainPID",
                  "--value", unit, timeout=30).stdout.strip() or 0)


def unit_active(node: str, unit: str) -> bool:
    return sh("podman", "exec", f"baton-{node}", "systemctl", "is-active", "--quiet", unit,
              timeout=30).returncode == 0


def firing(alert: str) -> list[dict]:
    """The alert's firing series on the global Prometheus."""
    return prometheus_query("global-1", f'ALERTS{{alertname="{alert}",alertstate="firing"}}')


@pytest.fixture(scope="class")
def dead_agent_cleanup():
    """Whatever a step left: the partition healed, the writer stopped, the agent running."""
    yield
    labctl("heal", "us-east")
    stop_inside_writer()
    sh("podman", "exec", "baton-us-east-1", "systemctl", "start", "baton-agent", timeout=120)


@pytest.mark.usefixtures("dead_agent_cleanup")
class TestDeadAgent:
    """The fence without its agent. First the holder's agent is killed (kill -9) and systemd
    brings it back: Patroni and Sentinel, bound to it, stop and are started again by the agent.
    Then it is killed and kept down (systemctl stop cancels the restart: an agent that died for
    good), the region is cut off and the baton moves to us-west: nothing in us-east may accept
    a write after the move, though no agent there fences anything, and BatonAgentDown fired.
    Then the partition heals, the agent is brought back, failback, home."""

    name = "dead agent"

    def test_a_killed_agent_is_restarted_and_brings_back_what_stopped_with_it(self, home):
        state = STATE[self.name] = {}
        old = main_pid("us-east-1")
        patroni = main_pid("us-east-1", "patroni")

        def kill_and_wait():
            assert sh("podman", "exec", "baton-us-east-1", "kill", "-9", str(old),
                      timeout=30).returncode == 0
            wait_until(lambda: main_pid("us-east-1") not in (0, old), 30, "the agent restarted")
            wait_until(lambda: pg_accepts_write(MINI["us-east-1"])
                       and redis_accepts_write(MINI["us-east-1"]), 90,
                       "us-east-1 takes writes again")
        figures, _ = measure(self.name, "agent killed -9, restarted by systemd", HOME,
                             kill_and_wait)
        state["restarted"] = figures
        log = sh("podman", "exec", "baton-us-east-1", "journalctl", "-u", "baton-agent",
                 "--since", "-3min", "--no-pager", timeout=30).stdout
        assert "agent stopped (signal): bound: patroni, redis-sentinel stop with it" in log, \
            log[-2000:]
        assert "patroni was stopped with the agent: systemctl start patroni: ok" in log
        new_patroni = main_pid("us-east-1", "patroni")
        assert new_patroni not in (0, patroni), "Patroni did not stop with the agent"
        assert unit_active("us-east-1", "redis-sentinel")
        assert_single_writer(figures)
        no_loss(figures)
        check_tiers(HOME)

    def test_with_the_agent_dead_a_cut_off_holder_takes_no_write_after_the_move(self):
        state = STATE[self.name]
        assert "restarted" in state, "the earlier step did not run"
        start_inside_writer()
        time.sleep(2)

        def kill_cut_and_fail_over():
            pid = main_pid("us-east-1")
            kill = sh("podman", "exec", "baton-us-east-1", "sh", "-c",
                      f"date +%s.%N; kill -9 {pid}; systemctl stop baton-agent", timeout=60)
            assert kill.returncode == 0, kill.stderr
            killed_at = state["killed_at"] = float(kill.stdout.split()[0])  # the node's clock
            wait_until(lambda: not pg_accepts_write(MINI["us-east-1"])
                       and not redis_accepts_write(MINI["us-east-1"]), 30,
                       "us-east-1 refuses writes without its agent")
            state["writes_stopped_after"] = round(time.time() - killed_at, 1)
            # Patroni stops as the agent dies (no watchdog wait): within the fence's own time
            # (and a probe's timeout of 2 s).
            assert state["writes_stopped_after"] <= 3 + 2, state["writes_stopped_after"]
            assert not unit_active("us-east-1", "patroni")
            assert not unit_active("us-east-1", "redis-sentinel")
            wait_until(lambda: any(a["metric"].get("instance") == "us-east-1"
                                   for a in firing("BatonAgentDown")), 150,
                       "BatonAgentDown fires for us-east-1 on the global Prometheus")
            state["alert_after"] = round(time.time() - killed_at, 1)
            # Prometheus hands it to Alertmanager (both ask for the web password).
            wait_until(lambda: any(a["labels"].get("instance") == "us-east-1"
                                   for a in alertmanager_alerts("BatonAgentDown")), 60,
                       "BatonAgentDown reaches the global Alertmanager")
            print(f"{self.name}: writes stopped {state['writes_stopped_after']} s after the "
                  f"kill; BatonAgentDown firing after {state['alert_after']} s")
            assert labctl("partition", "us-east").returncode == 0
            return playbook("failover.yml", "-e", "target=us-west")
        cut_off_failover(self.name, "agent dead, alert, us-east cut off, failover",
                         kill_cut_and_fail_over, state)

    def test_healed_the_region_without_its_agent_still_takes_no_write(self):
        state = STATE[self.name]
        assert "moved_at" in state, "the failover step did not run"

        def heal_and_wait():
            assert labctl("heal", "us-east").returncode == 0
            time.sleep(20)  # a Sentinel left watching would reconfigure us-west's master now
        figures, _ = measure(self.name, "healed, agent still dead, 20 s", "us-west",
                             heal_and_wait, require=("postgres",))
        state["healed"] = figures
        stop_inside_writer()
        lines = sh("podman", "exec", "baton-us-east-1", "cat", "/tmp/baton-acks",
                   timeout=30).stdout.splitlines()
        acks = [float(line.split()[1]) for line in lines if line.strip()]
        # Every write the client inside us-east got acknowledged came before its agent had been
        # dead for baton_fence_time (Patroni stopped with it), so before the baton moved.
        assert acks and max(acks) < state["killed_at"] + 3 + 1, (max(acks), state["killed_at"])
        assert not pg_accepts_write(MINI["us-east-1"])
        assert not redis_accepts_write(MINI["us-east-1"])
        assert_single_writer(figures)
        no_loss(figures)
        # us-west's Redis is still the master its region's Sentinel watches (nobody in us-east
        # turned it into a replica), and us-west alone takes writes.
        assert redis_accepts_write(MINI["us-west-1"])
        assert holder_region() == "us-west"

    def test_the_agent_back_failback_and_home(self):
        state = STATE[self.name]
        assert "healed" in state, "the earlier steps did not run"
        start = sh("podman", "exec", "baton-us-east-1", "systemctl", "start", "baton-agent",
                   timeout=120)
        assert start.returncode == 0, start.stderr
        failback_and_home(self.name, state, "us-west", "-e", "region=us-east")
        assert state["failback_wrong"] == [] and state["home_wrong"] == []
        assert state["failback_rerun_changed"] == 0
        no_loss(state["home"])


# --------------------------------------------------------------------------- witness churn

def test_the_holder_is_never_fenced_while_witness_members_leave_and_rejoin(home):
    """A member that rejoins with a raft term inflated by its lonely elections must not depose
    the leader (pre-vote), and the agents' witness client tries every member within its budget:
    us-west cut off while its member leads the witness, then eu-west cut off, then eu-west's
    member stopped, each for longer than an election. The holder (us-east) keeps renewing its
    lease: it is never fenced, and its clients lose no write and see no error."""
    since = int(time.time())

    def churn():
        make_witness_leader("us-west-1")
        for region in ("us-west", "eu-west"):
            assert labctl("partition", region).returncode == 0
            try:
                time.sleep(15)
            finally:
                assert labctl("heal", region).returncode == 0
            time.sleep(5)
        stop = sh("podman", "exec", "baton-eu-west-1", "systemctl", "stop", "baton-witness",
                  timeout=60)
        try:
            assert stop.returncode == 0, stop.stderr
            time.sleep(15)
        finally:
            sh("podman", "exec", "baton-eu-west-1", "systemctl", "start", "baton-witness",
               timeout=120)
        time.sleep(5)
    try:
        figures, _ = measure("witness churn", "us-west, eu-west cut off in turn, a member stopped",
                             HOME, churn)
    finally:
        for region in ("us-west", "eu-west"):
            labctl("heal", region)
    log = sh("podman", "exec", "baton-us-east-1", "journalctl", "-u", "baton-agent", "--since",
             f"@{since}", "--no-pager", timeout=60).stdout
    fenced = [line for line in log.splitlines() if re.search(r"(?<!UN)FENCED:", line)]
    assert fenced == [], fenced
    assert sh("podman", "exec", "baton-us-east-1", "test", "!", "-e", "/var/lib/baton/fenced",
              timeout=30).returncode == 0, "us-east-1, the holder, is fenced"
    no_loss(figures)
    assert_single_writer(figures)
    assert figures["postgres"]["errors"] == 0 and figures["redis"]["errors"] == 0, figures
    assert figures["postgres_asyncpg"]["errors"] == 0, figures["postgres_asyncpg"]
    check_tiers(HOME)


# --------------------------------------------------------------------------- 5: interrupted runs

# ------------------------------------------------------------------------------ restore drill

def test_a_restore_drill_in_a_standby_region_leaves_clients_and_the_region_as_they_were(home):
    """drill.yml in eu-west under the workload: the latest backup and the WAL after it restored
    into an isolated scratch cluster, promoted, every table read, a write; the clients see no
    error and no gap longer than 3 s (their usual longest is well under 1 s); the report gives
    the measured recovery time and reaches a row written just before the drill; nothing of the
    drill remains, and the holder, the witness and DNS were not touched."""
    token = f"before-drill-{time.time_ns()}"
    with pgbouncer("us-east-1", "app") as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_backup_probe (token text)")
        conn.execute("INSERT INTO baton_backup_probe VALUES (%s)", (token,))
    check = pgbackrest("us-east-1", "check")  # the row's WAL archived: the drill reaches it
    assert check.returncode == 0, check.stdout + check.stderr
    before = {n: member(n)["postmaster_start_time"] for n in ("us-east-1", "eu-west-1")}
    names = [dns_answer("global-1", name) for name in ("db", "redis")]
    figures, run = measure("restore drill", "drill.yml in eu-west", HOME,
                           lambda: playbook("drill.yml", "-e", "region=eu-west"))
    assert run.returncode == 0, run.stdout[-3000:]
    drill = report("drill")
    assert drill["result"] == "passed" and drill["region"] == "eu-west", drill
    assert drill["holder_region"] == HOME and drill["cleaned_up"] is True, drill
    assert 0 < drill["recovery_seconds"] < 600 and drill["write_ok"] is True, drill
    assert drill["tables"] >= 1 and drill["rows"] >= 1, drill
    assert drill["restored_up_to"] >= drill["started_at"] - 120, drill
    print("restore drill:", {k: drill[k] for k in ("backup", "restored_bytes", "restore_seconds",
                                                   "replay_seconds", "recovery_seconds",
                                                   "archive_rpo_seconds", "tables", "rows")})
    for tier in ("postgres", "postgres_asyncpg", "redis"):
        assert figures[tier]["errors"] == 0, (tier, figures[tier])
        assert figures[tier]["longest_gap"] < 3.0, (tier, figures[tier])
    no_loss(figures)
    assert_single_writer(figures)
    assert sh("podman", "exec", "baton-eu-west-1", "test", "!", "-e",
              "/var/lib/postgresql/baton-drill").returncode == 0, "the drill left its folder"
    assert scratch_sql("eu-west-1", "SELECT 1", port=5498).returncode != 0
    assert {n: member(n)["postmaster_start_time"] for n in before} == before
    assert holder_region() == HOME
    assert [dns_answer("global-1", name) for name in ("db", "redis")] == names
    prom = sh("podman", "exec", "baton-global-1", "cat",
              "/var/lib/prometheus/node-exporter/baton_drill.prom").stdout
    assert 'baton_drill_success{region="eu-west"} 1' in prom, prom


def lock_record(target: str) -> dict:
    """A lock record naming this test process, as a run of this controller writes it."""
    with open(f"/proc/{os.getpid()}/stat") as handle:
        start = int(handle.read().rsplit(")", 1)[1].split()[19])
    return {"run_id": f"test-holds-the-lock-{time.time_ns()}", "target": target,
            "kind": "switchover", "user": "root", "host": socket.gethostname(),
            "pid": os.getpid(), "pid_start": start,
            "started": datetime.now().astimezone().isoformat()}


def test_a_second_run_is_refused_while_one_holds_the_lock(home):
    held = lock_record("eu-west")
    assert witness().create("/baton/lock", json.dumps(held))
    try:
        run = playbook("failover.yml", "-e", "target=us-west")
    finally:
        entry = witness().get("/baton/lock")
        witness().delete("/baton/lock", expect_mod_revision=entry.mod_revision)
    text = " ".join(run.stdout.split())
    assert run.returncode != 0
    assert re.search(rf"the baton lock is held by run {held['run_id']} \(switchover to eu-west\) "
                     rf"by root@\S+, started \S+, \d+ s ago, still running here as process "
                     rf"{os.getpid()}: wait for it to finish", text), text[-2000:]
    assert holder_region() == HOME


def test_the_lock_lives_as_long_as_its_run_and_a_run_that_lost_it_stops_before_acting(home):
    """The failover lock is a fencing token. A switchover (lock TTL 4 s) frozen right after it
    took the lock keeps it well past the TTL (its keeper renews the lease while the run's
    process lives); the lock then disappears (as when it expires or another run breaks it), and
    the run, thawed, stops at its next check before it moved anything; its keeper goes."""
    run = subprocess.Popen([str(BIN / "ansible-playbook"), "switchover.yml", "-e",
                            "target=us-west", "-e", "baton_lock_ttl=4"], cwd=ROOT, env=ENV,
                           stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        wait_until(lambda: witness().get("/baton/lock") is not None
                   and f"playbook-pid={run.pid}" in sh("ps", "-eo", "args", timeout=30).stdout,
                   120,
                   "the run's lock and its keeper")
        os.killpg(run.pid, signal.SIGSTOP)
        entry = witness().get("/baton/lock")
        granted = witness().call("lease/timetolive", {"ID": str(entry.lease)})
        assert int(granted["grantedTTL"]) == 4, granted
        time.sleep(7)  # longer than the TTL: only the keeper keeps it
        kept = witness().get("/baton/lock")
        assert kept is not None and kept.value == entry.value, "the lock expired under its run"
        witness().delete("/baton/lock", expect_mod_revision=kept.mod_revision)
        os.killpg(run.pid, signal.SIGCONT)
        out, _ = run.communicate(timeout=300)
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGKILL)
            run.wait(30)
    text = " ".join(out.split())
    assert run.returncode != 0, text[-2000:]
    assert "this run's failover lock is gone (expired): the run stops here" in text, text[-2000:]
    assert holder_region() == HOME
    wait_until(lambda: "keep_lock_main" not in sh("ps", "-eo", "args", timeout=30).stdout, 15,
               "the keeper of the lost lock exits")
    check_tiers(HOME, settle=10)


def start_killable(*args: str) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "ansible-playbook"), *args], cwd=ROOT, env=ENV,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


def kill(proc: subprocess.Popen) -> None:
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(30)


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"{what} within {timeout} s"
        time.sleep(0.1)


def test_a_switchover_killed_before_the_baton_moved_is_finished_by_running_it_again(home):
    state = STATE["killed"] = {}

    def kill_then_rerun():
        first = start_killable("switchover.yml", "-e", "target=us-west")
        try:
            wait_until(lambda: witness().get("/baton/lock") is not None, 120, "the run's lock")
        finally:
            kill(first)
        state["holder_when_killed"] = holder_region()
        return playbook("switchover.yml", "-e", "target=us-west")
    figures, run = measure("interrupted", "switchover killed before the move, re-run",
                           "us-west", kill_then_rerun, report_kind="switchover")
    assert state["holder_when_killed"] == HOME, "the run was killed too late for this test"
    assert run.returncode == 0, run.stdout[-3000:]
    assert re.search(r"the baton lock is stale: run switchover-us-west-\S+ .* no longer runs on "
                     r"this host", " ".join(run.stdout.split()))
    assert witness().get("/baton/lock") is None
    assert_single_writer(figures)
    planned_no_loss(figures)
    check_tiers("us-west")


def test_a_switchover_killed_after_the_baton_moved_is_finished_by_running_it_again():
    assert "holder_when_killed" in STATE.get("killed", {}), "the earlier step did not run"
    epoch = json.loads(witness().get("/baton/holder").value)["epoch"]

    state = STATE["killed"]

    def kill_then_rerun():
        # Killed once PostgreSQL took writes in HOME, before Redis moved: the re-run finds
        # the baton and PostgreSQL moved (no "old" region any more) and the old Redis master
        # still one, with clients; it must hand Redis over all the same.
        first = start_killable("switchover.yml", "-e", f"target={HOME}")
        try:
            wait_until(lambda: holder_region() == HOME
                       and pg_accepts_write(MINI[NODE_OF[HOME]]), 300,
                       f"the baton moving to {HOME} and its PostgreSQL taking writes")
        finally:
            kill(first)
        state["old_redis_when_killed"] = redis_client(
            MINI[NODE_OF["us-west"]]).execute_command("ROLE")[0]
        assert witness().get("/baton/lock") is not None, "the killed run left no lock"
        return playbook("switchover.yml", "-e", f"target={HOME}")
    figures, run = measure("interrupted", "switchover killed after the move, re-run", HOME,
                           kill_then_rerun, report_kind="switchover")
    assert state["old_redis_when_killed"] == "master", "the run was killed too late for this test"
    assert run.returncode == 0, run.stdout[-3000:]
    assert json.loads(witness().get("/baton/holder").value)["epoch"] == epoch + 1
    assert witness().get("/baton/lock") is None
    assert_single_writer(figures)
    planned_no_loss(figures)
    check_tiers(HOME)


# ------------------------------------------------------------------------ 6: site.yml after it all

def test_site_yml_after_every_move_keeps_the_holder_and_restarts_nothing(home):
    """One run of site.yml --diff: the tasks it changes are exactly the drift that
    `site.yml --check --diff` would show (a converged lab shows none)."""
    starts = {n: member(n)["postmaster_start_time"] for n in NODES}
    pids = redis_pids()
    figures, run = measure("site.yml after the moves", "site.yml --diff", HOME,
                           lambda: playbook("site.yml", "--diff"))
    assert run.returncode == 0, run.stdout[-3000:]
    STATE["drift"] = changed_tasks(run.stdout)
    print(f"site.yml after the moves changed: {STATE['drift']}")
    assert f"primary region: {HOME}" in run.stdout
    assert_single_writer(figures)
    no_loss(figures)
    assert {n: member(n)["postmaster_start_time"] for n in NODES} == starts
    assert redis_pids() == pids
    check_tiers(HOME)


def test_site_yml_after_every_move_finds_no_drift():
    assert STATE["drift"] == [], STATE["drift"]


def test_planned_moves_lose_no_redis_write_and_give_no_readonly():
    """Every planned move of the run (the handover waits for the old master's offset under a
    write pause): no acknowledged Redis write lost, and no error but a closed connection."""
    moves = STATE.get("redis_planned", [])
    print(f"Redis writes lost and error kinds, per planned move: {moves}")
    assert moves and [m for m in moves if m[2] or set(m[3]) - {"ConnectionError"}] == [], moves

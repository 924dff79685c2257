"""Patroni REST API reads, and the decision of which region holds the primary."""

from __future__ import annotations

import base64
import json
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def lsn_to_int(lsn: str | None) -> int | None:
    """'16/B374D848' -> byte position; None stays None."""
    if not lsn:
        return None
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def as_lsn(position: Any) -> str | None:
    """A WAL position as PostgreSQL prints it ('16/B374D848'), from that text or from the
    byte count Patroni's REST API reports; None stays None."""
    if position in (None, ""):
        return None
    if isinstance(position, int) or str(position).isdigit():
        value = int(position)
        return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"
    return str(position)


_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_SCHEME = "http"


def use_ca(ca_file: str | None) -> None:
    """Speak HTTPS to Patroni's REST API from now on (this process), trusting only ca_file
    (the Baton CA) and checking the address in the member's certificate; plain HTTP when
    empty. Every Baton module that talks to Patroni calls it with its restapi_ca_file."""
    global _DIRECT, _SCHEME
    handlers: list[Any] = [urllib.request.ProxyHandler({})]
    if ca_file:
        handlers.append(urllib.request.HTTPSHandler(
            context=ssl.create_default_context(cafile=ca_file)))
    _DIRECT = urllib.request.build_opener(*handlers)
    _SCHEME = "https" if ca_file else "http"


def url(address: str, port: int, path: str) -> str:
    """A member's REST URL: https once use_ca was given the CA."""
    return f"{_SCHEME}://{address}:{port}{path}"


def open_url(target: Any, timeout: float) -> Any:
    """urlopen through the REST client (no proxy; the Baton CA when use_ca set it)."""
    return _DIRECT.open(target, timeout=timeout)


def get_cluster(address: str, port: int, timeout: float) -> dict[str, Any] | None:
    """GET /cluster from one member's REST API; None when it does not answer."""
    try:
        with open_url(url(address, port, "/cluster"), timeout) as resp:
            return json.loads(resp.read().decode())
    except (urllib.error.URLError, OSError, ValueError):
        return None


def region_state(members: list[str], port: int, timeout: float) -> dict[str, Any]:
    """What a region's Patroni cluster says, from the first member that answers."""
    for address in members:
        cluster = get_cluster(address, port, timeout)
        if cluster is not None:
            roles = {m.get("name"): m.get("role") for m in cluster.get("members", [])}
            return {"reachable": True, "answered_by": address, "members": roles,
                    "roles": sorted(set(roles.values()))}
    return {"reachable": False, "answered_by": None, "members": {}, "roles": []}


def read_regions(regions: dict[str, list[str]], port: int, timeout: float) -> dict[str, Any]:
    """region_state for every region in parallel: a dead region costs one timeout per member."""
    with ThreadPoolExecutor(max_workers=max(1, len(regions))) as pool:
        futures = {r: pool.submit(region_state, m, port, timeout) for r, m in regions.items()}
        return {r: f.result() for r, f in futures.items()}


class PrimaryUndecided(Exception):
    """The live state does not name one primary region; the message says why and what to do."""


def decide_primary(states: dict[str, dict[str, Any]], initial: str) -> tuple[str, str]:
    """The region that holds the primary, from what every region's Patroni says.

    A region holds it when its cluster has a member with role 'leader' (a standby cluster's
    leader is 'standby_leader'). No cluster anywhere is a first deploy: the inventory's initial
    primary. Anything else (two writable regions, clusters but no writable one) is refused.
    """
    if initial not in states:
        raise PrimaryUndecided(f"initial primary region '{initial}' is not one of "
                               f"{', '.join(states)}")
    writable = [r for r, s in states.items() if "leader" in s["roles"]]
    if len(writable) == 1:
        return writable[0], f"{writable[0]} has the only writable Patroni leader"
    if len(writable) > 1:
        raise PrimaryUndecided(
            f"{' and '.join(writable)} both have a writable Patroni leader (split brain): "
            "fence one of them before deploying")
    existing = [r for r, s in states.items() if s["members"]]
    if not existing:
        unreachable = [r for r, s in states.items() if not s["reachable"]]
        if unreachable and len(unreachable) < len(states):
            raise PrimaryUndecided(  # some clusters answer with no members: odd, refuse
                f"no region has a writable leader and {', '.join(unreachable)} did not answer: "
                "check those regions before deploying")
        return initial, f"no Patroni cluster exists yet: first deploy, {initial} as inventory says"
    return_hint = ", ".join(f"{r}: {'/'.join(states[r]['roles'])}" for r in existing)
    raise PrimaryUndecided(
        f"Patroni clusters exist ({return_hint}) but no region has a writable leader: run "
        "failover.yml to choose one, or wait for the primary region's in-region failover")


# --- moving a region's cluster between primary and standby (failover, switchover) ---------

# Straight to the node: a controller's HTTP proxy settings must not reroute Patroni calls.

class PatroniProblem(Exception):
    """One actionable sentence: what failed, where, and what to do."""


def rest(method: str, url: str, timeout: float, auth: tuple[str, str] | None = None,
         body: Any = None) -> tuple[int, Any]:
    """One REST call; (status, parsed JSON body or None). Raises OSError when nobody answers."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
        req.add_header("Authorization", f"Basic {token}")
    try:
        with _DIRECT.open(req, timeout=timeout) as resp:
            status, raw = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    try:
        return status, json.loads(raw.decode() or "null")
    except ValueError:
        return status, raw.decode(errors="replace").strip()


def read_cluster(addresses: list[str], port: int, timeout: float) -> dict[str, Any]:
    """/cluster and /config from the first member that answers both; raises PatroniProblem
    when none does."""
    errors = []
    for address in addresses:
        try:
            status, cluster = rest("GET", url(address, port, "/cluster"), timeout)
            status2, config = rest("GET", url(address, port, "/config"), timeout)
        except OSError as exc:
            errors.append(f"{address}: {exc}")
            continue
        if status == 200 and status2 == 200 and isinstance(cluster, dict):
            return {"answered_by": address, "members": cluster.get("members", []),
                    "config": config if isinstance(config, dict) else {}}
        errors.append(f"{address}: HTTP {status}/{status2}")
    raise PatroniProblem(f"no Patroni member answers at {', '.join(addresses)} (port {port}): "
                         f"{'; '.join(errors)}")


def standby_source(hosts: list[str], port: int, slot: str,
                   replica_methods: list[str] | None = None) -> dict[str, Any]:
    """The standby_cluster section that makes a cluster follow `hosts` through `slot`; its
    leader, when it has none, is created by `replica_methods` in turn."""
    return {"host": ",".join(hosts), "port": port, "primary_slot_name": slot,
            "create_replica_methods": list(replica_methods or ["basebackup"])}


def cluster_role(members: list[dict[str, Any]]) -> str | None:
    """'primary' (a writable leader), 'standby' (a standby leader) or None (no leader)."""
    roles = {m.get("role") for m in members}
    if roles & {"leader", "primary", "master"}:
        return "primary"
    if "standby_leader" in roles:
        return "standby"
    return None


def plan_cluster(config: dict[str, Any], members: list[dict[str, Any]], want: str,
                 source: dict[str, Any] | None = None) -> tuple[dict[str, Any] | None, str]:
    """The PATCH /config body that takes a cluster to `want` ('primary', or 'standby' of
    `source`), or None when it already is; with the reason (pure).

    A primary cluster is one whose dynamic configuration has no standby_cluster; a standby
    cluster follows exactly `source` (host list, port, slot)."""
    current = config.get("standby_cluster") or None
    if want == "primary":
        if current is None:
            role = cluster_role(members)
            return None, ("already a primary cluster" if role == "primary"
                          else "already a primary cluster (its leader is being elected)")
        return {"standby_cluster": None}, (f"promote: remove standby_cluster (it followed "
                                            f"{current.get('host')})")
    if source is None:
        raise ValueError("a standby cluster needs a source")
    if current is not None and all(str(current.get(k)) == str(v) for k, v in source.items()
                                   if k != "create_replica_methods"):
        methods = source.get("create_replica_methods")
        if methods is None or list(current.get("create_replica_methods") or []) == methods:
            return None, f"already a standby cluster of {source['host']}"
        return {"standby_cluster": source}, (f"already a standby cluster of {source['host']}; "
                                             f"its leader is created by {', '.join(methods)}")
    if current is None:
        return {"standby_cluster": source}, f"demote: follow {source['host']}"
    return {"standby_cluster": source}, (f"repoint: follow {source['host']} instead of "
                                         f"{current.get('host')}")


def reached(members: list[dict[str, Any]], want: str, streaming: bool = False) -> bool:
    """Whether a cluster's members show the outcome of `want` (its leader runs in that role;
    with streaming, a standby leader must be streaming from its source)."""
    standby_states = ("streaming",) if streaming else ("running", "streaming")
    for m in members:
        role, state = m.get("role"), m.get("state")
        if want == "primary" and role in ("leader", "primary", "master") and state == "running":
            return True
        if want == "standby" and role == "standby_leader" and state in standby_states:
            return True
    return False


def apply_cluster(addresses: list[str], port: int, auth: tuple[str, str], body: dict[str, Any],
                  timeout: float) -> str:
    """PATCH /config through the first member that takes it; returns who took it."""
    errors = []
    for address in addresses:
        try:
            status, reply = rest("PATCH", url(address, port, "/config"), timeout, auth,
                                 body)
        except OSError as exc:
            errors.append(f"{address}: {exc}")
            continue
        if status == 200:
            return address
        if status == 401:
            raise PatroniProblem(f"Patroni REST API at {address}:{port} refused the PATCH "
                                 "(401): check patroni_restapi_username/password")
        errors.append(f"{address}: HTTP {status} {reply}")
    raise PatroniProblem(f"no Patroni member took PATCH /config at {', '.join(addresses)}: "
                         f"{'; '.join(errors)}")


def leader_first(addresses: list[str], members: list[dict[str, Any]]) -> list[str]:
    """The addresses with the cluster's leader (primary or standby leader) first: Patroni
    acts on a PATCH /config at once only on the member that took it (it wakes its own loop),
    and the leader is the one that promotes or demotes; the others see it a loop later."""
    leaders = {m.get("host") for m in members
               if m.get("role") in ("leader", "primary", "master", "standby_leader")}
    return sorted(addresses, key=lambda address: address not in leaders)


def wait_cluster(addresses: list[str], port: int, want: str, deadline: float,
                 timeout: float, streaming: bool = False,
                 tick: Callable[[], None] | None = None, tick_every: float = 2.0
                 ) -> dict[str, Any]:
    """Poll /cluster until `reached`; returns the last read; raises PatroniProblem at the
    deadline (monotonic clock) naming what the members say. `tick`, when given, is called
    every `tick_every` seconds while it waits (converge_cluster's keep_wal_coming)."""
    last: dict[str, Any] = {}
    ticked = time.monotonic()
    while True:
        if tick is not None and time.monotonic() - ticked >= tick_every:
            tick()
            ticked = time.monotonic()
        try:
            last = read_cluster(addresses, port, timeout)
            if reached(last["members"], want, streaming):
                return last
        except PatroniProblem:
            pass
        if time.monotonic() >= deadline:
            seen = ", ".join(f"{m.get('name')}: {m.get('role')}/{m.get('state')}"
                             for m in last.get("members", [])) or "no answer"
            raise PatroniProblem(f"the cluster did not become {want} in time ({seen}): look at "
                                 "`patronictl list` and the Patroni log on its members, then "
                                 "re-run")
        time.sleep(0.25)


def furthest(received: str | None, replayed: str | None) -> str | None:
    """The further of a standby's received and replayed WAL positions (None: neither known)."""
    known = [x for x in (received, replayed) if x]
    return max(known, key=lsn_to_int) if known else None


def wait_standby_answers(address: str, port: int, deadline: float,
                         timeout: float) -> str | None:
    """Polls a standby cluster's leader's own /patroni until its PostgreSQL answers from
    recovery; the furthest WAL position it holds then. /cluster shows a demoted leader as a
    running standby leader at once (the role comes from the cluster's configuration, the state
    from its last report), while Patroni is still shutting PostgreSQL down to start it again as
    a standby. Until it answers, its final WAL position is not known, and its fence agent,
    asked to let go of its lease, cannot tell a restarting standby from a silent primary.
    Raises PatroniProblem at the deadline (monotonic clock)."""
    seen = "no answer"
    while True:
        try:
            _status, data = rest("GET", url(address, port, "/patroni"), timeout)
        except OSError as exc:
            data, seen = None, str(exc)
        if isinstance(data, dict):
            xlog = data.get("xlog") if isinstance(data.get("xlog"), dict) else {}
            if data.get("role") in ("standby_leader", "replica") \
                    and data.get("state") == "running" and "replayed_location" in xlog:
                return furthest(as_lsn(xlog.get("received_location")),
                                as_lsn(xlog.get("replayed_location")))
            seen = f"{data.get('role')}/{data.get('state')}"
        if time.monotonic() >= deadline:
            raise PatroniProblem(f"the standby leader at {address} did not answer from recovery "
                                 f"in time (its Patroni says {seen}): look at the Patroni log "
                                 "on it, then re-run")
        time.sleep(0.1)


def wait_primary_writes(read: dict[str, Any], addresses: list[str], port: int,
                        deadline: float, timeout: float) -> None:
    """For a promoted cluster: polls its leader's own /patroni until its PostgreSQL runs as a
    primary (Patroni reads the role from pg_is_in_recovery()). /cluster names the new leader,
    and GET /primary says 200, as soon as the standby_cluster section is gone and the member
    holds the leader lock: Patroni promotes at its next loop, and PostgreSQL then ends recovery
    (timeline history from restore_command, the end-of-recovery checkpoint). Clients let
    through before would find it read-only. Raises PatroniProblem at the deadline (monotonic
    clock)."""
    leader = next((m.get("host") for m in read["members"]
                   if m.get("role") in ("leader", "primary", "master")
                   and m.get("host") in addresses), None)
    if leader is None:
        return
    seen = "no answer"
    while True:
        try:
            _status, data = rest("GET", url(leader, port, "/patroni"), timeout)
            if isinstance(data, dict):
                if data.get("role") in ("primary", "master") and data.get("state") == "running":
                    return
                seen = f"{data.get('role')}/{data.get('state')}"
        except OSError as exc:
            seen = str(exc)
        if time.monotonic() >= deadline:
            raise PatroniProblem(f"the new leader at {leader} did not take writes in time (its "
                                 f"Patroni says {seen}): look at the Patroni log on it, then "
                                 "re-run")
        time.sleep(0.05)


def member_positions(addresses: list[str], port: int, timeout: float) -> dict[str, Any]:
    """/patroni of every member that answers (asked in parallel): role, WAL positions (for
    catch-up checks)."""
    def one(address: str) -> tuple[str, Any]:
        try:
            _status, data = rest("GET", url(address, port, "/patroni"), timeout)
        except OSError:
            return address, None
        return address, data

    with ThreadPoolExecutor(max_workers=max(1, len(addresses))) as pool:
        answers = list(pool.map(one, addresses))
    out = {}
    for address, data in answers:
        if isinstance(data, dict) and data.get("role"):
            xlog = data.get("xlog", {})
            out[address] = {"role": data.get("role"), "state": data.get("state"),
                            "timeline": data.get("timeline"),
                            "location": as_lsn(xlog.get("location")),
                            "received": as_lsn(xlog.get("received_location")),
                            "replayed": as_lsn(xlog.get("replayed_location"))}
    return out


# --- a region's cluster taken to a state (baton_cluster, baton_handover) -----------------------

class ClusterStop(PatroniProblem):
    """A converge_cluster that stopped: one sentence, and what it had found (for the task's
    result)."""

    def __init__(self, msg: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.result = result or {}


def standby_answers(read: dict[str, Any], addresses: list[str], state: str, port: int,
                    deadline: float, timeout: float) -> str | None:
    """For a standby cluster: waits until its leader's PostgreSQL answers from recovery
    (wait_standby_answers) and returns the furthest WAL position it holds, which after a
    demotion is the old primary's final one. None for a primary, or when no member of
    `addresses` leads (nothing to wait for)."""
    if state != "standby":
        return None
    leader = next((m.get("host") for m in read["members"]
                   if m.get("role") == "standby_leader" and m.get("host") in addresses), None)
    if leader is None:
        return None
    return wait_standby_answers(leader, port, deadline, timeout)


def leader_position(positions: dict[str, Any]) -> tuple[str | None, str | None]:
    """(address, WAL position) of the member that leads: its location as a primary, else the
    furthest of what it received and replayed."""
    for address, p in positions.items():
        if p["role"] in ("primary", "master", "leader", "standby_leader"):
            return address, p.get("location") or furthest(p.get("received"), p.get("replayed"))
    return None, None


def described(read: dict[str, Any]) -> dict[str, Any]:
    return {"role": cluster_role(read["members"]),
            "standby_cluster": read["config"].get("standby_cluster"),
            "members": [{k: m.get(k) for k in ("name", "role", "state", "host", "timeline",
                                                 "lag")} for m in read["members"]]}


def converge_cluster(region: str, members: list[str], state: str, *, port: int = 8008,
                     timeout: float = 3.0, auth: tuple[str, str],
                     source_hosts: list[str] | None = None, source_port: int = 5000,
                     slot: str | None = None, replica_methods: list[str] | None = None,
                     wait_for_lsn: str | None = None,
                     streaming: bool = False, wait_timeout: float = 120.0,
                     keep_wal_coming: Callable[[], None] | None = None,
                     check_mode: bool = False) -> dict[str, Any]:
    """Takes a region's cluster to `state` ('primary', or 'standby' of source_hosts through
    slot) and waits for the outcome; the result baton_cluster returns. Raises ClusterStop.
    keep_wal_coming (with streaming) is called every 2 s of the wait: it makes the source
    write WAL (see baton_cluster's wal_source)."""
    try:
        wanted_lsn = lsn_to_int(wait_for_lsn)
    except ValueError as exc:
        raise ClusterStop(f"wait_for_lsn '{wait_for_lsn}' is not a WAL position: write it as "
                          "PostgreSQL does, e.g. 0/3000060") from exc
    source = (standby_source(source_hosts or [], source_port, slot or "", replica_methods)
              if state == "standby" else None)
    answer_by = time.monotonic() + (wait_timeout if streaming else 0)
    while True:
        try:
            before = read_cluster(members, port, timeout)
            break
        except PatroniProblem as exc:
            if time.monotonic() >= answer_by:
                verb = "promoted" if state == "primary" else "demoted or repointed"
                raise ClusterStop(f"{region}: {exc}: the region must answer to be {verb}") from exc
            time.sleep(1)
    body, reason = plan_cluster(before["config"], before["members"], state, source)
    _addr, position_before = leader_position(member_positions(members, port, timeout))
    kind = ("none" if body is None else "promote" if state == "primary"
            else "repoint" if before["config"].get("standby_cluster") else "demote")
    result: dict[str, Any] = {"changed": body is not None,
                              "action": {"action": kind, "reason": f"{region}: {reason}"},
                              "before": described(before), "position_before": position_before}
    if check_mode:
        return result
    started = time.monotonic()
    deadline = started + wait_timeout
    if body is None:
        try:
            after = before
            if not reached(before["members"], state, streaming):
                after = wait_cluster(members, port, state, deadline, timeout, streaming,
                                     tick=keep_wal_coming)
            if state == "primary":
                wait_primary_writes(after, members, port, deadline, timeout)
            answered = standby_answers(after, members, state, port, deadline, timeout)
        except PatroniProblem as exc:
            raise ClusterStop(f"{region}: {exc}", result) from exc
        result["leader_position"] = answered or leader_position(member_positions(
            members, port, timeout))[1]
        return result
    if wanted_lsn is not None:
        while True:
            _addr, received = leader_position(member_positions(members, port, timeout))
            if received and lsn_to_int(received) >= wanted_lsn:
                break
            if time.monotonic() >= deadline:
                raise ClusterStop(f"{region}: the standby leader received WAL up to {received}, "
                                  f"not {wait_for_lsn}, within {wait_timeout:g} s: it is not "
                                  "promoted (that would lose data); check its replication and "
                                  "re-run", result)
            time.sleep(0.1)
    try:
        apply_cluster(leader_first(members, before["members"]), port, auth, body, timeout)
        after = wait_cluster(members, port, state, deadline, timeout, streaming,
                             tick=keep_wal_coming)
        if state == "primary":
            wait_primary_writes(after, members, port, deadline, timeout)
        answered = standby_answers(after, members, state, port, deadline, timeout) \
            if kind == "demote" else None
    except PatroniProblem as exc:
        raise ClusterStop(f"{region}: {exc}", result) from exc
    result["after"] = described(after)
    result["leader_position"] = answered or leader_position(member_positions(
        members, port, timeout))[1]
    result["elapsed"] = round(time.monotonic() - started, 3)
    return result

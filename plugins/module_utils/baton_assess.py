"""Health assessment of every region: the probes (I/O) and the verdicts (pure functions).

Every probe of every node of every region runs at once, each bounded by its own timeout, so
a dead or black-holed region costs one timeout, not one per check or per node. Probes never
raise: a failure is a dict with "error". The verdicts and the global view are computed from
those dicts alone, so unit tests feed them recorded probes.
"""

from __future__ import annotations

import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

try:  # inside a module (AnsiballZ) ...
    import ansible.module_utils.baton_patroni as patroni_rest
    from ansible.module_utils.baton_dns import absolute_name, parse_server, read, serial
    from ansible.module_utils.baton_patroni import lsn_to_int
    from ansible.module_utils.baton_redis import REDIS_FENCE
    from ansible.module_utils.baton_redis import client as redis_client
except ModuleNotFoundError as missing:  # ... or imported directly by tests and bench/ scripts
    if not (missing.name or "").startswith("ansible.module_utils.baton_"):
        raise  # e.g. dnspython itself is missing: say that, not something else
    import baton_patroni as patroni_rest
    from baton_dns import absolute_name, parse_server, read, serial
    from baton_patroni import lsn_to_int
    from baton_redis import REDIS_FENCE
    from baton_redis import client as redis_client

Probe = dict[str, Any]

HEALTHY, DEGRADED, UNHEALTHY = "healthy", "degraded", "unhealthy"


def _error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# Straight to the node: a controller's HTTP proxy settings must not reroute (or time) probes.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _patroni_json(address: str, port: int, path: str, timeout: float) -> Any:
    """A Patroni REST read (HTTPS with the Baton CA once baton_patroni.use_ca set it)."""
    try:
        with patroni_rest.open_url(patroni_rest.url(address, port, path), timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:  # Patroni answers 503 with a body on replicas
        return json.loads(exc.read().decode() or "{}")


def _http_json(url: str, timeout: float) -> Any:
    try:
        with _DIRECT.open(url, timeout=timeout) as resp:
            return json.loads(resp.read().decode())
    except urllib.error.HTTPError as exc:  # Patroni answers 503 with a body on replicas
        return json.loads(exc.read().decode() or "{}")


# --- probes: one node, one service; a dict, never an exception ---------------------------

def probe_patroni(address: str, port: int, timeout: float) -> Probe:
    """GET /patroni: this member's role, state, timeline, WAL positions, pending restart."""
    try:
        data = _patroni_json(address, port, "/patroni", timeout)
    except Exception as exc:  # a probe reports every failure as data, never raises
        return {"ok": False, "error": _error(exc)}
    xlog = data.get("xlog", {})
    return {"ok": True, "name": data.get("patroni", {}).get("name") or data.get("name"),
            "role": data.get("role"), "state": data.get("state"),
            "timeline": data.get("timeline"),
            "pending_restart": bool(data.get("pending_restart", False)),
            "standby_cluster": "standby_leader" in str(data.get("role", "")),
            "wal_position": xlog.get("location"),
            "received_position": xlog.get("received_location"),
            "replayed_position": xlog.get("replayed_location")}


def probe_cluster(address: str, port: int, timeout: float) -> Probe:
    """GET /cluster: every member of the region's Patroni cluster as one member sees them."""
    try:
        data = _patroni_json(address, port, "/cluster", timeout)
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    members = [{"name": m.get("name"), "role": m.get("role"), "state": m.get("state"),
                "host": m.get("host"), "timeline": m.get("timeline"), "lag": m.get("lag"),
                "pending_restart": bool(m.get("pending_restart", False))}
               for m in data.get("members", [])]
    return {"ok": True, "members": members}


def probe_config(address: str, port: int, timeout: float) -> Probe:
    """GET /config: what the region's cluster follows, its standby_cluster section
    ({host, port, primary_slot_name}; None for a primary cluster)."""
    try:
        data = _patroni_json(address, port, "/config", timeout)
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    source = data.get("standby_cluster") if isinstance(data, dict) else None
    return {"ok": True, "standby_source": ({k: source.get(k) for k in
                                            ("host", "port", "primary_slot_name")}
                                           if isinstance(source, dict) else None)}


def probe_etcd(address: str, port: int, timeout: float) -> Probe:
    """GET /health: true only when this member sees a leader (its cluster has quorum)."""
    try:
        data = _http_json(f"http://{address}:{port}/health", timeout)
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    return {"ok": True, "healthy": str(data.get("health")).lower() == "true"}


def _pg_limits(timeout: float) -> dict[str, int]:
    """libpq settings that bound a connection whose peer goes silent, not only its set-up
    (connect_timeout is whole seconds, at least 2)."""
    return {"connect_timeout": max(2, round(timeout)),
            "tcp_user_timeout": int(timeout * 1000), "keepalives": 1,
            "keepalives_idle": 1, "keepalives_interval": 1, "keepalives_count": 2}


def probe_postgres(address: str, port: int, user: str, password: str, timeout: float,
                   dbname: str = "postgres") -> Probe:
    """In recovery or not, WAL positions and replay delay, as the monitoring user."""
    try:
        import psycopg

        with psycopg.connect(host=address, port=port, user=user, password=password,
                             dbname=dbname, options=f"-c statement_timeout={int(timeout * 1000)}",
                             autocommit=True, **_pg_limits(timeout)) as conn:
            row = conn.execute(
                "SELECT pg_is_in_recovery(),"
                " CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn()::text END,"
                " pg_last_wal_receive_lsn()::text, pg_last_wal_replay_lsn()::text,"
                " extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8,"
                " extract(epoch FROM pg_last_xact_replay_timestamp())::float8"
            ).fetchone()
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    in_recovery, current, received, replayed, replay_delay, replayed_at = row
    return {"ok": True, "in_recovery": bool(in_recovery), "current_lsn": current,
            "receive_lsn": received, "replay_lsn": replayed,
            "replay_delay_seconds": None if replay_delay is None else round(replay_delay, 3),
            # The commit time of the last transaction replayed (Unix time): a write committed
            # on the primary after it may not have reached this standby.
            "last_replay_at": None if replayed_at is None else round(replayed_at, 3)}


def probe_pgbouncer(address: str, port: int, user: str, password: str, timeout: float,
                    database: str = "app") -> Probe:
    """SHOW DATABASES on the admin console (a stats user): where `database` goes, paused."""
    try:
        import psycopg

        with psycopg.connect(host=address, port=port, user=user, password=password,
                             dbname="pgbouncer", autocommit=True,
                             cursor_factory=psycopg.ClientCursor, **_pg_limits(timeout)) as conn:
            # ClientCursor: the simple query protocol, the only one the admin console speaks.
            cur = conn.execute("SHOW DATABASES")
            names = [c.name for c in cur.description]
            rows = [dict(zip(names, r, strict=False)) for r in cur.fetchall()]
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    for row in rows:
        if row.get("name") == database:
            return {"ok": True, "host": row.get("host"), "port": row.get("port"),
                    "paused": bool(row.get("paused")), "disabled": bool(row.get("disabled"))}
    return {"ok": False, "error": f"PgBouncer has no database {database}"}


def probe_endpoint(address: str, port: int, user: str, password: str,
                   timeout: float) -> Probe:
    """One HAProxy endpoint, end to end: a PostgreSQL answers through it, in recovery or not."""
    found = probe_postgres(address, port, user, password, timeout)
    return ({"ok": True, "in_recovery": found["in_recovery"]} if found["ok"] else found)


def probe_redis(address: str, port: int, password: str, timeout: float) -> Probe:
    """INFO replication: role, offsets, where a replica's master is and its link status; and
    whether Baton's fence makes it refuse writes (min-replicas-to-write 1000000)."""
    try:
        client = redis_client(address, port, password, timeout, once=True)
        info = client.info("replication")
        fence = client.config_get("min-replicas-to-write").get("min-replicas-to-write")
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    role = info.get("role")
    out = {"ok": True, "role": role, "offset": info.get("master_repl_offset"),
           "address": f"{address}:{port}", "fenced": str(fence) == str(REDIS_FENCE)}
    if role == "slave":
        out.update(master=f"{info.get('master_host')}:{info.get('master_port')}",
                   link=info.get("master_link_status"),
                   offset=info.get("slave_repl_offset", out["offset"]))
    return out


def probe_sentinel(address: str, port: int, password: str, name: str,
                   timeout: float) -> Probe:
    """What this Sentinel watches (SENTINEL MASTERS) and whether its quorum holds."""
    try:
        import redis

        client = redis_client(address, port, password, timeout, once=True)
        masters = client.execute_command("SENTINEL", "MASTERS")
        if isinstance(masters, dict):
            masters = list(masters.values())
        watched, settings = None, None
        for entry in masters or []:
            fields = entry if isinstance(entry, dict) else dict(zip(entry[::2], entry[1::2],
                                                                    strict=False))
            if fields.get("name") == name:
                watched = f"{fields.get('ip')}:{fields.get('port')}"
                settings = {k: str(fields.get(k)) for k in (
                    "quorum", "down-after-milliseconds", "failover-timeout", "parallel-syncs")}
        quorum, quorum_msg = None, None
        if watched:
            try:
                quorum_msg = str(client.execute_command("SENTINEL", "CKQUORUM", name))
                quorum = True
            except redis.ResponseError as exc:
                quorum, quorum_msg = False, str(exc)
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}
    return {"ok": True, "watching": watched, "quorum": quorum, "quorum_message": quorum_msg,
            "settings": settings}


_SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)")


def parse_agent_metrics(text: str) -> Probe:
    """What node_exporter says of the node's Baton agent: its gauges (baton_agent.prom) and
    how old that file is by the node's own clock (pure)."""
    values: dict[str, float] = {}
    mtime = node_time = None
    for line in text.splitlines():
        found = _SAMPLE.match(line)
        if not found:
            continue
        name, labels = found["name"], found["labels"] or ""
        try:
            number = float(found["value"])
        except ValueError:
            continue
        if name.startswith("baton_agent_"):
            values[name] = number
        elif name == "node_textfile_mtime_seconds" and 'baton_agent.prom"' in labels:
            mtime = number
        elif name == "node_time_seconds":
            node_time = number
    if not values:
        return {"ok": True, "agent": False}
    return {"ok": True, "agent": True, "up": values.get("baton_agent_up") == 1,
            "fenced": values.get("baton_agent_fenced") == 1,
            "holds": values.get("baton_agent_holds_baton") == 1,
            "age": (round(node_time - mtime, 1) if node_time is not None and mtime is not None
                    else None)}


def probe_agent(address: str, port: int, timeout: float) -> Probe:
    """The node's Baton agent, as its node_exporter shows it (textfile collector)."""
    try:
        with _DIRECT.open(f"http://{address}:{port}/metrics", timeout=timeout) as resp:
            return parse_agent_metrics(resp.read().decode())
    except Exception as exc:
        return {"ok": False, "error": _error(exc)}


def probe_dns(server: str, zone: str, names: list[str], timeout: float) -> Probe:
    """Where the failover records point on one authoritative server, and its serial."""
    try:
        import dns.name

        target = parse_server(server)
        origin = dns.name.from_text(zone)
        records = {n: list(read(target, origin, absolute_name(n, origin), "A", timeout).values)
                   for n in names}
        return {"ok": True, "records": records, "serial": serial(target, origin, timeout)}
    except Exception as exc:
        return {"ok": False, "error": str(exc) or _error(exc)}


# --- running them --------------------------------------------------------------------------

def run_probes(jobs: dict[tuple[str, ...], Callable[[], Probe]], deadline: float) -> dict:
    """Run every probe at once, one thread each, and wait at most `deadline` seconds in all.

    A probe still running then (a connection that went silent after it was made) is
    reported as not answering; its daemon thread is abandoned and cannot hold the run open.
    """
    results: dict[tuple[str, ...], Probe] = {}

    def run(key: tuple[str, ...], fn: Callable[[], Probe]) -> None:
        started = time.monotonic()
        result = fn()
        result["elapsed"] = round(time.monotonic() - started, 3)
        results[key] = result

    threads = [threading.Thread(target=run, args=(key, fn), daemon=True)
               for key, fn in jobs.items()]
    for thread in threads:
        thread.start()
    end = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    late = {"ok": False, "error": f"no answer within {deadline:g} s", "elapsed": deadline}
    return {key: dict(results.get(key) or late) for key in jobs}


def _ran_out_of_time(probe: Probe) -> bool:
    error = str(probe.get("error") or "").lower()
    return not probe.get("ok") and any(w in error for w in ("no answer within", "timed out",
                                                            "timeout"))


def ask_again(jobs: dict[tuple[str, ...], Callable[[], Probe]], probes: dict,
              deadline: float) -> dict:
    """The probes that ran out of time on a node that answered another probe, asked once more
    (`run_probes` again): that node is up, and on a busy controller the first ask can miss the
    deadline while its threads wait for the CPU. A node that answered nothing (a lost region,
    a partition) is not asked again, so that case costs no more time. Keys as run_probes's,
    ("node", region, node, service)."""
    answering = {key[:3] for key, probe in probes.items() if key[0] == "node" and probe.get("ok")}
    again = {key: jobs[key] for key, probe in probes.items()
             if key[0] == "node" and key[:3] in answering and _ran_out_of_time(probe)}
    if not again:
        return probes
    return {**probes, **run_probes(again, deadline)}


# --- verdicts: pure ---------------------------------------------------------------------

def _first_ok(probes: dict[str, Probe]) -> Probe | None:
    return next((p for p in probes.values() if p.get("ok")), None)


def _per_node(probes: dict[str, Probe]) -> dict[str, Probe]:
    """A service's probes by node, without their timing (facts, not measurements)."""
    return {node: {k: v for k, v in p.items() if k != "elapsed"} for node, p in probes.items()}


def region_summary(region: str, nodes: dict[str, dict[str, Probe]]) -> dict[str, Any]:
    """One region's facts from its nodes' probes: {node: {service: probe}}."""
    by_service: dict[str, dict[str, Probe]] = {}
    for node, services in nodes.items():
        for service, probe in services.items():
            by_service.setdefault(service, {})[node] = probe

    def service(name: str) -> dict[str, Probe]:
        return by_service.get(name, {})

    cluster = _first_ok(service("cluster"))
    config = _first_ok(service("config"))
    patroni = {n: p for n, p in service("patroni").items() if p.get("ok")}
    leader = next((n for n, p in patroni.items()
                   if p.get("role") in ("primary", "master", "standby_leader")), None)
    leader_role = patroni[leader]["role"] if leader else None
    postgres = service("postgres")
    leader_pg = postgres.get(leader, {}) if leader else {}
    etcd = service("etcd")
    etcd_healthy = sum(1 for p in etcd.values() if p.get("ok") and p.get("healthy"))
    return {
        "region": region,
        "reachable": any(p.get("ok") for s in nodes.values() for p in s.values()),
        "patroni": {
            "answered": bool(patroni),
            "leader": leader,
            "cluster_role": ("primary" if leader_role in ("primary", "master")
                             else "standby" if leader_role == "standby_leader" else None),
            "timeline": patroni[leader].get("timeline") if leader else None,
            "members": cluster["members"] if cluster else [],
            # What the cluster follows ({host, port, primary_slot_name}; None: nothing, a
            # primary cluster); absent when no member's /config answered.
            **({"standby_source": config["standby_source"]} if config else {}),
            "pending_restart": sorted(n for n, p in patroni.items() if p.get("pending_restart")),
        },
        "etcd": {"members": len(etcd), "healthy": etcd_healthy,
                 "quorum": bool(etcd) and etcd_healthy > len(etcd) // 2},
        "postgres": {
            "leader_answers": bool(leader_pg.get("ok")),
            "in_recovery": leader_pg.get("in_recovery"),
            "current_lsn": leader_pg.get("current_lsn"),
            "receive_lsn": leader_pg.get("receive_lsn"),
            "replay_lsn": leader_pg.get("replay_lsn"),
            "replay_delay_seconds": leader_pg.get("replay_delay_seconds"),
            "last_replay_at": leader_pg.get("last_replay_at"),
            # Any node that accepts writes, whatever Patroni says (split brain evidence).
            "writable_nodes": sorted(n for n, p in postgres.items()
                                     if p.get("ok") and p.get("in_recovery") is False),
            "answering_nodes": sorted(n for n, p in postgres.items() if p.get("ok")),
        },
        "redis": _per_node(service("redis")),
        "sentinel": _per_node(service("sentinel")),
        "pgbouncer": _per_node(service("pgbouncer")),
        "agent": _per_node(service("agent")),
        "haproxy": {n: {"rw": services.get("haproxy_rw", {}), "ro": services.get("haproxy_ro", {})}
                    for n, services in nodes.items()
                    if "haproxy_rw" in services or "haproxy_ro" in services},
        "errors": {f"{n}/{s}": p["error"] for n, ss in nodes.items() for s, p in ss.items()
                   if not p.get("ok") and p.get("error")},
    }


def region_verdict(summary: dict[str, Any], max_lag_bytes: int | None = None,
                   primary_position: int | None = None) -> tuple[str, list[str]]:
    """healthy / degraded / unhealthy for one region, with the reasons (pure)."""
    reasons: list[str] = []
    unhealthy = False
    if not summary["reachable"]:
        return UNHEALTHY, ["no node of the region answers (down or cut off)"]
    patroni = summary["patroni"]
    if not patroni["answered"]:
        unhealthy = True
        reasons.append("no Patroni member answers")
    elif not patroni["leader"]:
        unhealthy = True
        reasons.append("Patroni has no leader (nor standby leader)")
    if summary["etcd"]["members"] and not summary["etcd"]["quorum"]:
        unhealthy = True
        reasons.append(f"etcd has no quorum ({summary['etcd']['healthy']} of "
                       f"{summary['etcd']['members']} healthy)")
    pg = summary["postgres"]
    if patroni["leader"] and not pg["leader_answers"]:
        unhealthy = True
        reasons.append(f"PostgreSQL on the leader {patroni['leader']} does not answer")
    if patroni["cluster_role"] == "primary" and pg["in_recovery"]:
        unhealthy = True
        reasons.append("the leader of the primary cluster is in recovery")
    bouncers = summary["pgbouncer"]
    if bouncers and not any(p.get("ok") for p in bouncers.values()):
        unhealthy = True
        reasons.append("no PgBouncer answers")
    for node, probe in sorted(bouncers.items()):
        if not probe.get("ok"):
            reasons.append(f"PgBouncer on {node} does not answer")
        elif probe.get("paused"):
            reasons.append(f"PgBouncer on {node} has app paused")
    for member in patroni["members"]:
        if member["name"] != patroni["leader"] and member.get("state") not in ("streaming",
                                                                              "running"):
            reasons.append(f"member {member['name']} is {member.get('state')}")
    if patroni["pending_restart"]:
        reasons.append(f"pending restart: {', '.join(patroni['pending_restart'])}")
    for node, probe in sorted(summary["redis"].items()):
        if not probe.get("ok"):
            reasons.append(f"Redis on {node} does not answer")
        elif probe.get("role") == "slave" and probe.get("link") != "up":
            reasons.append(f"Redis on {node}: link to its master is {probe.get('link')}")
    for node, probe in sorted(summary["sentinel"].items()):
        if not probe.get("ok"):
            reasons.append(f"Sentinel on {node} does not answer")
        elif probe.get("quorum") is False:
            reasons.append(f"Sentinel on {node}: no quorum ({probe.get('quorum_message')})")
    for node, ends in sorted(summary["haproxy"].items()):
        for kind, probe in sorted(ends.items()):
            if probe and not probe.get("ok"):
                name = "read-write" if kind == "rw" else "read-only"
                reasons.append(f"HAProxy {name} endpoint on {node} does not reach PostgreSQL")
    lag = standby_lag_bytes(summary, primary_position)
    if max_lag_bytes is not None and lag is not None and lag > max_lag_bytes:
        reasons.append(f"standby lags {lag} bytes, above the budget of {max_lag_bytes}")
    if unhealthy:
        return UNHEALTHY, reasons
    return (DEGRADED if reasons else HEALTHY), reasons


def standby_lag_bytes(summary: dict[str, Any], primary_position: int | None) -> int | None:
    """Bytes of WAL the region's standby leader has not received (None: unknown)."""
    if summary["patroni"]["cluster_role"] != "standby" or primary_position is None:
        return None
    # The greater of received and replayed: after a restart pg_last_wal_receive_lsn() starts
    # from the segment it streams next, behind what was already replayed from the archive.
    known = [lsn_to_int(summary["postgres"][k]) for k in ("receive_lsn", "replay_lsn")]
    known = [k for k in known if k is not None]
    return None if not known else max(0, primary_position - max(known))


def writable_regions(summaries: dict[str, dict[str, Any]]) -> list[str]:
    """Regions whose Patroni cluster is a primary, or where any node accepts writes."""
    return sorted(r for r, s in summaries.items()
                  if s["patroni"]["cluster_role"] == "primary" or s["postgres"]["writable_nodes"])


def primary_position(summaries: dict[str, dict[str, Any]],
                     last_known: int | None = None) -> tuple[int | None, str | None]:
    """The WAL position data loss is measured against, and where it comes from: the single
    writable region's live position, else the last known one, else the most advanced standby."""
    writable = writable_regions(summaries)
    if len(writable) == 1:
        live = lsn_to_int(summaries[writable[0]]["postgres"]["current_lsn"])
        if live is not None:
            return live, "live"
    if last_known is not None:
        return last_known, "last known"
    known = [lsn_to_int(s["postgres"]["receive_lsn"]) for s in summaries.values()]
    best = max((k for k in known if k is not None), default=None)
    return best, ("most advanced standby" if best is not None else None)


def global_view(summaries: dict[str, dict[str, Any]], verdicts: dict[str, str],
                last_known_position: int | None = None) -> dict[str, Any]:
    """Who holds the baton, split brain, and the failover candidates ranked (pure)."""
    writable = writable_regions(summaries)
    primary = writable[0] if len(writable) == 1 else None
    position, source = primary_position(summaries, last_known_position)
    # Regions where neither Patroni nor PostgreSQL answers: whether they accept writes is
    # unknown (a cut-off old primary may), so the writable list is only what could be seen.
    unknown = sorted(r for r, s in summaries.items()
                     if not s["patroni"]["answered"] and not s["postgres"]["answering_nodes"])
    candidates = []
    for region, summary in summaries.items():
        if region in writable or summary["patroni"]["cluster_role"] != "standby":
            continue
        candidates.append({
            "region": region, "verdict": verdicts[region],
            "data_loss_bytes": standby_lag_bytes(summary, position),
            "replay_delay_seconds": summary["postgres"]["replay_delay_seconds"]})
    order = {HEALTHY: 0, DEGRADED: 1, UNHEALTHY: 2}
    candidates.sort(key=lambda c: (order[c["verdict"]],
                                   c["data_loss_bytes"] if c["data_loss_bytes"] is not None
                                   else float("inf"), c["region"]))
    if len(writable) > 1:
        problem = f"split brain: {', '.join(writable)} all accept writes"
    elif not writable:
        problem = "no region accepts writes"
    else:
        problem = None
    return {"baton_holder": primary, "writable_regions": writable,
            "split_brain": len(writable) > 1, "unknown_regions": unknown,
            "primary_position": position,
            "primary_position_source": source,
            "candidates": candidates, "problem": problem}


def dns_view(probes: dict[str, Probe], address_regions: dict[str, str]) -> dict[str, Any]:
    """Per failover name: which region each server's answer points at; serials; agreement."""
    names: dict[str, dict[str, Any]] = {}
    for server, probe in probes.items():
        for name, values in (probe.get("records") or {}).items():
            regions = sorted({address_regions.get(v, "?") for v in values})
            names.setdefault(name, {})[server] = {"values": values, "regions": regions}
    serials = {s: p.get("serial") for s, p in probes.items() if p.get("ok")}
    return {"names": names, "serials": serials,
            "errors": {s: p["error"] for s, p in probes.items() if not p.get("ok")},
            "in_sync": len(set(serials.values())) <= 1}


# --- every tier against the witness: one writer, and everything follows it (pure) ----------

def redis_tier_problems(summaries: dict[str, dict[str, Any]], holder: str | None) -> list[str]:
    """Exactly one Redis accepts writes and it is in the holder region; no replication loop;
    every other Redis follows the writable master (directly or through its region's first
    node) with its link up; no Sentinel watches anything outside the holder region, and the
    holder's Sentinels watch the writable master."""
    problems: list[str] = []
    nodes = {(region, node): probe for region, s in summaries.items()
             for node, probe in s["redis"].items()}
    if not nodes:
        return problems
    by_address = {p.get("address"): (r, n) for (r, n), p in nodes.items() if p.get("address")}
    writable = sorted((r, n) for (r, n), p in nodes.items()
                      if p.get("ok") and p.get("role") == "master" and not p.get("fenced"))
    if not writable:
        problems.append("no Redis accepts writes (every master is fenced, or there is none)")
    elif len(writable) > 1:
        problems.append("Redis accepts writes on more than one server: "
                        + ", ".join(f"{n} ({r})" for r, n in writable))
    elif holder and writable[0][0] != holder:
        problems.append(f"Redis accepts writes on {writable[0][1]} in {writable[0][0]}, but "
                        f"{holder} holds the baton")
    master = nodes[writable[0]].get("address") if len(writable) == 1 else None
    looped: set[str] = set()
    for (region, node), probe in sorted(nodes.items()):
        if not probe.get("ok") or probe.get("role") != "slave":
            continue
        seen, at, ends = [probe.get("address")], probe.get("master"), None
        while True:
            if at in seen:
                cycle = seen[seen.index(at):]
                if not set(cycle) & looped:
                    first = cycle.index(min(cycle))  # the same loop reads the same way
                    names = [by_address.get(a, ("?", a))[1]
                             for a in cycle[first:] + cycle[:first]]
                    problems.append(f"Redis replication loop: {' -> '.join([*names, names[0]])}")
                looped.update(cycle)
                break
            upstream = nodes.get(by_address.get(at, ("", "")))
            if upstream is None or not upstream.get("ok") or upstream.get("role") != "slave":
                ends = at
                break
            seen.append(at)
            at = upstream.get("master")
        if ends is None:
            continue
        if master and ends != master:
            problems.append(f"Redis on {node} ({region}) follows {ends}, not the writable "
                            f"master {master}")
        elif probe.get("link") != "up":
            problems.append(f"Redis on {node} ({region}): link to its master is "
                            f"{probe.get('link')}")
    for (region, node), probe in sorted(nodes.items()):
        if not probe.get("ok"):
            continue
        if probe.get("role") == "master" and (region, node) not in writable:
            if region == holder:
                problems.append(f"Redis on {node} in {holder}, which holds the baton, is a "
                                "fenced master: lift the fence (failover.yml or failback.yml)")
            elif len(writable) == 1:
                problems.append(f"Redis on {node} ({region}) is a master (fenced): it does not "
                                "follow the holder; run failback.yml")
    for region, s in sorted(summaries.items()):
        for node, probe in sorted(s["sentinel"].items()):
            if probe.get("ok") and not probe.get("watching") and holder and region == holder:
                problems.append(f"Sentinel on {node} in {holder}, which holds the baton, watches "
                                "nothing: a lost master would not be failed over (site.yml "
                                "sets its monitor again)")
            if not probe.get("ok") or not probe.get("watching"):
                continue
            if holder and region != holder:
                problems.append(f"Sentinel on {node} ({region}) watches {probe['watching']} "
                                f"outside the holder region {holder}: it could reconfigure "
                                "the holder's Redis; run failback.yml")
            elif master and probe["watching"] != master:
                problems.append(f"Sentinel on {node} ({region}) watches {probe['watching']}, "
                                f"not the writable master {master}")
    return problems


def dns_tier_problems(dns: dict[str, Any], holder: str | None, primary: str | None,
                      zone: str) -> list[str]:
    """Every name server answers every failover name with the holder's addresses, with the
    primary's serial."""
    problems: list[str] = []
    for name, answers in sorted(dns["names"].items()):
        for server, answer in sorted(answers.items()):
            if holder and answer["regions"] != [holder]:
                problems.append(f"{name}.{zone} on {server} points at "
                                f"{', '.join(answer['regions']) or 'nothing'}, not at {holder}, "
                                "which holds the baton")
    want = dns["serials"].get(primary) if primary else None
    for server, found in sorted(dns["serials"].items()):
        if want is not None and server != primary and found != want:
            problems.append(f"name server {server} serves serial {found} of {zone}, the primary "
                            f"{primary} has {want}: it missed updates (rndc refresh {zone} there)")
    for server, error in sorted(dns["errors"].items()):
        problems.append(f"name server {server} does not answer: {error}")
    return problems


def witness_problems(witness_holder: str | None, witness_error: str | None,
                     writable: list[str]) -> list[str]:
    """The witness names the region whose PostgreSQL accepts writes."""
    if witness_error:
        return [f"the witness does not answer ({witness_error}): no move is possible, and the "
                "holder's agents will fence it"]
    if witness_holder and len(writable) == 1 and writable[0] != witness_holder:
        return [f"PostgreSQL accepts writes in {writable[0]} but the witness names "
                f"{witness_holder} as holder"]
    return []


def agent_problems(summaries: dict[str, dict[str, Any]], holder: str | None,
                   max_age: float = 15.0) -> list[str]:
    """Each node's fence agrees with the witness: its agent runs (its metrics file is fresh:
    a dead agent's file still says up), and no node of the holder region is fenced."""
    problems: list[str] = []
    for region, s in sorted(summaries.items()):
        for node, probe in sorted(s.get("agent", {}).items()):
            if not probe.get("ok"):
                continue  # the node does not answer: its region's verdict says so
            if not probe.get("agent"):
                problems.append(f"{node} ({region}) shows no Baton agent metrics: is "
                                "baton-agent installed and running?")
                continue
            age = probe.get("age")
            if not probe.get("up") or (age is not None and age > max_age):
                when = f"last reported {age:g} s ago" if age is not None else "reports down"
                problems.append(f"the Baton agent on {node} ({region}) {when}: it does not "
                                "fence nor renew (systemctl status baton-agent there)")
            elif holder and region == holder and probe.get("fenced"):
                problems.append(f"{node} in {holder}, which holds the baton, is fenced: its "
                                "PostgreSQL stays down; find why (journalctl -u baton-agent), "
                                "then unfence it (baton_agent.py unfence) and start Patroni")
    return problems

"""The decisions of a failover, switchover or failback run: gates, plan and report (pure)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

Hostvars = Mapping[str, Any]


def baton_lsn(position: int | str | None) -> str:
    """A WAL byte position as PostgreSQL prints it ('' for none)."""
    if position in (None, ""):
        return ""
    value = int(position)
    return f"{value >> 32:X}/{value & 0xFFFFFFFF:X}"


def baton_redis_chain(regions: Mapping[str, list[str]], hostvars: Hostvars, target: str,
                      skip: list[str] | None = None) -> list[dict[str, Any]]:
    """The Redis servers as baton_redis_replication takes them once `target` holds the baton:
    target's first node a master, its other nodes its replicas (replica priority as the
    inventory sets it), every other region's first node a replica of it and their other nodes
    replicas of their first node (priority 0: Sentinel never promotes them). Regions in skip
    (not reachable) are left out. The new master comes first; the target's servers are marked
    `unfence` (a fence left there is lifted). regions: region -> its Redis hosts
    (baton_redis_regions)."""

    def server(host: str, source: str | None, priority: int, unfence: bool) -> dict[str, Any]:
        hv = hostvars[host]
        return {"address": str(hv["baton_address"]), "port": int(hv.get("redis_port", 6379)),
                "replicaof": source or "", "priority": priority,
                "unfence": unfence}

    head = regions[target][0]
    master = f"{hostvars[head]['baton_address']}:{hostvars[head].get('redis_port', 6379)}"
    chain = []
    for region, hosts in regions.items():
        if region in (skip or []) or not hosts:
            continue
        first = hosts[0]
        first_at = f"{hostvars[first]['baton_address']}:{hostvars[first].get('redis_port', 6379)}"
        for host in hosts:
            priority = (int(hostvars[host].get("redis_replica_priority", 100))
                        if region == target else 0)
            source = (None if host == head else master if host == first else first_at)
            chain.append(server(host, source, priority, region == target))
    chain.sort(key=lambda s: s["replicaof"] != "")
    return chain


def baton_lsn_int(lsn: str | None) -> int | None:
    """'16/B374D848' -> its byte position (None for none)."""
    if not lsn:
        return None
    high, _, low = str(lsn).partition("/")
    return (int(high, 16) << 32) + int(low, 16)


def _facts(assessment: Mapping[str, Any], region: str) -> dict[str, Any]:
    return assessment["regions"][region]["facts"]


def redis_handover_problem(assessment: Mapping[str, Any], old: str, target: str) -> str | None:
    """Why a planned move cannot hand Redis over from old to target now (pure), or None.

    The handover pauses the old master's writes until the target's new master has its
    replication offset: it needs exactly one master in the old region, streaming (link up) to a
    server of the target. Checked before anything moves, so that a switchover never moves
    PostgreSQL and then stops at Redis. None when the target has a master already (a re-run)
    or either region runs no Redis."""
    old_redis = _facts(assessment, old).get("redis") or {}
    new_redis = _facts(assessment, target).get("redis") or {}
    if not old_redis or not new_redis:
        return None
    if any(p.get("ok") and p.get("role") == "master" for p in new_redis.values()):
        return None
    masters = sorted(str(p.get("address")) for p in old_redis.values()
                     if p.get("ok") and p.get("role") == "master")
    silent = sorted(n for n, p in old_redis.items() if not p.get("ok"))
    if len(masters) != 1:
        seen = ", ".join(masters) or "none among the servers that answered"
        if silent:
            seen += "; " + ", ".join(silent) + " did not answer the assessment"
        return f"{old} has {len(masters)} Redis masters ({seen}), not one"
    # Another master taking writes outside the target would be a second writer the handover
    # cannot pause (it stops there); a fenced one takes no write.
    elsewhere = sorted(str(p.get("address")) for region in assessment["regions"]
                       if region not in (old, target)
                       for p in (_facts(assessment, region).get("redis") or {}).values()
                       if p.get("ok") and p.get("role") == "master" and not p.get("fenced"))
    if elsewhere:
        return (f"{', '.join(elsewhere)} also take writes as Redis masters, outside {old}; fence "
                "or re-chain them (failback.yml) first")
    streaming = [n for n, p in new_redis.items() if p.get("ok") and p.get("role") == "slave"
                 and p.get("master") == masters[0] and p.get("link") == "up"]
    if streaming:
        return None
    seen = "; ".join(f"{n}: " + (f"replica of {p.get('master')}, link {p.get('link')}"
                                 if p.get("ok") else "does not answer")
                     for n, p in sorted(new_redis.items()))
    return f"no Redis server of {target} streams from {old}'s master {masters[0]} ({seen})"


def baton_failover_plan(assessment: Mapping[str, Any], holder: Mapping[str, Any] | None,
                        target: str, kind: str, max_data_loss: int, force: bool = False
                        ) -> dict[str, Any]:
    """What a run that gives the baton to `target` must do, or why it must not (pure).

    assessment is baton_assess's result, holder the witness's /baton/holder record (None when
    it could not be read). kind is failover (unplanned: the old region may be gone) or
    switchover (planned: the old region must answer, zero data loss).
    Returns {refuse: sentence or None, already, old, old_answers, data_loss_bytes,
    position_source, others, unreachable, steps}.
    """
    regions = list(assessment["regions"])
    view = assessment["global"]
    plan: dict[str, Any] = {"refuse": None, "already": False, "old": None, "old_answers": False,
                            "target": target, "kind": kind, "data_loss_bytes": None,
                            "position_source": view.get("primary_position_source"),
                            "others": [], "unreachable": [], "not_following": [],
                            "steps": []}
    if target not in regions:
        plan["refuse"] = (f"unknown target region '{target}': choose one of "
                          f"{', '.join(regions)}")
        return plan
    reachable = {r: bool(_facts(assessment, r)["reachable"]) for r in regions}
    plan["unreachable"] = [r for r in regions if not reachable[r]]
    held = (holder or {}).get("region") or view.get("baton_holder")
    writable = list(view.get("writable_regions") or [])
    tfacts = _facts(assessment, target)
    trole = tfacts["patroni"]["cluster_role"]
    if held == target and trole == "primary" and writable == [target]:
        plan["already"] = True
    elif writable and len(writable) > 1 and not force:
        plan["refuse"] = (f"split brain: {', '.join(writable)} all accept writes; Baton will "
                          "not choose for you: fence the wrong one by hand, or re-run with "
                          "-e force=true to make " + target + " the only one")
        return plan
    if held != target:
        plan["old"] = held
    else:  # the baton moved already (a run killed after that): the region it came from
        plan["old"] = ((holder or {}).get("from") if not plan["already"] else None) or next(
            (r for r in writable if r != target), None)
    old = plan["old"]
    if old is not None and old in regions:
        plan["old_answers"] = bool(_facts(assessment, old)["patroni"]["answered"])
    verdict = assessment["regions"][target]["verdict"]
    if not plan["already"]:
        if verdict == "unhealthy":
            reasons = "; ".join(assessment["regions"][target]["reasons"])
            ranked = [c["region"] for c in view.get("candidates", [])
                      if c["verdict"] != "unhealthy"]
            others = f"candidates: {', '.join(ranked)}" if ranked else "no healthy candidate"
            plan["refuse"] = (f"target {target} is unhealthy ({reasons}): it cannot take "
                              f"writes; {others}")
            return plan
        if trole != "standby" and not (trole == "primary" and held == target):
            plan["refuse"] = (f"target {target} has no standby leader (Patroni cluster role "
                              f"{trole}): fix its cluster (patronictl list) before moving the "
                              "baton there")
            return plan
        if kind == "switchover" and (old is None or not plan["old_answers"]):
            plan["refuse"] = (f"a switchover needs the old primary region {old or '(none)'} to "
                              "answer, to demote it without losing data: it does not; use "
                              "failover.yml for an unplanned failover")
            return plan
        if kind == "switchover" and (why := redis_handover_problem(assessment, old, target)):
            plan["refuse"] = (f"a switchover hands Redis over without losing a write, and it "
                              f"cannot now: {why}; nothing was changed. Re-chain Redis "
                              f"(failback.yml -e region={target}) and wait until its link is "
                              "up, or use failover.yml, which does not hand over")
            return plan
        candidate = next((c for c in view.get("candidates", []) if c["region"] == target), {})
        plan["data_loss_bytes"] = candidate.get("data_loss_bytes")
        if kind == "failover" and not force:
            loss = plan["data_loss_bytes"]
            # (Not when the baton moved already: a run killed after that took this decision.)
            if old and held != target and not plan["old_answers"] \
                    and plan["position_source"] not in ("live", "last known"):
                plan["refuse"] = (f"the old primary region {old} does not answer and no recent "
                                  "health report (baton_last_known_max_age, with it as the "
                                  "primary) gives its position: the data loss of a failover to "
                                  f"{target} cannot be estimated; re-run with -e force=true to "
                                  "accept it (the report bounds it in time), and run health.yml "
                                  "regularly so that a failover finds a recent position")
                return plan
            if loss is None:
                plan["refuse"] = (f"the data loss of a failover to {target} cannot be "
                                  "estimated (no primary position is known): run health.yml "
                                  "while the primary answers, or re-run with -e force=true")
                return plan
            if loss > max_data_loss:
                better = [c["region"] for c in view.get("candidates", [])
                          if c["region"] != target and c["data_loss_bytes"] is not None
                          and c["data_loss_bytes"] <= max_data_loss
                          and c["verdict"] != "unhealthy"]
                plan["refuse"] = (f"target {target} lags {loss} bytes of WAL behind the "
                                  f"{plan['position_source'] or 'known'} primary position, "
                                  f"above max_data_loss ({max_data_loss} bytes): "
                                  + (f"fail over to {', '.join(better)} instead, " if better
                                     else "")
                                  + "wait for it to catch up, or re-run with -e force=true to "
                                  "accept the loss")
                return plan
    # Regions to repoint: their Patroni answers. A region that answers otherwise but not with
    # Patroni (fenced, or its database down) is left for failback.yml, as an unreachable one.
    answers = {r: bool(_facts(assessment, r)["patroni"]["answered"]) for r in regions}
    plan["others"] = [r for r in regions if r not in (target, old) and answers[r]]
    plan["not_following"] = [r for r in regions if r != target and not answers[r]]
    plan["steps"] = baton_failover_steps(plan)
    return plan


def baton_standby_slot(region: str) -> str:
    """The replication slot through which `region`'s standby cluster follows the primary."""
    return "baton_" + region.replace("-", "_")


def baton_regions_to_repoint(plan: Mapping[str, Any], assessment: Mapping[str, Any],
                             target_addresses: list[str], port: int) -> list[dict[str, str]]:
    """Of the plan's other regions, those baton_cluster must make standby clusters of the
    target, each with its slot ({region, slot}): every one but a region the assessment saw
    as a standby cluster whose leader runs, following exactly the target's addresses, port
    and the region's slot (a re-run leaves those alone). A region whose source was not read is
    repointed (baton_cluster reads it again and changes nothing when it follows)."""
    wanted_host = ",".join(str(a) for a in target_addresses)
    todo = []
    for region in plan.get("others") or []:
        patroni = _facts(assessment, region).get("patroni") or {}
        source = patroni.get("standby_source")
        # A standby leader that runs (what baton_cluster waits for), following exactly that.
        leads = any(m.get("role") == "standby_leader" and m.get("state") in ("running",
                                                                             "streaming")
                    for m in patroni.get("members") or [])
        follows = (patroni.get("cluster_role") == "standby" and leads
                   and isinstance(source, Mapping)
                   and str(source.get("host")) == wanted_host
                   and str(source.get("port")) == str(port)
                   and source.get("primary_slot_name") == baton_standby_slot(region))
        if not follows:
            todo.append({"region": region, "slot": baton_standby_slot(region)})
    return todo


def baton_failover_steps(plan: Mapping[str, Any]) -> list[str]:
    """The plan in words, as --check prints it."""
    target, old, kind = plan["target"], plan["old"], plan["kind"]
    if plan["already"]:
        head = [f"{target} already holds the baton and is the only writable region: nothing to "
                "fence or promote; check that everything follows it"]
    else:
        head = ["pause `app` on every reachable PgBouncer at once (clients wait)"]
        if plan["old_answers"]:
            head.append(f"demote {old} to a standby cluster of {target}")
        head.append(f"move the baton on the witness from {old or 'nobody'} to {target} "
                    "(compare-and-swap, new epoch)")
        if old:
            head.append(f"wait until {old}'s fence agents have let their leases go (they "
                        "fence their nodes first; cut-off ones fence before their leases "
                        "expire)")
        if kind == "switchover":
            head.append(f"wait until {target} has received {old}'s final WAL position")
        head.append(f"promote {target}'s standby cluster; wait until it takes writes")
    redis = (f"Redis: {target}'s first node takes writes, the others follow it; "
             f"{target}'s Sentinels watch it, the others' stop")
    dns = (f"DNS: db and redis to {target} in one update (compare-and-swap), verified on every "
           "name server")
    rest = [f"PgBouncer: `app` to {target}'s read-write endpoints, resume, on every reachable "
            "host at once (clients write again)"]
    # As the run orders them (__fo_lost_old): DNS first only when the old region is lost.
    rest += [dns, redis] if old and not plan["old_answers"] else [redis, dns]
    rest += ["a write through db"]
    rest += [f"make {r} a standby cluster of {target}" for r in plan["others"]]
    rest += ["report (JSON and summary), metrics, webhook"]
    if plan["not_following"]:
        rest.append(f"left for failback.yml: {', '.join(plan['not_following'])} (its Patroni "
                    "does not answer: down, cut off or fenced)")
    return head + rest


def baton_failover_report(plan: Mapping[str, Any], marks: Mapping[str, float],
                          outcome: Mapping[str, Any]) -> dict[str, Any]:
    """The run's report: the timeline of its steps (seconds from the start), RTO (start to
    the first write accepted through the failover name), data lost, the new epoch (pure).

    marks maps step name -> Unix time it ended, 'start' included; outcome carries the facts
    the steps returned (epoch, positions, write probe, what changed)."""
    start = float(marks["start"])
    timeline = [{"step": step, "at": round(float(at) - start, 3)}
                for step, at in sorted(marks.items(), key=lambda kv: float(kv[1]))
                if step != "start"]
    accepted = outcome.get("write_accepted_at")
    reference, promoted = outcome.get("reference_position"), outcome.get("promoted_position")
    gap = (max(0, int(reference) - baton_lsn_int(promoted))
           if outcome.get("promoted") and reference not in (None, "") and promoted else None)
    # Known only when the old primary's position was read at the move (live, or a demoted
    # primary's final one). A failover from a primary nobody could read: the old region may
    # have acknowledged writes until its fence deadline, which no position seen here shows.
    known = plan["kind"] == "switchover" or outcome.get("reference_source") == "live" \
        or not plan["old"]
    window = None
    if not known and outcome.get("promoted"):
        fenced_at = marks.get("old region fenced, baton moved")
        replayed_at = outcome.get("last_replayed_at")
        window = {
            "from": _iso(replayed_at), "to": _iso(fenced_at),
            "seconds": (round(float(fenced_at) - float(replayed_at), 1)
                        if fenced_at and replayed_at else None),
            "at_least_bytes": gap,
        }
    return {
        "run_id": outcome.get("run_id"),
        # What clients saw, apart from the run's own length (write_pause), and the run's wall
        # time up to the report.
        "write_pause": write_pause(plan, marks, outcome),
        "wall_seconds": round(float(outcome.get("reported_at") or 0) - start, 3)
        if outcome.get("reported_at") else None,
        # The timeline the target's promotion began: failback.yml matches its reconciliation
        # of the old region's data to this report by it.
        "promoted_timeline": outcome.get("promoted_timeline"),
        "kind": plan["kind"], "target": plan["target"], "old": plan["old"],
        "already": plan["already"], "epoch": outcome.get("epoch"),
        "rto_seconds": round(float(accepted) - start, 3) if accepted else None,
        "data_lost_known": known if outcome.get("promoted") else None,
        "data_lost_bytes": gap if known else None,
        "data_lost_source": (f"{outcome.get('reference_source')} minus the promoted leader's "
                             "received position") if known and gap is not None else None,
        "data_loss_window": window,
        "unreachable": plan["unreachable"], "not_following": plan["not_following"],
        "actions_taken": outcome.get("actions_taken", []),
        # Where the zone's updates went: {"host", "away", "why"}; away while the global site
        # is lost (failback.yml moves the primary home once it answers).
        "dns_primary": outcome.get("dns_primary"),
        "timeline": timeline, "plan": plan["steps"],
    }


def write_pause(plan: Mapping[str, Any], marks: Mapping[str, float],
                outcome: Mapping[str, Any]) -> dict[str, Any] | None:
    """How long clients could not write, at most (pure): {"seconds", "from", "to", "basis"},
    or None when nothing held them (a run that found the move done).

    - The old primary answered (a switchover, a failover from a live primary): the longest a
      PgBouncer held the queries, from its PAUSE to its RESUME (outcome's pgbouncer_holds:
      [{paused_at, resumed_at}] per host); without those, from the moment the run began to hold
      them to the moment it let them through on every host.
    - It did not (region loss): a range (at_least_seconds to seconds). The fault came after
      the old primary's last transaction the target replayed, and about when the old region
      last renewed its leases on the witness (they vanished one lease TTL later). No client
      of the failover name wrote before the PgBouncers let the queries through (the lower
      figure ends there), and one that resolves it afresh writes by the time this run's
      probe does (the upper figure ends there, and starts from the replayed transaction). An
      idle database makes the upper figure large.
    """
    held, resumed = marks.get("clients held"), marks.get("PgBouncers repointed and resumed")
    holds = [(float(h["paused_at"]), float(h["resumed_at"]))
             for h in outcome.get("pgbouncer_holds") or [] if h.get("paused_at")
             and h.get("resumed_at")]
    if plan.get("old_answers") and holds:
        begin, end = max(holds, key=lambda pair: pair[1] - pair[0])
        basis = ("PgBouncer held the queries (the longest hold of a host, from its PAUSE to its "
                 "RESUME)")
    elif plan.get("old_answers") and held and resumed:
        begin, end = float(held), float(resumed)
        basis = "PgBouncer held the queries (paused on every reachable host until resumed)"
    elif not plan.get("old_answers") and outcome.get("promoted") \
            and outcome.get("write_accepted_at"):
        # The fault is not seen: it came after the old primary's last transaction the target
        # replayed, and about when its region's last lease renewal was (its leases vanished
        # one TTL later) - or earlier: a region's nodes do not all stop at once.
        end = float(outcome["write_accepted_at"])
        replayed = float(outcome["last_replayed_at"]) if outcome.get("last_replayed_at") else None
        released = marks.get("old region fenced, baton moved")
        renewed = (float(released) - float(outcome["lease_ttl"])
                   if released and outcome.get("lease_ttl") else None)
        known = [t for t in (replayed, renewed) if t is not None]
        if not known:
            return None
        begin = replayed if replayed is not None else renewed
        # Nothing went through the failover name before a PgBouncer let the queries go: the
        # first host's RESUME (baton_pgbouncer's own time), else the play's end.
        first_resume = min((r for _p, r in holds), default=float(resumed) if resumed else None)
        first_possible = min(end, first_resume) if first_resume is not None else end
        return {"seconds": round(max(0.0, end - begin), 3),
                "at_least_seconds": round(max(0.0, first_possible - max(known)), 3),
                "from": _iso(begin), "to": _iso(end),
                "basis": "from the fault, which is not seen (it came after the old "
                         "primary's last transaction the target replayed, and about when its "
                         "region last renewed its leases on the witness), to a client's first "
                         "write through the failover name: not before the PgBouncers let the "
                         "queries through (the lower figure, from the renewal), and by the "
                         "time this run's probe wrote, resolving the name afresh (the upper "
                         "figure, from the replayed transaction)"}
    else:
        return None
    return {"seconds": round(max(0.0, end - begin), 3), "from": _iso(begin), "to": _iso(end),
            "basis": basis}


def _iso(at: Any) -> str | None:
    """A Unix time as UTC ISO 8601 (None for none)."""
    if at in (None, ""):
        return None
    from datetime import UTC, datetime

    return datetime.fromtimestamp(float(at), tz=UTC).isoformat(timespec="milliseconds")


def reconciled_sentence(rec: Mapping[str, Any]) -> str:
    """What failback.yml counted in the old timeline, in one line."""
    if rec["status"] == "following":
        return (f"{rec['region']} follows {rec['holder']} already: nothing left to reconcile "
                "(a failover's report is amended at the first failback)")
    if rec["status"] == "unknown":
        return (f"the loss of {rec['region']}'s old timeline could not be counted: "
                + ("; ".join(rec["problems"]) or "no node was read"))
    if rec["status"] == "partial":
        return (f"the loss of {rec['region']}'s old timeline is known only in part - at least "
                f"{rec['transactions']} transactions, {rec['bytes']} bytes of WAL past the fork "
                f"at {rec['fork_lsn']} - because " + "; ".join(rec["problems"])
                + ": no report is amended")
    if rec["status"] == "nothing":
        return (f"data lost (reconciled at failback of {rec['region']}, {rec['reconciled_at']}): "
                "none - the old primary's data ends where the new primary's timeline begins")
    tables = ", ".join(f"{name} {n}" for name, n in rec["by_table"].items()) or "no table"
    return (f"data lost (reconciled at failback of {rec['region']}, {rec['reconciled_at']}): "
            f"{rec['transactions']} transactions committed on {rec['node']} after the fork at "
            f"{rec['fork_lsn']}, from {rec['first_commit']} to {rec['last_commit']}, "
            f"{rec['bytes']} bytes of WAL ({tables})"
            + (f"; {rec['prepared_undecided']} prepared transactions (two-phase commit) neither "
               "committed nor rolled back there, gone with it"
               if rec.get("prepared_undecided") else "")
            + f"; its WAL is kept in {rec['node']}:{rec['kept']}")


def loss_sentence(report: Mapping[str, Any]) -> str:
    """What the report knows of the data lost, in one line."""
    rec = report.get("reconciled") or {}
    if rec.get("status") in ("counted", "nothing"):
        return reconciled_sentence(rec)
    lost, window = report.get("data_lost_bytes"), report.get("data_loss_window")
    if window:
        least = window.get("at_least_bytes")
        return ("data lost: unknown - the old primary could not be read; it may have "
                f"acknowledged writes from {window['from'] or 'an unknown time'} (the last "
                f"transaction the new primary replayed) until {window['to']} (its fence "
                f"deadline): at most {window['seconds'] if window['seconds'] is not None else '?'}"
                " s of writes"
                + (f", at least {least} bytes of WAL" if least else "")
                + "; only the old primary's data directory holds them, until failback.yml "
                "rewinds or re-clones it")
    return "data lost: " + ("unknown" if lost is None else f"{lost} bytes of WAL") + (
        f" ({report['data_lost_source']})" if report.get("data_lost_source") else "")


def baton_failover_summary(report: Mapping[str, Any]) -> list[str]:
    """The report as a few lines for a human."""
    rto = report["rto_seconds"]
    lines = [
        f"{report['kind']} to {report['target']} (from {report['old'] or 'nobody'}): "
        + ("nothing to do, it already held the baton" if report["already"] and
           not report["actions_taken"] else f"epoch {report['epoch']}"),
        f"RTO: {rto if rto is not None else 'unknown'} s (start of the run to the first write "
        "accepted through the failover name)",
        loss_sentence(report),
        pause_sentence(report.get("write_pause")),
        "changed: " + (", ".join(report["actions_taken"]) or "nothing"),
    ]
    if report["not_following"]:
        lines.append(f"not following {report['target']} (run failback.yml once they are "
                     f"back): {', '.join(report['not_following'])}")
    dns_primary = report.get("dns_primary") or {}
    if dns_primary.get("away"):
        lines.append(f"DNS: the zone's primary is {dns_primary['host']} for now "
                     f"({dns_primary.get('why') or 'its home did not answer'}); the global site "
                     "has not seen these updates: run failback.yml once it answers, which moves "
                     "the primary home")
    lines += [f"  +{t['at']:>7.1f} s  {t['step']}" for t in report["timeline"]]
    return lines


def pause_sentence(pause: Mapping[str, Any] | None) -> str:
    """What clients saw, in one line."""
    if not pause:
        return "clients' writes were not held (nothing moved)"
    if pause.get("at_least_seconds") is not None:
        return (f"clients could not write for about {pause['at_least_seconds']:.1f} to "
                f"{pause['seconds']:.1f} s: {pause['basis']}")
    return f"clients could not write for {pause['seconds']:.1f} s at most: {pause['basis']}"


def baton_failover_metrics(report: Mapping[str, Any], now: float) -> str:
    """The run as Prometheus metrics (the contract in roles/prometheus/README.md)."""
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    labels = ["target_region", "source_region", "epoch"]
    values = [report["target"], report["old"] or "", str(report["epoch"] or "")]
    Gauge("baton_failover_last_timestamp_seconds", "When the baton last moved", labels,
          registry=registry).labels(*values).set(now)
    Gauge("baton_failover_last_duration_seconds", "RTO of the last move: start of the run to "
          "the first accepted write", registry=registry).set(report["rto_seconds"] or 0)
    Gauge("baton_failover_last_write_pause_seconds", "How long clients could not write in the "
          "last move (PgBouncer's hold, or the fault to the first write)",
          registry=registry).set((report.get("write_pause") or {}).get("seconds") or 0)
    window = report.get("data_loss_window") or {}
    Gauge("baton_failover_last_data_loss_bytes", "WAL bytes the last move lost (a lower bound "
          "when baton_failover_last_data_loss_known is 0)", registry=registry).set(
        report["data_lost_bytes"] if report.get("data_lost_bytes") is not None
        else window.get("at_least_bytes") or 0)
    Gauge("baton_failover_last_data_loss_known", "1 when the last move's data loss is known, 0 "
          "when the old primary could not be read", registry=registry).set(
        0 if window else 1)
    Gauge("baton_failover_last_data_loss_window_seconds", "How long the old primary may have "
          "acknowledged writes the new one never received (0 when the loss is known)",
          registry=registry).set(window.get("seconds") or 0)
    Gauge("baton_epoch", "The baton's epoch on the witness", registry=registry).set(
        report["epoch"] or 0)
    return generate_latest(registry).decode()


def baton_last_known_position(report_text: str | None, holder_region: str | None,
                              max_age: float, now: float) -> str:
    """The primary's WAL position from the last health report (its JSON text), for the
    data-loss estimate of a failover whose primary no longer answers - '' unless that report
    saw holder_region as the one writable region and is at most max_age seconds old: an older
    one, or one from before the baton last moved, says nothing of the writes since (pure)."""
    import json
    from datetime import UTC, datetime

    try:
        report = json.loads(report_text or "")
        seen = report["global"]
        at = datetime.fromisoformat(str(report["assessed_at"]))
    except (ValueError, KeyError, TypeError):
        return ""
    at = at if at.tzinfo else at.replace(tzinfo=UTC)  # health.yml writes UTC without an offset
    if seen.get("baton_holder") != holder_region or seen.get("primary_position") is None:
        return ""
    if not 0 <= float(now) - at.timestamp() <= float(max_age):
        return ""
    return baton_lsn(seen["primary_position"])


def baton_endpoints_first(endpoints: list[str], addresses: list[str]) -> list[str]:
    """The witness members on these addresses first, the others after, each in their order.

    The witness client tries the members in order and moves on after a timeout; a run that
    moves the baton puts the target region's member first, so that a cut-off old region's
    member costs no timeout per witness call."""
    wanted = set(addresses or [])
    first = [e for e in endpoints if e.rsplit(":", 1)[0] in wanted]
    return first + [e for e in endpoints if e not in first]


def baton_bouncers_to_release(assessment: Mapping[str, Any], hosts: list[str],
                              target_addresses: list[str], held: list[str]) -> list[str]:
    """The hosts whose PgBouncer the run must point at the target and let through (pure): the
    ones it held, and every other whose `app` the assessment did not see pointing at the
    target, unpaused and enabled (or did not see at all). A re-run that finds every PgBouncer
    done skips them all."""
    wanted = ",".join(target_addresses)
    seen: dict[str, Any] = {}
    for region in (assessment.get("regions") or {}).values():
        seen.update(((region or {}).get("facts") or {}).get("pgbouncer") or {})
    done = {host for host, probe in seen.items()
            if probe.get("ok") and probe.get("host") == wanted and not probe.get("paused")
            and not probe.get("disabled")}
    return [h for h in hosts if h in held or h not in done]


def baton_redis_in_place(chain: list[dict[str, Any]], assessment: Mapping[str, Any],
                         regions: Mapping[str, list[str]], target: str,
                         hostvars: Hostvars, settings: Mapping[str, Any] | None = None) -> bool:
    """Whether the assessment saw Redis exactly as a move to `target` leaves it (pure): every
    server of `chain` (baton_redis_chain) answering in its role - the master unfenced, each
    replica following its source with its link up, the target's servers unfenced - the
    target's Sentinels watching the master with the monitor settings given (quorum,
    down-after-milliseconds, failover-timeout, parallel-syncs) and their quorum reachable, the
    other regions' watching nothing. Then a re-run need not touch Redis or Sentinel (replica
    priorities are not read, and are left to site.yml)."""
    redis: dict[str, Any] = {}
    sentinels: dict[str, Any] = {}
    for region in (assessment.get("regions") or {}).values():
        facts = (region or {}).get("facts") or {}
        redis.update({p.get("address"): p for p in (facts.get("redis") or {}).values()
                      if isinstance(p, dict)})
        sentinels.update(facts.get("sentinel") or {})
    master = ""
    for server in chain:
        at = f"{server['address']}:{server['port']}"
        probe = redis.get(at) or {}
        if not probe.get("ok") or (server["unfence"] and probe.get("fenced")):
            return False
        if not server["replicaof"]:
            master = at
            if probe.get("role") != "master" or probe.get("fenced"):
                return False
        elif (probe.get("role") != "slave" or probe.get("master") != server["replicaof"]
              or probe.get("link") != "up"):
            return False
    addresses = {f"{hostvars[h]['baton_address']}:{hostvars[h].get('redis_port', 6379)}": h
                 for hosts in regions.values() for h in hosts}
    for server in chain:
        host = addresses.get(f"{server['address']}:{server['port']}")
        seen = sentinels.get(host) or {}
        ours = host in regions.get(target, [])
        if not seen.get("ok") or seen.get("watching") != (master if ours else None):
            return False
        if ours and (seen.get("quorum") is not True or any(
                str((seen.get("settings") or {}).get(k)) != str(v)
                for k, v in (settings or {}).items())):
            return False
    return bool(master)


def baton_hosts_not_done(hosts: list[str], hostvars: Mapping[str, Any], name: str) -> list[str]:
    """The hosts whose task result registered as `name` is missing, skipped, failed or
    unreachable (a play over hosts, checked by the next controller play)."""
    out = []
    for host in hosts:
        result = (hostvars.get(host) or {}).get(name)
        if not isinstance(result, Mapping) or result.get("failed") or result.get("unreachable") \
                or result.get("skipped"):
            out.append(host)
    return out


def baton_dns_in_place(assessment: Mapping[str, Any], dns_primary_record: Any, home: str,
                       servers: list[str], expected: Mapping[str, list[str]]) -> bool:
    """Whether DNS is as the move leaves it, so that a re-run need not touch it: the zone's
    primary is at home (no record of a move on the witness, and its server `home` answered),
    every server of `servers` answered each name of `expected` with exactly those addresses,
    and all of them serve the same serial. Anything unread or unsure says no (pure)."""
    dns = assessment.get("dns") if isinstance(assessment, Mapping) else None
    if dns_primary_record or not isinstance(dns, Mapping) or not servers:
        return False
    serials = dns.get("serials") or {}
    if home not in serials or any(server not in serials for server in servers):
        return False
    if not all(isinstance(serials[server], int) for server in [home, *servers]):
        return False
    if len({serials[server] for server in [home, *servers]}) != 1:
        return False
    names = dns.get("names") or {}
    for name, values in expected.items():
        answers = names.get(name) or {}
        for server in servers:
            found = (answers.get(server) or {}).get("values")
            if found is None or sorted(found) != sorted(values):
                return False
    return True


def baton_pgbouncer_result(result: Any) -> dict[str, Any]:
    """What baton-pgbouncer (run with `raw`) printed as its last JSON line, or the registered
    result itself when it is a module's; {} when neither (unreachable, not run)."""
    if not isinstance(result, Mapping):
        return {}
    if "stdout" not in result:
        return dict(result)
    for line in reversed(str(result.get("stdout") or "").splitlines()):
        if line.startswith("{"):
            try:
                found = json.loads(line)
            except ValueError:
                return {}
            return found if isinstance(found, dict) else {}
    return {}


def baton_pgbouncer_holds(hosts: list[str], hostvars: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Per host the run held, when its PgBouncer got PAUSE and when RESUME (the results the
    hold and release plays registered as __fo_paused and __fo_bouncer); hosts missing either
    are left out."""
    out = []
    for host in hosts:
        found = hostvars.get(host) or {}
        paused = baton_pgbouncer_result(found.get("__fo_paused"))
        released = baton_pgbouncer_result(found.get("__fo_bouncer"))
        if paused.get("paused_at") and released.get("resumed_at"):
            out.append({"host": host, "paused_at": paused["paused_at"],
                        "resumed_at": released["resumed_at"]})
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "baton_bouncers_to_release": baton_bouncers_to_release,
            "baton_regions_to_repoint": baton_regions_to_repoint,
            "baton_endpoints_first": baton_endpoints_first,
            "baton_hosts_not_done": baton_hosts_not_done,
            "baton_pgbouncer_holds": baton_pgbouncer_holds,
            "baton_pgbouncer_result": baton_pgbouncer_result,
            "baton_dns_in_place": baton_dns_in_place,
            "baton_redis_in_place": baton_redis_in_place,
            "baton_failover_plan": baton_failover_plan,
            "baton_lsn": baton_lsn,
            "baton_lsn_int": baton_lsn_int,
            "baton_redis_chain": baton_redis_chain,
            "baton_reconciled_sentence": reconciled_sentence,
            "baton_last_known_position": baton_last_known_position,
            "baton_failover_report": baton_failover_report,
            "baton_failover_summary": baton_failover_summary,
            "baton_failover_metrics": baton_failover_metrics,
        }

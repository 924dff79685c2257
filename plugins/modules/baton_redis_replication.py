#!/usr/bin/python
"""Ansible module: make Redis servers masters or replicas of a given master, at run time."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_redis_replication
short_description: Promote a Redis server or chain it to a master, and set its replica priority
description:
  - Runs on the controller (redis-py). For each server of O(servers), reads C(ROLE) and
    C(CONFIG GET replica-priority) first, then sends only what is missing - C(REPLICAOF NO ONE),
    C(REPLICAOF host port), C(CONFIG SET replica-priority) - and C(CONFIG REWRITE) so a restart
    keeps it. A re-run changes nothing.
  - Servers are handled in the order given, so put the new master first.
  - A server marked C(optional) that does not answer (a region that is down or cut off) is
    skipped and listed in RV(skipped); any other that does not answer fails the task.
  - A server marked C(unfence) (the holder region's) that a fence left refusing writes
    (C(min-replicas-to-write) 1000000, set by Baton's agent or its redis-gate) gets
    O(min_replicas_to_write) back.
  - With O(wait_timeout), waits until the master accepts a write (a key under
    C(baton:probe:), expiring in a minute) and every replica's link to its master is up.
  - A planned move (O(handover_from), the servers outside the target region) loses no
    acknowledged write and gives no client C(READONLY); with O(handover_required) it fails
    rather than move without a handover. The old master - the one the new master (the first
    server) streams from - has its writes paused (C(CLIENT PAUSE WRITE) for O(pause_ms)); the
    new master waits until it has the old master's replication offset and is promoted. The
    old master's own entry is returned in RV(deferred), not applied - it stays a paused master,
    so its clients wait instead of failing - until O(release_paused). It carries the key
    C(__baton__:handover) for as long as the pause, and its fence agent leaves it alone
    meanwhile; were the run to die in between, the agent fences it once the key has expired.
    Another master outside the target that takes writes stops the handover; a fenced one does
    not count.
  - A re-run that finds the new master promoted already and an old one still a master (a run
    interrupted in between) pauses and defers that one the same way, and counts the writes it
    took after the promotion (RV(handover) C(lost_bytes)).
  - O(release_paused) (once DNS names the new master) closes the normal client connections of
    those servers, applies O(servers) (the deferred entries, which follow the new master, their
    fence lifted), closes the connections again and ends the pause. Writes held by the pause
    never run there; the clients reconnect, through DNS, to the new master.
  - Check mode support.
options:
  servers:
    description:
      - Each C({address, port, replicaof, priority, optional}); C(replicaof) is C(host:port)
        of the master to follow, or empty for a master; C(priority) is the
        C(replica-priority) (0 means Sentinel never promotes it).
    type: list
    elements: dict
    required: true
  password:
    description: Redis's C(requirepass) (also its C(masterauth)).
    type: str
    required: true
  timeout:
    description: Seconds each command may take.
    type: float
    default: 3
  min_replicas_to_write:
    description: The value that replaces a fence on a server marked C(unfence).
    type: int
    default: 0
  wait_timeout:
    description: Seconds to wait for the master's write and the replicas' links (0, no wait).
    type: float
    default: 0
  handover_from:
    description: C(host:port) of the servers a planned move takes writes away from (the
      one among them that is a master).
    type: list
    elements: str
  handover_timeout:
    description: Seconds the new master may take to reach the old master's offset; past it
      the pause is lifted, nothing is changed and the task fails.
    type: float
    default: 10
  pause_ms:
    description: How long the old master's writes stay paused at most (milliseconds).
    type: int
    default: 60000
  release_paused:
    description: C(host:port) of servers whose normal clients are disconnected and whose
      pause ends (the old master, once DNS names the new one).
    type: list
    elements: str
    default: []
extends_documentation_fragment: [baton_redis_tls]
author: Baton
"""

EXAMPLES = r"""
- name: us-west's first node takes writes, the other regions follow it
  baton_redis_replication:
    servers:
      - {address: 10.231.2.11, replicaof: "", priority: 100}
      - {address: 10.231.3.11, replicaof: "10.231.2.11:6379", priority: 0}
      - {address: 10.231.1.11, replicaof: "10.231.2.11:6379", priority: 0, optional: true}
    password: "{{ redis_password }}"
    tls_ca_file: "{{ baton_pki_dir }}/ca.crt"
  delegate_to: localhost
"""

RETURN = r"""
servers:
  description: Per server address, its role before and after and the commands sent.
  returned: always
  type: dict
  sample: {"10.231.2.11:6379": {before: "replica of 10.231.1.11:6379", after: master,
           commands: [REPLICAOF NO ONE, CONFIG SET replica-priority 100, CONFIG REWRITE]}}
skipped:
  description: Optional servers that did not answer.
  returned: always
  type: list
  elements: str
handover:
  description: Whether a planned handover paused the old master and the new one caught up
    (C(done), C(from), C(offset), C(caught_up_seconds); C(lost_bytes) when a re-run found both
    masters), or why none was made (C(why)).
  returned: always
  type: dict
deferred:
  description: The old master's entry of O(servers), left for the O(release_paused) call.
  returned: always
  type: list
  elements: dict
released:
  description: Per server given in O(release_paused), how many client connections were closed.
  returned: when O(release_paused) is given
  type: dict
"""

import time  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_redis import (  # noqa: E402
    HANDOVER_KEY,
    REDIS_FENCE,
    RedisProblem,
    client,
    parse_role,
    plan_server,
    use_tls,
)


def settled(entries: list[dict], password: str, timeout: float) -> list[str]:
    """What is not yet as wanted: the master refusing a write, a replica whose link is down or
    that follows another master. Empty when all is done."""
    waiting = []
    for entry in entries:
        address = f"{entry['address']}:{entry.get('port') or 6379}"
        try:
            redis = client(str(entry["address"]), int(entry.get("port") or 6379), password,
                           timeout, once=True)
            if not entry.get("replicaof"):
                redis.set(f"baton:probe:{entry['address']}", str(time.time()), px=60000)
                continue
            role = parse_role(redis.execute_command("ROLE"))
        except Exception as exc:  # refused (NOREPLICAS, READONLY) or silent: not yet
            waiting.append(f"{address}: {type(exc).__name__}: {exc}")
            continue
        if role["role"] != "replica" or role["master"] != entry["replicaof"] \
                or role["link"] != "up":
            waiting.append(f"{address}: {describe(role)}, link {role.get('link')}")
    return waiting


def hold_writes(old, new_at: str, pause_ms: int, fenced: bool) -> None:
    """Pauses the old master's writes for pause_ms. The key HANDOVER_KEY, expiring with the
    pause, tells its fence agent that it is paused on purpose (the agent fences a master
    outside the holder region otherwise). Not fenced here: Redis refuses a write with
    NOREPLICAS before it would pause it, so the clients would fail instead of waiting. The
    key is written only when missing (a write waits behind a pause an interrupted run left,
    and that run's key is still there) and the server not fenced (it would refuse it)."""
    if not fenced and old.get(HANDOVER_KEY) is None:
        old.set(HANDOVER_KEY, new_at, px=pause_ms)
    old.execute_command("CLIENT", "PAUSE", str(pause_ms), "WRITE")


def masters_among(candidates: list[str], skip: str, p: dict) -> list[tuple[str, Any, bool]]:
    """(address, client, fenced) of every candidate that answers as a master (skip excluded);
    a server that does not answer holds no write."""
    masters = []
    for at in candidates:
        if at == skip:
            continue
        host, port = at.rsplit(":", 1)
        try:
            server = client(host, int(port), p["password"], p["timeout"], once=True)
            if parse_role(server.execute_command("ROLE"))["role"] != "master":
                continue
            fence = server.config_get("min-replicas-to-write").get("min-replicas-to-write")
            masters.append((at, server, str(fence) == str(REDIS_FENCE)))
        except Exception:
            continue
    return masters


def hand_over(candidates: list[str], new: dict, p: dict) -> dict:
    """Pauses the old master - the one the new master streams from, among candidates (the
    servers outside the target region) - and waits until the new master has its offset.
    Returns what was done, or why nothing was and whether a handover was still needed; raises
    RedisProblem (the pause lifted) when it cannot.

    A master outside the target that is fenced already takes no write: it is not counted as
    a second writer (a region back from a loss, not yet failed back). Another one that takes
    writes is: nothing is done.

    A re-run after a run was interrupted between the promotions of PostgreSQL and Redis, or
    in the middle of Redis's handover, may find the new master promoted already and an old
    one still a master: that one is paused too, and deferred like a handed-over
    master (its clients wait for DNS instead of meeting READONLY); the writes it took after
    the new master's promotion, which are lost, are counted (RV handover.lost_bytes)."""
    new_at = f"{new['address']}:{new.get('port') or 6379}"
    successor = client(str(new["address"]), int(new.get("port") or 6379), p["password"],
                       p["timeout"], once=True)
    try:
        new_role = parse_role(successor.execute_command("ROLE"))
    except Exception as exc:
        return {"done": False, "needed": True,
                "why": f"{new_at} not read ({type(exc).__name__}: {exc})"}
    masters = masters_among(candidates, new_at, p)
    writable = [m for m in masters if not m[2]]
    if new_role["role"] == "master":
        if len(writable) > 1:
            return {"done": False, "needed": True,
                    "why": f"{new_at} and {', '.join(at for at, _s, _f in writable)} are all "
                           "masters taking writes"}
        stale = writable or (masters if len(masters) == 1 else [])
        if not stale:
            return {"done": False, "needed": False, "why": f"{new_at} is a master already"}
        old_at, old, fenced = stale[0]
        hold_writes(old, new_at, p["pause_ms"], fenced)
        mine, theirs = successor.info("replication"), old.info("replication")
        lost = 0
        if theirs.get("master_replid") == mine.get("master_replid2"):
            lost = max(0, int(theirs.get("master_repl_offset") or 0)
                       - int(mine.get("second_repl_offset") or 0))
        return {"done": True, "from": old_at, "to": new_at, "offset": None,
                "caught_up_seconds": 0.0, "lost_bytes": lost,
                "why": f"{new_at} was a master already and {old_at} still one: it is held "
                       f"until DNS names the new master (it took {lost} bytes of writes after "
                       "the promotion, lost)"}
    old_at = new_role.get("master") or ""
    old, fenced = next(((s, f) for at, s, f in masters if at == old_at), (None, False))
    if old is None:
        return {"done": False, "needed": True,
                "why": f"{new_at} follows {old_at or 'nothing'}, not a master among "
                       f"{', '.join(candidates)}"}
    others = [at for at, _s, _f in writable if at != old_at]
    if others:
        return {"done": False, "needed": True,
                "why": f"{', '.join(others)} take writes beside {old_at}"}
    same_stream = (old.info("replication").get("master_replid")
                   == successor.info("replication").get("master_replid"))
    if new_role["link"] != "up" or not same_stream:
        return {"done": False, "needed": True,
                "why": f"{new_at} does not stream from {old_at} (link {new_role['link']})"}
    started = time.monotonic()
    hold_writes(old, new_at, p["pause_ms"], fenced)
    try:
        wanted = int(old.info("replication")["master_repl_offset"])
        deadline = started + p["handover_timeout"]
        while True:
            reached = int(parse_role(successor.execute_command("ROLE"))["offset"] or 0)
            if reached >= wanted:
                break
            if time.monotonic() > deadline:
                raise RedisProblem(f"{new_at} reached offset {reached} of {old_at}'s {wanted} "
                                   f"within {p['handover_timeout']:g} s: nothing was changed "
                                   "and writes go on there; check the link, then re-run")
            time.sleep(0.05)
    except Exception:
        old.execute_command("CLIENT", "UNPAUSE")
        raise
    return {"done": True, "from": old_at, "to": new_at, "offset": wanted,
            "caught_up_seconds": round(time.monotonic() - started, 3)}


def close_clients(addresses: list[str], p: dict, done: dict) -> None:
    """Closes the normal client connections of each server (counted in done)."""
    for at in addresses:
        host, port = at.rsplit(":", 1)
        redis = client(host, int(port), p["password"], p["timeout"], once=True)
        killed = redis.execute_command("CLIENT", "KILL", "TYPE", "normal", "SKIPME", "yes")
        done.setdefault(at, {"clients_closed": 0})["clients_closed"] += int(killed or 0)


def unpause(addresses: list[str], p: dict) -> None:
    for at in addresses:
        host, port = at.rsplit(":", 1)
        client(host, int(port), p["password"], p["timeout"], once=True).execute_command(
            "CLIENT", "UNPAUSE")


def describe(role: dict) -> str:
    return "master" if role["role"] == "master" else f"replica of {role['master']}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "servers": {"type": "list", "elements": "dict", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "float", "default": 3.0},
            "tls_ca_file": {"type": "str", "default": ""},
            "min_replicas_to_write": {"type": "int", "default": 0},
            "wait_timeout": {"type": "float", "default": 0.0},
            "handover_from": {"type": "list", "elements": "str", "default": []},
            "handover_required": {"type": "bool", "default": False},
            "handover_timeout": {"type": "float", "default": 10.0},
            "pause_ms": {"type": "int", "default": 60000},
            "release_paused": {"type": "list", "elements": "str", "default": []},
        },
        supports_check_mode=True,
    )
    p = module.params
    use_tls(p["tls_ca_file"])
    out, skipped, changed, released, deferred = {}, [], False, {}, []
    if p["release_paused"] and not module.check_mode:
        try:
            close_clients(p["release_paused"], p, released)
        except Exception as exc:
            module.fail_json(msg=f"could not close the clients of "
                                 f"{', '.join(p['release_paused'])} ({exc}): re-run; their pause "
                                 f"ends by itself after {p['pause_ms']} ms")
    handover = {"done": False, "needed": False, "why": "not asked (not a planned move)"}
    masters = [e for e in p["servers"] if not e.get("replicaof")]
    if p["handover_from"] and masters and not module.check_mode:
        try:
            handover = hand_over(p["handover_from"], masters[0], p)
        except RedisProblem as exc:
            module.fail_json(msg=str(exc), handover={"done": False})
        except Exception as exc:
            module.fail_json(msg=f"the handover from {', '.join(p['handover_from'])} failed "
                                 f"({type(exc).__name__}: {exc}): re-run", handover={"done": False})
        if p["handover_required"] and not handover["done"] and handover["needed"]:
            module.fail_json(msg=f"no Redis handover could be made ({handover['why']}): no "
                                 "Redis server was re-pointed or promoted; a planned move does "
                                 "not take the risk of losing writes - fix the replication and "
                                 "re-run, or use failover.yml", handover=handover)
    for entry in p["servers"]:
        at = f"{entry.get('address')}:{entry.get('port') or 6379}"
        if handover["done"] and at == handover["from"]:
            deferred.append(entry)  # stays a paused, fenced master until the release
            continue
        if at in p["release_paused"]:
            entry = {**entry, "unfence": True}  # a replica from now on: its handover fence goes
        if not entry.get("address"):
            module.fail_json(msg=f"servers: {entry} has no address: give each server "
                                 "{address, port, replicaof, priority}")
        address = f"{entry['address']}:{entry.get('port') or 6379}"
        want_master = str(entry.get("replicaof") or "")
        want_priority = entry.get("priority")
        try:
            redis = client(str(entry["address"]), int(entry.get("port") or 6379), p["password"],
                           p["timeout"], once=True)
            role = parse_role(redis.execute_command("ROLE"))
            config = redis.config_get("replica-priority")
            priority = config.get("replica-priority")
            fence = redis.config_get("min-replicas-to-write").get("min-replicas-to-write")
        except RedisProblem as exc:
            module.fail_json(msg=str(exc))
        except Exception as exc:
            if str(entry.get("optional", False)).lower() in ("true", "yes", "1"):
                skipped.append(address)
                continue
            module.fail_json(msg=f"Redis at {address} did not answer ({type(exc).__name__}: "
                                 f"{exc}): check that it runs and redis_password, then re-run",
                             servers=out, skipped=skipped)
        unfence = str(entry.get("unfence", False)).lower() in ("true", "yes", "1")
        commands = plan_server(role, priority, want_master, want_priority, fence,
                               p["min_replicas_to_write"] if unfence else None)
        out[address] = {"before": describe(role), "commands": [" ".join(c) for c in commands]}
        if commands and not module.check_mode:
            for command in commands:
                try:
                    redis.execute_command(*command)
                except Exception as exc:
                    module.fail_json(msg=f"Redis at {address} refused '{' '.join(command)}' "
                                         f"({exc}): re-run once fixed", servers=out,
                                     skipped=skipped)
            role = parse_role(redis.execute_command("ROLE"))
        out[address]["after"] = (("master" if not want_master else f"replica of {want_master}")
                                 if module.check_mode else describe(role))
        changed = changed or bool(commands)
    if p["wait_timeout"] > 0 and not module.check_mode:
        answering = [e for e in p["servers"]
                     if f"{e['address']}:{e.get('port') or 6379}" not in skipped]
        deadline = time.monotonic() + p["wait_timeout"]
        while waiting := settled(answering, p["password"], p["timeout"]):
            if time.monotonic() > deadline:
                module.fail_json(msg=f"Redis did not settle within {p['wait_timeout']:g} s: "
                                     f"{'; '.join(waiting)}: check those servers, then re-run",
                                 servers=out, skipped=skipped, changed=changed,
                                 handover=handover)
            time.sleep(1)
    if p["release_paused"] and not module.check_mode:
        try:
            close_clients(p["release_paused"], p, released)
            unpause(p["release_paused"], p)
        except Exception as exc:
            module.fail_json(msg=f"could not end the pause of {', '.join(p['release_paused'])} "
                                 f"({exc}): re-run; it ends by itself after {p['pause_ms']} ms",
                             servers=out)
        changed = True
    module.exit_json(changed=changed, servers=out, skipped=skipped, handover=handover,
                     deferred=deferred, **({"released": released} if p["release_paused"]
                                           else {}))


if __name__ == "__main__":
    main()

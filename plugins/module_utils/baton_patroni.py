"""Patroni REST API reads, and the decision of which region holds the primary."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def get_cluster(address: str, port: int, timeout: float) -> dict[str, Any] | None:
    """GET /cluster from one member's REST API; None when it does not answer."""
    url = f"http://{address}:{port}/cluster"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
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

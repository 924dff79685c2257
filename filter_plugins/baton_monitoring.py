"""What each Prometheus server scrapes, computed from the inventory and the exporters' facts."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

Hostvars = Mapping[str, Any]


def baton_prometheus_servers(regions: Mapping[str, list[str]]) -> dict[str, str]:
    """Region -> the host that runs its regional Prometheus (the region's first host)."""
    return {region: hosts[0] for region, hosts in regions.items() if hosts}


def baton_scrape_targets(hosts: list[str], hostvars: Hostvars) -> dict[str, list[dict[str, Any]]]:
    """Job -> [{host, target, site}] for the hosts given, from each host's `exporters_targets`.

    A host without that fact (the exporters role has not run on it in this play, or it was
    unreachable) is left out: Prometheus only scrapes what is known to be there.
    """
    jobs: dict[str, list[dict[str, Any]]] = {}
    for host in hosts:
        hv = hostvars[host]
        for target in hv.get("exporters_targets") or []:
            jobs.setdefault(str(target["job"]), []).append({
                "host": host,
                "target": f"{hv['baton_address']}:{target['port']}",
                "site": str(hv.get("baton_site", "")),
            })
    return {job: jobs[job] for job in sorted(jobs)}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "baton_prometheus_servers": baton_prometheus_servers,
            "baton_scrape_targets": baton_scrape_targets,
        }

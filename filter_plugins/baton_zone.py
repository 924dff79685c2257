"""The failover zone's records, computed from the inventory and the live primary regions."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

Groups = Mapping[str, list[str]]
Hostvars = Mapping[str, Any]

_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def baton_dns_label(name: str) -> str:
    """A host or region name as one DNS label (lower case, '_' -> '-'), or a clear error."""
    label = str(name).lower().replace("_", "-")
    if not _LABEL.match(label):
        raise AnsibleFilterError(
            f"'{name}' cannot be a DNS label (letters, digits and '-' only, at most 63): "
            "rename the host or region in the inventory")
    return label


def _addresses(hosts: list[str], hostvars: Hostvars) -> list[str]:
    return [str(hostvars[h]["baton_address"]) for h in hosts]


def baton_dns_records(regions: Mapping[str, list[str]], hostvars: Hostvars, zone: str,
                      name_servers: list[str], database_region: str,
                      redis_regions: Mapping[str, list[str]], redis_region: str
                      ) -> list[dict[str, Any]]:
    """Every record of the zone, each {name, type, values, failover}, names relative to it
    (NS values fully qualified).

    `failover: true` marks the records that a failover moves (the read-write database
    endpoint `db` and the writable Redis `redis`): the deploy writes them only when it creates
    the zone. The others (name servers, per-region read-only endpoints) follow the inventory.
    """
    if database_region not in regions:
        raise AnsibleFilterError(f"the database's primary region '{database_region}' has no "
                                 "hosts in the inventory: check baton_initial_primary_region")
    if redis_region not in redis_regions:
        raise AnsibleFilterError(f"the writable Redis region '{redis_region}' has no Redis "
                                 "hosts in the inventory")
    if not name_servers:
        raise AnsibleFilterError("the zone has no name server: add a host to group 'global'")
    ns_names = [f"ns-{baton_dns_label(h)}" for h in name_servers]
    records: list[dict[str, Any]] = [
        {"name": "@", "type": "NS", "values": sorted(f"{n}.{zone}." for n in ns_names),
         "failover": False},
    ]
    for host, name in zip(name_servers, ns_names, strict=True):
        records.append({"name": name, "type": "A", "values": _addresses([host], hostvars),
                        "failover": False})
    for region, hosts in regions.items():
        records.append({"name": f"db-ro.{baton_dns_label(region)}", "type": "A",
                        "values": sorted(_addresses(hosts, hostvars)), "failover": False})
    records.append({"name": "db", "type": "A",
                    "values": sorted(_addresses(regions[database_region], hostvars)),
                    "failover": True})
    records.append({"name": "redis", "type": "A",
                    "values": sorted(_addresses(redis_regions[redis_region], hostvars)),
                    "failover": True})
    return records


def baton_address_regions(groups: Groups, hostvars: Hostvars) -> dict[str, str]:
    """Address -> site name of every host: how a DNS answer is traced back to its region."""
    return {str(hostvars[h]["baton_address"]): str(hostvars[h]["baton_site"])
            for h in groups.get("all", []) if "baton_address" in hostvars[h]}


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "baton_dns_label": baton_dns_label,
            "baton_dns_records": baton_dns_records,
            "baton_address_regions": baton_address_regions,
        }

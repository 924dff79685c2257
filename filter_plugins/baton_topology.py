"""Topology questions that plays and templates keep asking of a Baton inventory."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

Groups = Mapping[str, list[str]]
Hostvars = Mapping[str, Any]


def baton_regions(groups: Groups, hostvars: Hostvars) -> dict[str, list[str]]:
    """Region name -> its hosts, in inventory order, from the hosts in group 'regions'."""
    regions: dict[str, list[str]] = {}
    for host in groups.get("regions", []):
        site = hostvars[host].get("baton_site")
        regions.setdefault(str(site), []).append(host)
    return regions


def baton_sites(groups: Groups, hostvars: Hostvars) -> dict[str, list[str]]:
    """Every site -> its hosts: the regions first, then the other sites by name.

    The order is stable from one run to the next. Ansible's groups['all'] is not: it walks
    the group tree through sets, so a host list rendered from it into a file would change
    between runs and break idempotence.
    """
    sites = baton_regions(groups, hostvars)
    others: dict[str, list[str]] = {}
    for host in groups.get("all", []):
        site = str(hostvars[host].get("baton_site"))
        if host not in sites.get(site, []):
            others.setdefault(site, []).append(host)
    for site in sorted(others):
        sites.setdefault(site, []).extend(sorted(others[site]))
    return sites


def baton_hosts(groups: Groups, hostvars: Hostvars) -> list[str]:
    """Every host of the inventory in baton_sites' stable order (use it, not groups['all'])."""
    return [host for hosts in baton_sites(groups, hostvars).values() for host in hosts]


def baton_host_addresses(groups: Groups, hostvars: Hostvars) -> dict[str, str]:
    """Every host of the regions and the global site -> its baton_address (the name servers,
    by inventory name)."""
    return {h: str(hostvars[h]["baton_address"]) for h in baton_hosts(groups, hostvars)}


def baton_inventory_problems(groups: Groups, hostvars: Hostvars,
                             initial_primary: str | None,
                             declared_regions: list[str] | None = None,
                             deploy: bool = True) -> list[str]:
    """Everything wrong with an inventory's shape, one sentence each; [] when sane.

    declared_regions is the inventory's baton_region_names (None: not declared, so a region
    whose group lost all its hosts cannot be told from one that never existed).
    deploy=False is the check of the controller playbooks that move the baton: what a move
    needs (every host placed and addressed, every region declared), not what only a deploy
    needs (etcd's odd member count, the initial primary, a declared region that has lost its
    hosts), so that a region whose destroyed VMs were taken out of the inventory never
    stops a failover.
    """
    problems: list[str] = []
    if not groups.get("regions"):  # nothing else can be judged without regions
        return ["the inventory has no group 'regions' with hosts: put each region's group "
                "(us_east, ...) under 'regions', and check that -i names the inventory"]
    addresses: dict[str, str] = {}
    for host in groups.get("all", []):
        hv = hostvars[host]
        if not hv.get("baton_site"):
            problems.append(f"host {host} has no baton_site: set it on the host's site group")
        address = hv.get("baton_address")
        if not address:
            problems.append(f"host {host} has no baton_address: set the address its services "
                            "use")
        elif str(address) in addresses:
            problems.append(f"hosts {addresses[str(address)]} and {host} share baton_address "
                            f"{address}: give each host its own")
        else:
            addresses[str(address)] = host
    in_regions = set(groups.get("regions", []))
    for host in groups.get("all", []):
        site = hostvars[host].get("baton_site")
        if site and site != "global" and host not in in_regions:
            problems.append(f"host {host} (baton_site {site}) is in no group under 'regions': "
                            f"put it in its region's group under 'regions', or in 'global' "
                            f"if it belongs to the global site")
    regions = baton_regions(groups, hostvars)
    if "global" in regions:
        problems.append("a host in 'regions' has baton_site 'global': the global site is not "
                        "a region")
    if declared_regions is not None:
        for region in declared_regions if deploy else ():
            if region not in regions:
                problems.append(f"region {region} (baton_region_names) has no database host: "
                                f"add its hosts to its group under 'regions', or remove it "
                                f"from baton_region_names")
        for region, hosts in regions.items():
            if region not in declared_regions and region != "global":
                problems.append(f"hosts {', '.join(hosts)} are in region {region}, which "
                                f"baton_region_names does not list: fix their baton_site or "
                                f"add {region} to baton_region_names")
    members: dict[str, str] = {}
    for host in groups.get("regions", []):
        name = str(hostvars[host].get("patroni_name", host))
        if name in members:
            problems.append(f"hosts {members[name]} and {host} both use Patroni member name "
                            f"{name}: member names must be unique across all regions")
        else:
            members[name] = host
    if not deploy:
        return problems
    for region, hosts in regions.items():
        if len(hosts) % 2 == 0 and not any("etcd_members" in hostvars[h] for h in hosts):
            problems.append(f"region {region} has {len(hosts)} database hosts: its etcd needs "
                            f"an odd number of members (1, 3 or 5); add or remove a host, or "
                            f"set etcd_members")
    if initial_primary is None or initial_primary not in regions:
        if declared_regions is not None and initial_primary in declared_regions:
            problems.append(f"baton_initial_primary_region {initial_primary} has no database "
                            f"host, so the standby regions would have no source: give it hosts "
                            f"or choose one of {', '.join(regions) or 'none'}")
        else:
            problems.append(f"baton_initial_primary_region is '{initial_primary}', which is "
                            f"not a region of this inventory: use one of "
                            f"{', '.join(regions) or 'none'}")
    return problems


def baton_region_addresses(regions: Mapping[str, list[str]],
                           hostvars: Hostvars) -> dict[str, list[str]]:
    """Region -> baton_address of each of its hosts (from baton_regions)."""
    return {region: [str(hostvars[h]["baton_address"]) for h in hosts]
            for region, hosts in regions.items()}


# The redis_sentinel role's default quorum (a unit test keeps the two equal): the preflight runs
# before any role, so it cannot read role defaults.
SENTINEL_QUORUM_DEFAULT = 2


def baton_redis_regions(groups: Groups, hostvars: Hostvars) -> dict[str, list[str]]:
    """Region -> its hosts that run Redis and Sentinel (redis_enabled, true unless set false)."""
    return {region: [h for h in hosts if _truthy(hostvars[h].get("redis_enabled", True))]
            for region, hosts in baton_regions(groups, hostvars).items()}


def baton_other_regions(groups: Groups, hostvars: Hostvars, region: str) -> list[str]:
    """Every region but `region`, in inventory order (e.g. the standbys of a primary)."""
    return [r for r in baton_regions(groups, hostvars) if r != region]


def baton_standby_source(groups: Groups, hostvars: Hostvars, region: str,
                         primary_region: str) -> str | None:
    """What a standby region's Patroni cluster replicates from: the primary region's nodes
    (their read-write endpoint), comma-separated as Patroni's standby_cluster.host takes
    them; None for the primary region itself."""
    if region == primary_region:
        return None
    regions = baton_regions(groups, hostvars)
    if primary_region not in regions:
        raise AnsibleFilterError(f"baton_standby_source: the primary region {primary_region} "
                                 "has no hosts in this inventory: check baton_primary_region")
    return ",".join(str(hostvars[h]["baton_address"]) for h in regions[primary_region])


def baton_assess_regions(groups: Groups, hostvars: Hostvars) -> dict[str, list[dict[str, Any]]]:
    """Region -> its nodes as baton_assess takes them: name, address, and whether it runs
    Redis and Sentinel."""
    redis = baton_redis_regions(groups, hostvars)
    return {region: [{"name": h, "address": str(hostvars[h]["baton_address"]),
                      "redis": h in redis.get(region, [])} for h in hosts]
            for region, hosts in baton_regions(groups, hostvars).items()}


def _truthy(value: Any) -> bool:
    return str(value).strip().lower() not in ("false", "no", "0", "off", "none", "")


def baton_redis_problems(groups: Groups, hostvars: Hostvars,
                         declared_regions: list[str] | None = None) -> list[str]:
    """Everything wrong with the inventory's Redis tier, one sentence each; [] when sane."""
    problems: list[str] = []
    regions = baton_redis_regions(groups, hostvars)
    for region in [*(declared_regions or []), *[r for r in regions
                                                 if r not in (declared_regions or [])]]:
        hosts = regions.get(region, [])
        if not hosts:
            problems.append(f"region {region} has no Redis host: set redis_enabled true on at "
                            f"least one of its hosts (Redis must run in every region so that "
                            f"it can take the baton)")
            continue
        first = hostvars[hosts[0]]
        if not str(first.get("redis_password") or ""):
            problems.append(f"region {region}: redis_password is not set: set it (from "
                            f"ansible-vault) for every Redis host")
        raw = first.get("redis_sentinel_quorum", SENTINEL_QUORUM_DEFAULT)
        try:
            quorum = int(raw)
        except (TypeError, ValueError):
            problems.append(f"region {region}: redis_sentinel_quorum is '{raw}', not a number")
            continue
        if not 1 <= quorum <= len(hosts):
            problems.append(f"region {region} has {len(hosts)} Sentinel(s) "
                            f"({', '.join(hosts)}) but redis_sentinel_quorum is {quorum}: set "
                            f"it from 1 to {len(hosts)} (a majority of them, "
                            f"{len(hosts) // 2 + 1}, is the usual choice)")
    return problems


def baton_redis_source(host: str, groups: Groups, hostvars: Hostvars, primary_region: str,
                       masters: Mapping[str, str | None] | None = None) -> str | None:
    """Whom a Redis host replicates from when its configuration is first written: 'address
    port', or None for the master itself.

    In the writable region every host follows the region's live master (masters[region], as
    host:port), or its first host when none runs yet. In another region the first host follows
    the writable region's master, and the others follow their region's first host.
    """
    regions = baton_redis_regions(groups, hostvars)
    region = str(hostvars[host].get("baton_site"))
    if region == primary_region:
        source = baton_redis_master(primary_region, groups, hostvars, masters)
        own = f"{hostvars[host]['baton_address']} {hostvars[host].get('redis_port', 6379)}"
        return None if source == own else source
    if host == regions[region][0]:
        return baton_redis_master(primary_region, groups, hostvars, masters)
    head = regions[region][0]
    return f"{hostvars[head]['baton_address']} {hostvars[head].get('redis_port', 6379)}"


def baton_redis_master(region: str, groups: Groups, hostvars: Hostvars,
                       masters: Mapping[str, str | None] | None = None) -> str:
    """'address port' of a region's Redis master: the live one (masters[region], host:port)
    when it runs, else the region's first Redis host."""
    live = (masters or {}).get(region)
    if live:
        return " ".join(str(live).rsplit(":", 1))
    first = baton_redis_regions(groups, hostvars)[region][0]
    return f"{hostvars[first]['baton_address']} {hostvars[first].get('redis_port', 6379)}"


def baton_redis_quote(value: Any) -> str:
    """A value as a double-quoted redis.conf / sentinel.conf string (spaces, quotes, #)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


# Every secret the stack is deployed with (the tiers' own variable names), and what it guards.
SECRETS = {
    "patroni_superuser_password": "PostgreSQL's superuser",
    "patroni_replication_password": "PostgreSQL's replication user",
    "patroni_rewind_password": "PostgreSQL's pg_rewind user",
    "patroni_restapi_password": "Patroni's REST API",
    "baton_app_password": "the application's PostgreSQL user",
    "baton_monitoring_password": "the monitoring user",
    "pgbouncer_admin_password": "PgBouncer's admin console",
    "redis_password": "Redis",
    "redis_sentinel_password": "Redis Sentinel",
    "monitoring_web_password": "Prometheus's and Alertmanager's web endpoints",
    "dns_tsig_secret": "the TSIG key of DNS updates",
    "baton_ca_passphrase": "the Baton CA's private key",
    "etcd_auth_secret": "the etcd users' passwords (derived from it)",
    "pgbackrest_cipher_pass": "the encryption of the backup repository",
}
# What gives away a value nobody chose: the lab's throwaway secrets say "not-secret", the
# example's placeholders "change-me".
PLACEHOLDER_MARKS = ("not-secret", "change-me", "changeme", "placeholder")
# The lab's throwaway TSIG secret (public in inventories/lab/group_vars/all/secrets.yml), which
# carries no mark.
LAB_TSIG_SECRET = "MHzh59+re/Fag8cOpYnR2fH1k1aoSfF73JyGyyqJGrY="


def _looks_unset(value: str) -> bool:
    text = value.lower()
    if any(mark in text for mark in PLACEHOLDER_MARKS):
        return True
    try:  # a TSIG secret is base64: the example's decodes to a placeholder
        decoded = base64.b64decode(value, validate=True).decode("utf-8", "ignore").lower()
    except (ValueError, binascii.Error):
        return False
    return any(mark in decoded for mark in PLACEHOLDER_MARKS)


def baton_secret_problems(settings: Mapping[str, Any],
                          lab_secrets_allowed: bool = False) -> list[str]:
    """One sentence per secret that is a placeholder or one of the lab's throwaway values,
    unless this is the lab's own inventory (baton_lab_secrets_allowed). Unset secrets are the
    tiers' own preflights' job."""
    if lab_secrets_allowed:
        return []
    problems = []
    for name, what in SECRETS.items():
        value = settings.get(name)
        if not isinstance(value, str) or not value:
            continue
        if value == LAB_TSIG_SECRET or _looks_unset(value):
            problems.append(
                f"{name} ({what}) is a placeholder or one of the lab's throwaway secrets: "
                f"generate a secret of your own and set it in the inventory's vault "
                f"(ansible-vault edit group_vars/all/vault.yml) before deploying.")
    return problems


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "baton_regions": baton_regions,
            "baton_host_addresses": baton_host_addresses,
            "baton_sites": baton_sites,
            "baton_hosts": baton_hosts,
            "baton_other_regions": baton_other_regions,
            "baton_standby_source": baton_standby_source,
            "baton_assess_regions": baton_assess_regions,
            "baton_region_addresses": baton_region_addresses,
            "baton_inventory_problems": baton_inventory_problems,
            "baton_secret_problems": baton_secret_problems,
            "baton_redis_regions": baton_redis_regions,
            "baton_redis_problems": baton_redis_problems,
            "baton_redis_source": baton_redis_source,
            "baton_redis_quote": baton_redis_quote,
            "baton_redis_master": baton_redis_master,
        }

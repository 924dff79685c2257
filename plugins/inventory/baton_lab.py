"""Inventory plugin for Baton's local lab: one podman container per host."""

from __future__ import annotations

import ipaddress
import os
from typing import Any

from ansible.errors import AnsibleParserError
from ansible.plugins.inventory import BaseInventoryPlugin

DOCUMENTATION = r"""
name: baton_lab
short_description: Baton's local podman lab (mini or full) as an inventory
description:
  - Builds the lab's hosts from a small topology file, which gives the sites (regions and
    the global site), the subnet of each, and how many nodes a region has in each lab size.
  - The same data drives the lab tool (C(lab/labctl.py)), which creates one podman network
    per site and one container per host at the address given here, so that the inventory is
    the only list of lab hosts.
  - The size in force is, in this order, C(BATON_LAB_SIZE) from the environment, the size
    recorded by C(make lab-up) in the state file, or O(default_size).
options:
  plugin:
    description: Must be C(baton_lab).
    required: true
    choices: [baton_lab]
  container_prefix:
    description: Prefix of container and podman network names.
    type: str
    default: baton-
  sizes:
    description: Nodes per region for each lab size; a number (every region), or a mapping
      of region name to number with C(default) for the regions it does not name.
    type: dict
    required: true
  default_size:
    description: Size used when neither the environment nor the state file names one.
    type: str
    default: mini
  state_file:
    description: File in which C(make lab-up) records the size of the running lab, relative
      to this configuration file.
    type: str
    default: ../../.lab/size
  regions:
    description: The regions, each a dict with C(name) and C(subnet).
    type: list
    elements: dict
    required: true
  global_site:
    description: The global site, a dict with C(name), C(network), C(subnet) and C(nodes).
    type: dict
    required: true
  host_offset:
    description: Node N of a site gets the address C(subnet + host_offset + N).
    type: int
    default: 10
"""

ENV_SIZE = "BATON_LAB_SIZE"


class LabTopologyError(ValueError):
    """The lab topology file or the requested size is wrong."""


def group_name(site: str) -> str:
    """Ansible group name of a site: 'us-east' -> 'us_east'."""
    return site.replace("-", "_")


def resolve_size(sizes: dict[str, int], env_value: str | None, state_value: str | None,
                 default: str) -> tuple[str, str]:
    """Return (size, where it came from), or raise LabTopologyError for an unknown one."""
    for value, origin in ((env_value, ENV_SIZE), (state_value, "the lab state file"),
                          (default, "default_size")):
        if value:
            value = value.strip()
            if value not in sizes:
                raise LabTopologyError(
                    f"unknown lab size '{value}' (from {origin}): use one of "
                    f"{', '.join(sorted(sizes))}")
            return value, origin
    raise LabTopologyError("no lab size given: set default_size in the lab inventory file")


def _site_hosts(name: str, network: str, subnet: str, nodes: int, offset: int,
                prefix: str) -> list[dict[str, Any]]:
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError as exc:
        raise LabTopologyError(f"site {name}: subnet '{subnet}' is not a network ({exc})") from exc
    hosts = []
    for index in range(1, nodes + 1):
        address = net.network_address + offset + index
        if address not in net or address == net.broadcast_address:
            raise LabTopologyError(f"site {name}: node {index} falls outside {subnet}")
        host = f"{name}-{index}"
        hosts.append({
            "name": host,
            "site": name,
            "group": group_name(name),
            "index": index,
            "address": str(address),
            "container": f"{prefix}{host}",
            "network": f"{prefix}{network}",
            "subnet": str(net),
            "gateway": str(net.network_address + 1),
        })
    return hosts


def nodes_in(size: int | dict[str, int], region: str) -> int:
    """Nodes of region in a size: `3`, or `{us-east: 3, default: 1}`."""
    if isinstance(size, dict):
        if region not in size and "default" not in size:
            raise LabTopologyError(f"lab size {size} names no node count for region {region}: "
                                   "add it, or a 'default'")
        return int(size.get(region, size.get("default")))
    return int(size)


def build_topology(config: dict[str, Any], size: str) -> dict[str, Any]:
    """Pure function: the lab's sites and hosts for one size."""
    sizes = config["sizes"]
    if size not in sizes:
        raise LabTopologyError(f"unknown lab size '{size}': use one of {', '.join(sorted(sizes))}")
    prefix = config.get("container_prefix", "baton-")
    offset = int(config.get("host_offset", 10))
    regions = config.get("regions") or []
    if not regions:
        raise LabTopologyError("the lab topology names no region")
    glob = config["global_site"]
    sites: list[dict[str, Any]] = []
    seen_subnets: dict[str, str] = {}
    for region in regions:
        sites.append({"name": region["name"], "kind": "region", "network": region["name"],
                      "subnet": region["subnet"], "nodes": nodes_in(sizes[size], region["name"])})
    sites.append({"name": glob["name"], "kind": "global",
                  "network": glob.get("network", glob["name"]), "subnet": glob["subnet"],
                  "nodes": int(glob.get("nodes", 1))})
    hosts: list[dict[str, Any]] = []
    for site in sites:
        key = str(ipaddress.ip_network(site["subnet"]))
        if key in seen_subnets:
            raise LabTopologyError(
                f"sites {seen_subnets[key]} and {site['name']} share subnet {key}: "
                "give each site its own subnet")
        seen_subnets[key] = site["name"]
        hosts.extend(_site_hosts(site["name"], site["network"], site["subnet"], site["nodes"],
                                 offset, prefix))
    return {"size": size, "prefix": prefix, "sites": sites, "hosts": hosts}


class InventoryModule(BaseInventoryPlugin):
    NAME = "baton_lab"

    def verify_file(self, path: str) -> bool:
        return super().verify_file(path) and path.endswith((".baton.yml", ".baton.yaml"))

    def parse(self, inventory, loader, path, cache=False):  # type: ignore[override]
        super().parse(inventory, loader, path, cache)
        config = self._read_config_data(path)
        state_path = os.path.join(os.path.dirname(path), self.get_option("state_file"))
        state_value = None
        if os.path.exists(state_path):
            with open(state_path, encoding="utf-8") as handle:
                state_value = handle.read().strip() or None
        try:
            size, _origin = resolve_size(self.get_option("sizes"), os.environ.get(ENV_SIZE),
                                         state_value, self.get_option("default_size"))
            topology = build_topology(config, size)
        except (LabTopologyError, KeyError) as exc:
            raise AnsibleParserError(f"{path}: {exc}") from exc

        self.inventory.add_group("lab")
        self.inventory.add_group("regions")
        self.inventory.set_variable("lab", "baton_lab_size", size)
        self.inventory.set_variable("lab", "baton_region_names",
                                    [s["name"] for s in topology["sites"] if s["kind"] == "region"])
        for site in topology["sites"]:
            group = group_name(site["name"])
            self.inventory.add_group(group)
            self.inventory.add_child("regions" if site["kind"] == "region" else "lab", group)
            self.inventory.set_variable(group, "baton_site", site["name"])
        self.inventory.add_child("lab", "regions")
        for host in topology["hosts"]:
            name = host["name"]
            self.inventory.add_host(name, group=host["group"])
            for key, value in (
                ("ansible_connection", "baton_podman"),
                ("ansible_host", host["container"]),
                ("ansible_python_interpreter", "/usr/bin/python3"),
                ("baton_address", host["address"]),
                ("baton_lab_container", host["container"]),
                ("baton_lab_network", host["network"]),
                ("baton_lab_subnet", host["subnet"]),
                ("baton_lab_gateway", host["gateway"]),
            ):
                self.inventory.set_variable(name, key, value)

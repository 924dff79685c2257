"""The lab inventory plugin: sizes, addresses and the errors a newcomer can hit."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from baton_lab import LabTopologyError, build_topology, group_name, resolve_size

ROOT = Path(__file__).resolve().parents[2]
CONFIG = yaml.safe_load((ROOT / "inventories/lab/lab.baton.yml").read_text())
SIZES = CONFIG["sizes"]


def test_mini_lab_has_one_node_per_region_and_the_global_site():
    topo = build_topology(CONFIG, "mini")
    assert [h["name"] for h in topo["hosts"]] == ["us-east-1", "us-west-1", "eu-west-1", "global-1"]


def test_full_lab_has_three_nodes_per_region():
    topo = build_topology(CONFIG, "full")
    by_site = {}
    for h in topo["hosts"]:
        by_site.setdefault(h["site"], []).append(h["name"])
    assert by_site["us-west"] == ["us-west-1", "us-west-2", "us-west-3"]
    assert len(topo["hosts"]) == 10


def test_ha_lab_has_three_nodes_only_in_the_initial_primary_region():
    topo = build_topology(CONFIG, "ha")
    counts = {}
    for h in topo["hosts"]:
        counts[h["site"]] = counts.get(h["site"], 0) + 1
    assert counts == {"us-east": 3, "us-west": 1, "eu-west": 1, "global": 1}


def test_a_size_mapping_without_the_region_or_a_default_is_refused():
    config = {**CONFIG, "sizes": {"odd": {"us-east": 3}}}
    with pytest.raises(LabTopologyError, match="names no node count for region us-west"):
        build_topology(config, "odd")


def test_node_addresses_are_fixed_and_unique():
    topo = build_topology(CONFIG, "full")
    addresses = {h["name"]: h["address"] for h in topo["hosts"]}
    assert addresses["us-east-1"] == "10.231.1.11"
    assert addresses["eu-west-3"] == "10.231.3.13"
    assert addresses["global-1"] == "10.231.0.11"
    assert len(set(addresses.values())) == len(addresses)


def test_global_site_lives_on_the_wan_network():
    topo = build_topology(CONFIG, "mini")
    glob = next(h for h in topo["hosts"] if h["site"] == "global")
    assert glob["network"] == "baton-wan"
    assert glob["container"] == "baton-global-1"


def test_environment_size_wins_over_state_file_and_default():
    assert resolve_size(SIZES, "full", "mini", "mini") == ("full", "BATON_LAB_SIZE")
    assert resolve_size(SIZES, None, "full", "mini") == ("full", "the lab state file")
    assert resolve_size(SIZES, "", None, "mini") == ("mini", "default_size")


def test_unknown_size_names_its_origin_and_the_valid_sizes():
    with pytest.raises(LabTopologyError) as err:
        resolve_size(SIZES, "huge", None, "mini")
    assert str(err.value) == ("unknown lab size 'huge' (from BATON_LAB_SIZE): use one of "
                              "bench, full, ha, mini")


def test_two_sites_on_one_subnet_are_refused():
    config = json.loads(json.dumps(CONFIG))
    config["regions"][1]["subnet"] = config["regions"][0]["subnet"]
    with pytest.raises(LabTopologyError, match=r"share subnet 10\.231\.1\.0/24"):
        build_topology(config, "mini")


def test_a_subnet_too_small_for_the_nodes_is_refused():
    config = json.loads(json.dumps(CONFIG))
    config["regions"][0]["subnet"] = "10.231.1.0/29"
    with pytest.raises(LabTopologyError, match=r"falls outside 10\.231\.1\.0/29"):
        build_topology(config, "mini")


def test_group_names_are_valid_ansible_identifiers():
    assert group_name("us-east") == "us_east"


def _inventory(size: str) -> dict:
    env = dict(os.environ, BATON_LAB_SIZE=size, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    exe = Path(sys.executable).parent / "ansible-inventory"
    proc = subprocess.run([str(exe), "--list"], capture_output=True, env=env, cwd=ROOT, check=True)
    return json.loads(proc.stdout)


@pytest.mark.parametrize(("size", "count"), [("mini", 4), ("full", 10), ("ha", 6)])
def test_ansible_reads_the_lab_inventory_at_each_size(size, count):
    data = _inventory(size)
    assert len(data["_meta"]["hostvars"]) == count
    assert data["regions"]["children"] == ["us_east", "us_west", "eu_west"]
    names = data["_meta"]["hostvars"]["us-east-1"]["baton_region_names"]
    assert [n.get("__ansible_unsafe", n) if isinstance(n, dict) else n for n in names] == [
        "us-east", "us-west", "eu-west"]


def test_ansible_refuses_an_unknown_size_instead_of_running_on_no_hosts():
    env = dict(os.environ, BATON_LAB_SIZE="huge", ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    exe = Path(sys.executable).parent / "ansible-inventory"
    proc = subprocess.run([str(exe), "--list"], capture_output=True, env=env, cwd=ROOT)
    assert proc.returncode != 0
    assert b"unknown lab size 'huge'" in proc.stderr

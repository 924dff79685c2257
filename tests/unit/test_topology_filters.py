"""Topology filters used by plays and templates, and the inventory preflight."""

import pytest
from ansible.errors import AnsibleFilterError
from baton_topology import (
    baton_assess_regions,
    baton_host_addresses,
    baton_hosts,
    baton_inventory_problems,
    baton_other_regions,
    baton_regions,
    baton_sites,
    baton_standby_source,
)

GROUPS = {
    "all": ["gtm-1", "a1", "a2", "a3", "b1"],
    "regions": ["a1", "a2", "a3", "b1"],
}
HOSTVARS = {
    "gtm-1": {"baton_site": "global", "baton_address": "10.0.9.1"},
    "a1": {"baton_site": "us-east", "baton_address": "10.0.1.1"},
    "a2": {"baton_site": "us-east", "baton_address": "10.0.1.2"},
    "a3": {"baton_site": "us-east", "baton_address": "10.0.1.3"},
    "b1": {"baton_site": "us-west", "baton_address": "10.0.2.1"},
}


def test_regions_map_to_their_hosts_in_inventory_order():
    assert baton_regions(GROUPS, HOSTVARS) == {"us-east": ["a1", "a2", "a3"], "us-west": ["b1"]}


def test_sites_list_regions_first_then_the_global_site():
    assert list(baton_sites(GROUPS, HOSTVARS)) == ["us-east", "us-west", "global"]


def test_every_host_comes_in_the_same_order_whatever_order_groups_all_has():
    # Ansible's groups['all'] changes order between runs; files rendered from this must not.
    witness = {**HOSTVARS, "gtm-0": {"baton_site": "witness", "baton_address": "10.0.8.1"}}
    expected = ["a1", "a2", "a3", "b1", "gtm-1", "gtm-0"]
    for order in (["gtm-1", "gtm-0", "a1", "a2", "a3", "b1"],
                  ["b1", "gtm-0", "a3", "gtm-1", "a1", "a2"]):
        assert baton_hosts({**GROUPS, "all": order}, witness) == expected


def test_every_host_maps_to_its_address():
    assert baton_host_addresses(GROUPS, HOSTVARS) == {
        "a1": "10.0.1.1", "a2": "10.0.1.2", "a3": "10.0.1.3", "b1": "10.0.2.1",
        "gtm-1": "10.0.9.1"}


def test_the_other_regions_keep_inventory_order():
    assert baton_other_regions(GROUPS, HOSTVARS, "us-east") == ["us-west"]
    assert baton_other_regions(GROUPS, HOSTVARS, "us-west") == ["us-east"]


def test_a_standby_region_replicates_from_every_node_of_the_primary_region():
    assert baton_standby_source(GROUPS, HOSTVARS, "us-west", "us-east") == \
        "10.0.1.1,10.0.1.2,10.0.1.3"
    assert baton_standby_source(GROUPS, HOSTVARS, "us-east", "us-east") is None
    assert baton_standby_source(GROUPS, HOSTVARS, "us-east", "us-west") == "10.0.2.1"


def test_a_primary_region_without_hosts_is_one_sentence():
    with pytest.raises(AnsibleFilterError, match="the primary region ap-south has no hosts"):
        baton_standby_source(GROUPS, HOSTVARS, "us-east", "ap-south")


def test_assess_regions_list_each_node_and_whether_it_runs_redis():
    hostvars = {**HOSTVARS, "a3": {**HOSTVARS["a3"], "redis_enabled": False}}
    assert baton_assess_regions(GROUPS, hostvars) == {
        "us-east": [{"name": "a1", "address": "10.0.1.1", "redis": True},
                    {"name": "a2", "address": "10.0.1.2", "redis": True},
                    {"name": "a3", "address": "10.0.1.3", "redis": False}],
        "us-west": [{"name": "b1", "address": "10.0.2.1", "redis": True}]}


def test_a_sane_inventory_has_no_problems():
    assert baton_inventory_problems(GROUPS, HOSTVARS, "us-east") == []


def test_duplicate_addresses_are_named():
    hostvars = {**HOSTVARS, "b1": {"baton_site": "us-west", "baton_address": "10.0.1.2"}}
    assert baton_inventory_problems(GROUPS, hostvars, "us-east") == [
        "hosts a2 and b1 share baton_address 10.0.1.2: give each host its own"]


def test_an_initial_primary_that_is_not_a_region_is_refused_with_the_choices():
    problems = baton_inventory_problems(GROUPS, HOSTVARS, "ap-south")
    assert problems == ["baton_initial_primary_region is 'ap-south', which is not a region of "
                        "this inventory: use one of us-east, us-west"]


def test_a_host_without_site_or_address_is_named():
    hostvars = {**HOSTVARS, "a2": {}}
    problems = baton_inventory_problems(GROUPS, hostvars, "us-east")
    assert "host a2 has no baton_site: set it on the host's site group" in problems
    assert any(p.startswith("host a2 has no baton_address") for p in problems)


def test_an_inventory_without_regions_is_refused():
    problems = baton_inventory_problems({"all": ["gtm-1"]}, HOSTVARS, None)
    assert problems[0].startswith("the inventory has no group 'regions' with hosts")


def test_a_declared_region_that_lost_its_hosts_is_named():
    problems = baton_inventory_problems(GROUPS, HOSTVARS, "us-east",
                                        ["us-east", "us-west", "eu-west"])
    assert problems == ["region eu-west (baton_region_names) has no database host: add its "
                        "hosts to its group under 'regions', or remove it from "
                        "baton_region_names"]


def test_a_region_that_is_not_declared_is_named():
    problems = baton_inventory_problems(GROUPS, HOSTVARS, "us-east", ["us-east"])
    assert problems == ["hosts b1 are in region us-west, which baton_region_names does not "
                        "list: fix their baton_site or add us-west to baton_region_names"]


def test_an_initial_primary_without_hosts_leaves_the_standbys_without_a_source():
    problems = baton_inventory_problems(GROUPS, HOSTVARS, "eu-west",
                                        ["us-east", "us-west", "eu-west"])
    assert problems[-1] == ("baton_initial_primary_region eu-west has no database host, so the "
                            "standby regions would have no source: give it hosts or choose one "
                            "of us-east, us-west")


def test_duplicate_patroni_member_names_across_regions_are_named():
    hostvars = {**HOSTVARS, "b1": {**HOSTVARS["b1"], "patroni_name": "a1"}}
    assert baton_inventory_problems(GROUPS, hostvars, "us-east") == [
        "hosts a1 and b1 both use Patroni member name a1: member names must be unique across "
        "all regions"]


def test_a_region_with_an_even_number_of_hosts_cannot_form_an_etcd_quorum():
    groups = {"all": ["a1", "a2", "b1"], "regions": ["a1", "a2", "b1"]}
    assert baton_inventory_problems(groups, HOSTVARS, "us-east") == [
        "region us-east has 2 database hosts: its etcd needs an odd number of members (1, 3 "
        "or 5); add or remove a host, or set etcd_members"]


def test_a_host_outside_every_region_group_is_named():
    # In the inventory with a region's baton_site, but in no group under 'regions': no tier
    # would be deployed on it and no move would see it.
    groups = {"all": [*GROUPS["all"], "c1"], "regions": GROUPS["regions"], "ungrouped": ["c1"]}
    hostvars = {**HOSTVARS, "c1": {"baton_site": "us-west", "baton_address": "10.0.2.2"}}
    assert baton_inventory_problems(groups, hostvars, "us-east") == [
        "host c1 (baton_site us-west) is in no group under 'regions': put it in its region's "
        "group under 'regions', or in 'global' if it belongs to the global site"]


def test_a_move_is_not_refused_for_what_only_a_deploy_needs():
    # us-west's VMs destroyed and taken out of the inventory; us-east down to two hosts.
    groups = {"all": ["gtm-1", "a1", "a2"], "regions": ["a1", "a2"]}
    declared = ["us-east", "us-west"]
    assert len(baton_inventory_problems(groups, HOSTVARS, "us-west", declared)) == 3
    assert baton_inventory_problems(groups, HOSTVARS, "us-west", declared, deploy=False) == []
    # What a move needs is still checked.
    hostvars = {**HOSTVARS, "a2": {"baton_site": "us-east"}}
    assert baton_inventory_problems(groups, hostvars, None, declared, deploy=False) == [
        "host a2 has no baton_address: set the address its services use"]


# --- the Baton CA's folder and the etcd users (filter_plugins/baton_pki.py) --------------------


def test_etcd_passwords_are_derived_per_cluster_and_user_and_refuse_a_missing_secret():
    from ansible.errors import AnsibleFilterError
    from baton_pki import baton_etcd_password, baton_etcd_passwords

    one = baton_etcd_password("lab-etcd-not-secret", "baton-witness", "baton-controller")
    assert one == baton_etcd_password("lab-etcd-not-secret", "baton-witness", "baton-controller")
    assert len(one) >= 40
    assert one != baton_etcd_password("lab-etcd-not-secret", "baton-witness", "root")
    assert one != baton_etcd_password("lab-etcd-not-secret", "baton-us-east", "baton-controller")
    assert one != baton_etcd_password("another-secret", "baton-witness", "baton-controller")
    assert baton_etcd_passwords(["a", "b"], "lab-etcd-not-secret", "c") == {
        "a": baton_etcd_password("lab-etcd-not-secret", "c", "a"),
        "b": baton_etcd_password("lab-etcd-not-secret", "c", "b")}
    for missing in ("", None, "short"):
        with pytest.raises(AnsibleFilterError, match="etcd_auth_secret is not set"):
            baton_etcd_password(missing, "baton-witness", "root")


def test_each_sites_witness_role_reads_the_holder_and_keeps_only_its_own_liveness_keys():
    from baton_pki import baton_etcd_users, baton_witness_roles

    roles = baton_witness_roles(["us-east", "us-west", "global"], "baton-controller")
    assert roles["baton-controller"] == [{"key": "/baton/", "prefix": True,
                                          "permission": "readwrite"}]
    east = roles["baton-site-us-east"]
    assert {"key": "/baton/holder", "permission": "read"} in east
    assert {"key": "/baton/alive/us-east/", "prefix": True, "permission": "readwrite"} in east
    assert all(p["permission"] == "read" or p["key"] == "/baton/alive/us-east/" for p in east)
    assert not any("us-west" in p["key"] for p in east)
    assert baton_etcd_users(roles)["baton-site-us-west"] == ["baton-site-us-west"]


def test_the_inventory_dir_is_the_first_sources_folder(tmp_path):
    from baton_pki import baton_inventory_dir

    hosts = tmp_path / "hosts.yml"
    hosts.write_text("all: {}\n")
    assert baton_inventory_dir([str(tmp_path)]) == str(tmp_path)
    assert baton_inventory_dir([str(hosts), "/elsewhere"]) == str(tmp_path)


def test_ca_holders_names_the_hosts_that_trust_a_ca_or_another_one():
    import base64

    from baton_pki import baton_ca_holders

    pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    other = pem.replace("AAAA", "BBBB")
    hostvars = {"a": {"ca": {"content": base64.b64encode(pem.encode()).decode()}},
                "b": {"ca": {"content": base64.b64encode(other.encode()).decode()}},
                "c": {"ca": {"failed": True, "msg": "file not found"}}, "d": {}}
    assert baton_ca_holders(["a", "b", "c", "d"], hostvars, "ca") == ["a", "b"]
    assert baton_ca_holders(["a", "b", "c", "d"], hostvars, "ca", pem.strip()) == ["b"]

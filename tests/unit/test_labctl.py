"""The lab tool's decisions that need no podman: sizes, regions, image cache key."""

import shutil

import labctl
import pytest


def test_unknown_lab_size_is_one_sentence_with_the_valid_sizes():
    with pytest.raises(labctl.LabError) as err:
        labctl.check_size("huge")
    assert str(err.value) == ("unknown lab size 'huge': use LAB=bench or LAB=full or LAB=ha "
                              "or LAB=mini")


def test_unknown_region_lists_the_lab_regions():
    topo = {"sites": {
        "us-east": {"region": True}, "us-west": {"region": True}, "global": {"region": False}}}
    with pytest.raises(labctl.LabError) as err:
        labctl.region_of(topo, "mars")
    assert str(err.value) == "unknown region 'mars': the lab has us-east, us-west"


def test_the_global_site_is_not_a_region_for_the_fault_tools():
    topo = {"sites": {"us-east": {"region": True}, "global": {"region": False}}}
    with pytest.raises(labctl.LabError, match="unknown region 'global'"):
        labctl.region_of(topo, "global")


def test_image_tag_changes_when_an_image_input_changes(tmp_path, monkeypatch):
    copy = tmp_path / "image"
    shutil.copytree(labctl.IMAGE_DIR, copy)
    monkeypatch.setattr(labctl, "IMAGE_DIR", copy)
    before = labctl.image_tag()
    assert labctl.image_tag() == before
    with open(copy / "packages.txt", "a") as handle:
        handle.write("curl\n")
    assert labctl.image_tag() != before


def test_packages_image_ref_follows_its_list_and_the_base_image(tmp_path, monkeypatch):
    packages = tmp_path / "image-packages"
    shutil.copytree(labctl.PACKAGES_DIR, packages)
    monkeypatch.setattr(labctl, "PACKAGES_DIR", packages)
    before = labctl.packages_ref()
    assert before.startswith(f"{labctl.PACKAGES_REPO}:") and labctl.packages_ref() == before
    with open(packages / "packages.txt", "a") as handle:
        handle.write("jq\n")
    after = labctl.packages_ref()
    assert after != before
    monkeypatch.setattr(labctl, "image_tag", lambda: "0123456789ab")
    assert labctl.packages_ref() != after


def test_inventory_json_unsafe_wrappers_are_unwrapped():
    assert labctl._unwrap({"__ansible_unsafe": "baton-wan"}) == "baton-wan"
    assert labctl._unwrap({"a": 1}) == {"a": 1}


def test_cli_exits_2_with_one_sentence_for_an_unknown_size(capsys):
    assert labctl.main(["up", "--size", "huge"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["lab: error: unknown lab size 'huge': use LAB=bench or LAB=full or LAB=ha "
                   "or LAB=mini"]


def test_the_containers_get_the_common_roles_network_kernel_settings_only():
    settings = labctl.network_sysctls()
    assert settings["net.ipv4.tcp_retries2"] == "5"
    assert all(key.startswith("net.") for key in settings), settings  # vm.* is the host's

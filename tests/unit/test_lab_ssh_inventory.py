"""The SSH lab inventory (inventories/lab-ssh) deploys exactly the lab the default inventory
deploys, in the shape of inventories/example; only how Ansible reaches the nodes differs.

Nothing here reaches a host: the variables are rendered on the controller (debug runs no
module on the node)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
LAB = ROOT / "inventories/lab"
SSH = ROOT / "inventories/lab-ssh"
EXAMPLE = ROOT / "inventories/example"
VAULT_PASSWORD_FILE = ROOT / "lab/vault-password"  # prints the lab's throwaway password
# How a node is reached, and what only the lab's own inventory plugin knows: not deployed.
NOT_DEPLOYED = ("ansible_", "baton_lab_", "vault_")
RENDER = """
- name: Render every deployed variable
  hosts: all
  gather_facts: false
  tasks:
    - name: The variables, rendered
      ansible.builtin.debug:
        msg: "{{ dict(deployed | zip(lookup('ansible.builtin.vars', *deployed))) }}"
"""


def _run(tool, *args):
    exe = Path(sys.executable).parent / tool
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_STDOUT_CALLBACK="ansible.posix.json", ANSIBLE_LOAD_CALLBACK_PLUGINS="1")
    env.pop("ANSIBLE_INVENTORY", None)
    return subprocess.run([str(exe), *args], capture_output=True, text=True, env=env, cwd=ROOT,
                          check=True, timeout=300)


def _hostvars(inventory):
    data = json.loads(_run("ansible-inventory", "-i", str(inventory), "--vault-password-file",
                           str(VAULT_PASSWORD_FILE), "--list").stdout)
    return data, data["_meta"]["hostvars"]


def _rendered(inventory, keys, tmp_path):
    play = tmp_path / "render.yml"
    play.write_text(RENDER)
    out = _run("ansible-playbook", "-i", str(inventory), "--vault-password-file",
               str(VAULT_PASSWORD_FILE), str(play), "-e", json.dumps({"deployed": keys})).stdout
    task = json.loads(out)["plays"][0]["tasks"][0]
    return {host: result["msg"] for host, result in task["hosts"].items()}


def _plain(value):
    """ansible-inventory writes inventory-plugin strings as {"__ansible_unsafe": s}."""
    return value["__ansible_unsafe"] if isinstance(value, dict) else value


def test_the_ssh_lab_has_the_examples_groups_and_the_labs_hosts():
    ssh, ssh_vars = _hostvars(SSH)
    shapes = []
    for inventory in (SSH, EXAMPLE):
        tree = yaml.safe_load((inventory / "hosts.yml").read_text())["all"]["children"]
        shapes.append((list(tree), list(tree["regions"]["children"])))
    assert shapes[0] == shapes[1] == (["regions", "global"], ["us_east", "us_west", "eu_west"])
    assert ssh["regions"]["children"] == ["us_east", "us_west", "eu_west"]
    assert sorted(p.name for p in (SSH / "group_vars").iterdir()) == \
        sorted(p.name for p in (EXAMPLE / "group_vars").iterdir())
    _lab, lab_vars = _hostvars(LAB)
    assert {h: v["baton_address"] for h, v in ssh_vars.items()} == \
        {h: _plain(v["baton_address"]) for h, v in lab_vars.items()}


def test_the_ssh_lab_is_reached_as_the_example_reaches_vms():
    settings = yaml.safe_load((SSH / "group_vars/all/main.yml").read_text())
    production = yaml.safe_load((EXAMPLE / "group_vars/all/main.yml").read_text())
    for key in ("ansible_user", "ansible_become", "ansible_host"):
        assert settings[key] == production[key], key
    assert settings["ansible_ssh_host_key_checking"] is True
    assert "StrictHostKeyChecking=yes" in settings["ansible_ssh_common_args"]
    assert "UserKnownHostsFile=" in settings["ansible_ssh_common_args"]
    vault = SSH / "group_vars/all/vault.yml"
    assert vault.read_text().startswith("$ANSIBLE_VAULT;1.1;AES256")
    # Every secret comes from the vault, as in the example.
    for key in ("redis_password", "patroni_superuser_password", "dns_tsig_secret"):
        assert settings[key].startswith("{{ vault_"), key


def test_the_ssh_lab_deploys_exactly_what_the_lab_deploys(tmp_path):
    _, lab_vars = _hostvars(LAB)
    _, ssh_vars = _hostvars(SSH)
    keys = sorted({k for hv in (*lab_vars.values(), *ssh_vars.values()) for k in hv
                   if not k.startswith(NOT_DEPLOYED)})
    assert {"redis_password", "dns_tsig_secret", "patroni_allowed_networks",
            "redis_sentinel_quorum", "baton_site", "baton_region_names"} <= set(keys)
    lab = _rendered(LAB, keys, tmp_path)
    ssh = _rendered(SSH, keys, tmp_path)
    assert set(lab) == set(ssh) == set(lab_vars)
    for host in lab:
        differ = {k: (lab[host][k], ssh[host][k]) for k in keys if lab[host][k] != ssh[host][k]}
        assert differ == {}, (host, differ)


def test_every_controller_playbook_renders_its_views_of_the_ssh_lab():
    """The controller's plays run on the implicit localhost, which reads group_vars/all too:
    nothing there may need a node's variables (inventory_dir, baton_address)."""
    for playbook in ("failover.yml", "switchover.yml", "failback.yml", "health.yml"):
        exe = Path(sys.executable).parent / "ansible-playbook"
        env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
        env.pop("ANSIBLE_INVENTORY", None)
        done = subprocess.run([str(exe), "-i", str(SSH), "--vault-password-file",
                               str(VAULT_PASSWORD_FILE), playbook, "-e", "target=us-west",
                               "--check", "--tags", "render"], capture_output=True, text=True,
                              env=env, cwd=ROOT, timeout=300)
        assert done.returncode == 0, (playbook, done.stdout[-2000:])
        assert "Render the" in done.stdout, (playbook, "the render task did not run")

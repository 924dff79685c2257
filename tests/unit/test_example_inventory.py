"""The production-shaped example inventory parses, is sane, and keeps its secrets in a vault."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from baton_topology import SECRETS, baton_inventory_problems, baton_secret_problems

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "inventories/example"
EXAMPLE_VAULT_PASSWORD = "baton-example"  # throwaway, documented in inventories/example/README.md


def _ansible(tool, *args, tmp_path):
    password = tmp_path / "vault-pass"
    password.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
    exe = Path(sys.executable).parent / tool
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    return subprocess.run([str(exe), "-i", str(EXAMPLE), "--vault-password-file", str(password),
                           *args], capture_output=True, env=env, cwd=ROOT, check=True)


def test_example_has_three_regions_of_three_vms_and_a_global_site(tmp_path):
    data = json.loads(_ansible("ansible-inventory", "--list", tmp_path=tmp_path).stdout)
    assert data["regions"]["children"] == ["us_east", "us_west", "eu_west"]
    for region in ("us_east", "us_west", "eu_west"):
        assert len(data[region]["hosts"]) == 3
    assert data["global"]["hosts"] == ["gtm-1"]


def test_example_passes_the_site_preflight(tmp_path):
    data = json.loads(_ansible("ansible-inventory", "--list", tmp_path=tmp_path).stdout)
    hostvars = data["_meta"]["hostvars"]
    groups = {"all": list(hostvars),
              "regions": [h for g in data["regions"]["children"] for h in data[g]["hosts"]]}
    first = next(iter(hostvars.values()))
    assert baton_inventory_problems(groups, hostvars, first["baton_initial_primary_region"],
                                    first["baton_region_names"]) == []


def test_example_secrets_are_vault_encrypted_and_decrypt_with_the_example_password(tmp_path):
    vault = EXAMPLE / "group_vars/all/vault.yml"
    lines = [line for line in vault.read_text().splitlines()
             if line.startswith("vault_")]
    assert lines and all(line.endswith(": !vault |") for line in lines), lines
    proc = _ansible("ansible", "db-usw1-2", "-m", "debug", "-a", "var=vault_redis_password",
                    tmp_path=tmp_path)
    assert b"example-redis-change-me" in proc.stdout


def test_the_example_imports_without_the_vault_password_as_awx_imports_it():
    """AWX reads an inventory source with ansible-inventory and no vault secret: the values,
    vaulted one by one, stay encrypted in what it imports (a whole-file vault would fail)."""
    exe = Path(sys.executable).parent / "ansible-inventory"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    run = subprocess.run([str(exe), "-i", str(EXAMPLE), "--list", "--export"],
                         capture_output=True, env=env, cwd=ROOT, text=True)
    assert run.returncode == 0, run.stderr
    imported = json.loads(run.stdout)
    secret = imported["all"]["vars"]["vault_redis_password"]
    assert "__ansible_vault" in secret and "example-redis" not in run.stdout


CONTROLLER_PLAYBOOKS = ["failover.yml", "switchover.yml", "failback.yml", "health.yml"]


def render(playbook, tmp_path, inventory=EXAMPLE):
    """The controller play's views of the inventory, rendered on the implicit localhost
    (`--tags render --check`: nothing reaches a host; the example's addresses are not ours).
    The example's secrets are placeholders: the check that refuses them is tested apart."""
    password = tmp_path / "vault-pass"
    password.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    return subprocess.run([str(exe), "-i", str(inventory), "--vault-password-file", str(password),
                           playbook, "-e", "target=us-west", "-e", "baton_lab_secrets_allowed=true",
                           "--check", "--tags", "render"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)


def test_every_controller_playbook_renders_its_views_of_the_example_inventory(tmp_path):
    for playbook in CONTROLLER_PLAYBOOKS:
        done = render(playbook, tmp_path)
        assert done.returncode == 0, (playbook, done.stdout[-2000:])
        assert "Render the" in done.stdout, (playbook, "the render task did not run")


def test_the_render_fails_when_group_vars_all_breaks_the_controllers_localhost(tmp_path):
    """The example once set ansible_host to baton_address for every host, the implicit
    localhost included: no failover could start. The render must catch that."""
    broken = tmp_path / "example"
    shutil.copytree(EXAMPLE, broken)
    main = broken / "group_vars/all/main.yml"
    text = main.read_text()
    guarded = 'ansible_host: "{{ baton_address | default(inventory_hostname) }}"'
    assert guarded in text
    main.write_text(text.replace(guarded, 'ansible_host: "{{ baton_address }}"'))
    done = render("failover.yml", tmp_path, broken)
    assert done.returncode != 0 and "baton_address" in done.stdout, done.stdout[-2000:]


def test_every_controller_playbook_refuses_a_bad_inventory_in_one_sentence_first(tmp_path):
    """The inventory's shape is checked on the controller before anything runs: a host
    without baton_address, a host outside every region group, a region missing from
    baton_region_names."""
    broken = tmp_path / "example"
    shutil.copytree(EXAMPLE, broken)
    hosts = broken / "hosts.yml"
    text = hosts.read_text()
    text = text.replace("db-usw1-2: {baton_address: 10.20.1.12}", "db-usw1-2: {}")
    text = text.replace("    global:\n", "    stray:\n      hosts:\n"
                        "        db-aps1-1: {baton_address: 10.50.1.11, baton_site: ap-south}\n"
                        "    global:\n")
    hosts.write_text(text)
    main = broken / "group_vars/all/main.yml"
    main.write_text(main.read_text().replace("baton_region_names: [us-east, us-west, eu-west]",
                                             "baton_region_names: [us-east, us-west]"))
    wanted = ["host db-usw1-2 has no baton_address",
              "host db-aps1-1 (baton_site ap-south) is in no group under 'regions'",
              "hosts db-euw1-1, db-euw1-2, db-euw1-3 are in region eu-west, which "
              "baton_region_names does not list"]
    for playbook in CONTROLLER_PLAYBOOKS:
        done = render(playbook, tmp_path, broken)
        said = " ".join(done.stdout.split())
        assert done.returncode != 0, (playbook, done.stdout[-2000:])
        assert "Check the inventory's shape" in done.stdout, (playbook, done.stdout[-2000:])
        for sentence in wanted:
            assert sentence in said, (playbook, sentence, done.stdout[-2000:])


def test_a_run_with_the_examples_placeholder_secrets_is_refused_naming_each(tmp_path):
    """The example's vault holds placeholders: health.yml (any real run) stops in its
    preflight, one sentence per secret, before it touches a node."""
    password = tmp_path / "vault-pass"
    password.write_text("baton-example\n")
    exe = Path(sys.executable).parent / "ansible-playbook"
    done = subprocess.run([str(exe), "-i", str(EXAMPLE), "--vault-password-file", str(password),
                           "playbooks/health.yml", "--check"], capture_output=True, text=True,
                          cwd=ROOT, timeout=300, check=False)
    assert done.returncode != 0, done.stdout[-2000:]
    said = " ".join(done.stdout.split())
    assert "Check that no secret is a placeholder or one of the lab's" in said
    for name in ("patroni_superuser_password", "redis_password", "dns_tsig_secret"):
        assert (f"{name} (" in said and "is a placeholder or one of the lab's throwaway "
                "secrets" in said), (name, said[-2000:])
    assert "example-superuser-change-me" not in said  # the values are never printed


def test_a_render_of_the_example_is_refused_too_and_so_is_a_hosts_own_placeholder(tmp_path):
    """`--tags render` (README: check the views of your inventory) checks the secrets too,
    and a secret a host sets for itself is checked like the inventory-wide ones."""
    broken = tmp_path / "inventory"
    shutil.copytree(EXAMPLE, broken)
    # Real-looking secrets inventory-wide (these would pass), one host with the lab's.
    (broken / "group_vars/all/zz_secrets.yml").write_text("".join(
        f"{name}: q8Zr-vF3x9L2mT7w-{name}\n" for name in SECRETS if name != "dns_tsig_secret")
        + "dns_tsig_secret: c2VjcmV0IGtleSBieXRlcyE=\n")
    hosts = broken / "host_vars"
    hosts.mkdir()
    (hosts / "db-usw1-2.yml").write_text("redis_password: lab-redis-not-secret\n")
    password = tmp_path / "vault-pass"
    password.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
    exe = Path(sys.executable).parent / "ansible-playbook"
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    done = subprocess.run([str(exe), "-i", str(broken), "--vault-password-file", str(password),
                           "playbooks/health.yml", "--check", "--tags", "render"],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    said = " ".join(done.stdout.split())
    assert done.returncode != 0 and "redis_password (Redis) is a placeholder" in said, said[-1500:]
    assert "dns_tsig_secret (" not in said and "patroni_superuser_password (" not in said
    assert "lab-redis-not-secret" not in said


def test_the_secret_check_refuses_lab_values_outside_the_lab_and_passes_real_ones():
    lab = {"redis_password": "lab-redis-not-secret",
           "dns_tsig_secret": "MHzh59+re/Fag8cOpYnR2fH1k1aoSfF73JyGyyqJGrY="}
    assert len(baton_secret_problems(lab)) == 2
    assert baton_secret_problems(lab, True) == []  # the lab's own inventories
    real = {"redis_password": "q8Zr-vF3x9L2mT7w", "dns_tsig_secret": "c2VjcmV0IGtleSBieXRlcyE="}
    assert baton_secret_problems(real) == []

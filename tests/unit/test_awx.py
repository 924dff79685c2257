"""awx/controller.yml against a fake AWX API (tests/unit/awx_fake.py): the objects it makes,
their surveys (the inventory's regions), the workflow's shape, and a re-run that writes nothing.
Then the execution environment's definition, as ansible-builder reads it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from awx_fake import TOKEN, Server, playbooks_of

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EXAMPLE_VAULT_PASSWORD = "baton-example"  # throwaway, documented in inventories/example/README.md
REGIONS = ["us-east", "us-west", "eu-west"]
SEED = {"organizations": ["Default"], "credentials": ["Baton - SSH", "Baton - vault"],
        "notification_templates": ["Baton - on call"]}


def run_controller_playbook(fake: Server, tmp_path: Path, *extra: str,
                            env: dict | None = None) -> subprocess.CompletedProcess:
    password = tmp_path / "vault-pass"
    password.write_text(EXAMPLE_VAULT_PASSWORD + "\n")
    return subprocess.run(
        [str(BIN / "ansible-playbook"), "-i", "inventories/example", "awx/controller.yml",
         "--vault-password-file", str(password),
         "-e", json.dumps({"baton_awx_scm_url": "https://git.example.com/ops/baton.git",
                           "baton_awx_ee_image": "registry.example.com/baton/ee:1",
                           "baton_awx_notify": ["Baton - on call"],
                           "baton_awx_notify_approval": ["Baton - on call"]}), *extra],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
        env={**os.environ, "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
             "CONTROLLER_HOST": fake.url, "CONTROLLER_OAUTH_TOKEN": TOKEN,
             "ANSIBLE_FORCE_COLOR": "0", **(env or {})})


def recap(stdout: str) -> dict[str, int]:
    match = re.search(r"localhost\s*:\s*ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+"
                      r"failed=(\d+)", stdout)
    assert match, stdout[-2000:]
    return dict(zip(["ok", "changed", "unreachable", "failed"], map(int, match.groups()),
                    strict=True))


@pytest.fixture(scope="module")
def controller(tmp_path_factory):
    """The fake after one run of the playbook, and that run's writes and a second run's."""
    tmp_path = tmp_path_factory.mktemp("awx")
    with Server(ROOT) as fake:
        for kind, names in SEED.items():
            for name in names:
                fake.controller.add(kind, {"name": name, "organization": 1})
        first = run_controller_playbook(fake, tmp_path)
        assert first.returncode == 0, first.stdout[-4000:] + first.stderr[-2000:]
        written = list(fake.controller.writes)
        second = run_controller_playbook(fake, tmp_path)
        assert second.returncode == 0, second.stdout[-4000:]
        yield {"fake": fake.controller, "first": first, "second": second, "written": written,
               "rewritten": fake.controller.writes[len(written):]}


def template(c, name: str) -> dict:
    return c["fake"].named("job_templates", f"Baton - {name}")


def test_every_playbook_has_a_job_template_and_the_moves_a_plan_in_check_mode(controller):
    c = controller["fake"]
    names = sorted(o["name"] for o in c.objects["job_templates"].values())
    assert names == sorted(f"Baton - {n}" for n in (
        "site", "health", "failover", "failover (plan)", "switchover", "switchover (plan)",
        "failback", "drill"))
    project = c.named("projects", "Baton")
    for jt in c.objects["job_templates"].values():
        assert jt["project"] == project["id"] and jt["ask_variables_on_launch"] is False
        assert jt["playbook"] in ("site.yml", "health.yml", "failover.yml", "switchover.yml",
                                  "failback.yml", "drill.yml")
        assert (ROOT / jt["playbook"]).is_file()
        creds = [o["name"] for o in c.linked("job_templates", jt["id"], "credentials")]
        assert sorted(creds) == ["Baton - SSH", "Baton - vault"]
    assert template(controller, "failover (plan)")["job_type"] == "check"
    weekly = c.named("schedules", "Baton - weekly drill")
    assert weekly["unified_job_template"] == template(controller, "drill")["id"]
    assert "FREQ=WEEKLY" in weekly["rrule"] and weekly["enabled"] is True
    assert template(controller, "failover")["job_type"] == "run"
    assert project["scm_update_on_launch"] is False  # an outage must not wait on the repository
    source = c.named("inventory_sources", "Baton - inventories/example")
    assert source["source"] == "scm" and source["source_path"] == "inventories/example"
    assert "credential" not in source  # AWX refuses a vault credential on a project source
    for jt in c.objects["job_templates"].values():
        assert json.loads(jt["extra_vars"]) == {
            "baton_inventory_home": "/runner/project/inventories/example"}


def test_awx_lists_every_playbook_a_job_template_names():
    """AWX offers only files it takes for playbooks (a `hosts:` or top-level
    `import_playbook:` line): the short import form in the entry playbooks is what makes
    them appear."""
    listed = playbooks_of(ROOT)
    for name in ("site.yml", "health.yml", "failover.yml", "switchover.yml", "failback.yml",
                 "drill.yml", "restore.yml", "awx/controller.yml"):
        assert name in listed, f"AWX would not list {name}"


def test_the_surveys_offer_the_inventorys_regions_and_guard_force_and_the_loss(controller):
    c = controller["fake"]
    for name in ("failover", "failover (plan)", "switchover", "switchover (plan)"):
        jt = template(controller, name)
        assert jt["survey_enabled"] is True
        spec = {q["variable"]: q for q in c.survey(jt["id"])["spec"]}
        assert spec["target"]["choices"] == REGIONS and spec["target"]["required"] is True
    failover = {q["variable"]: q for q in c.survey(template(controller, "failover")["id"])["spec"]}
    assert failover["force"]["default"] == "false"
    assert failover["max_data_loss"]["default"] == 16777216
    assert 0 <= failover["max_data_loss"]["min"] < failover["max_data_loss"]["max"]
    switchover = c.survey(template(controller, "switchover")["id"])["spec"]
    assert [q["variable"] for q in switchover] == ["target"]  # zero loss: nothing to force
    failback = {q["variable"]: q for q in c.survey(template(controller, "failback")["id"])["spec"]}
    assert failback["region"]["choices"] == ["", *REGIONS]


def test_the_workflow_runs_health_the_plan_an_approval_the_failover_and_health(controller):
    c = controller["fake"]
    workflow = c.named("workflow_job_templates", "Baton - failover with approval")
    nodes = {n["identifier"]: n for n in c.objects["workflow_job_template_nodes"].values()
             if n["workflow_job_template"] == workflow["id"]}
    assert set(nodes) == {"health-before", "plan", "approval", "failover", "health-after"}

    def follows(node: str, how: str) -> list[str]:
        return [n["identifier"] for n in c.linked("workflow_job_template_nodes",
                                                  nodes[node]["id"], how)]
    assert follows("health-before", "always_nodes") == ["plan"]
    assert follows("plan", "success_nodes") == ["approval"]
    assert follows("approval", "success_nodes") == ["failover"]
    assert follows("failover", "always_nodes") == ["health-after"]
    assert follows("plan", "failure_nodes") == [] and follows("approval", "always_nodes") == []
    templates = {o["id"]: o["name"] for k in ("job_templates", "workflow_approval_templates")
                 for o in c.objects[k].values()}
    assert templates[nodes["plan"]["unified_job_template"]] == "Baton - failover (plan)"
    assert templates[nodes["failover"]["unified_job_template"]] == "Baton - failover"
    assert templates[nodes["approval"]["unified_job_template"]] == "Baton - approve the failover"
    spec = {q["variable"]: q for q in c.survey(workflow["id"])["spec"]}
    assert spec["target"]["choices"] == REGIONS
    notify = [o["name"] for o in c.linked("workflow_job_templates", workflow["id"],
                                          "notification_templates_approvals")]
    assert notify == ["Baton - on call"]


def test_a_rerun_changes_nothing_and_writes_nothing(controller):
    assert recap(controller["first"].stdout)["changed"] > 0
    assert recap(controller["second"].stdout)["changed"] == 0, controller["second"].stdout
    assert controller["rewritten"] == []


def test_the_token_never_reaches_the_log(controller):
    for run in (controller["first"], controller["second"]):
        assert TOKEN not in run.stdout + run.stderr


def test_without_a_controller_it_says_what_is_missing(tmp_path):
    with Server(ROOT) as fake:
        run = run_controller_playbook(fake, tmp_path, env={"CONTROLLER_HOST": ""})
    assert run.returncode != 0
    assert "awx/controller.yml needs the controller" in " ".join(run.stdout.split())
    assert fake.controller.writes == []


def test_the_execution_environment_pins_what_the_project_pins():
    ee = yaml.safe_load((ROOT / "execution-environment.yml").read_text())
    assert ee["version"] == 3
    pins = dict(line.split("==") for line in (ROOT / "requirements.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert ee["dependencies"]["ansible_core"]["package_pip"] == \
        f"ansible-core=={pins['ansible-core']}"
    wanted = (ROOT / "awx" / "ee-requirements.txt").read_text().split()
    for line in wanted:
        name, version = line.split("==")
        assert pins.get(name) == version, f"{line} in the EE, {pins.get(name)} in the project"
    assert "galaxy" not in ee["dependencies"]  # the collections come with the pinned ansible


def test_ansible_builder_writes_the_build_context(tmp_path):
    """What `make ee-context` runs: the definition validates and the context is written
    (no registry, no container runtime)."""
    run = subprocess.run([str(BIN / "ansible-builder"), "create", "--file",
                          str(ROOT / "execution-environment.yml"), "--context", str(tmp_path)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout + run.stderr
    containerfile = (tmp_path / "Containerfile").read_text()
    assert "ansible-core==2.19.14" in containerfile
    assert "redis==8.1.0" in (tmp_path / "_build" / "requirements.txt").read_text()

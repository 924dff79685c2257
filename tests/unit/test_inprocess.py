"""Baton's controller modules run inside Ansible's worker (plugins/action/baton_inprocess.py)
with the results, failures, check mode and no_log they have as modules."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - {name: write, baton_report: {directory: "DIR", files: [{name: a.txt, content: one}]}}
    - {name: again, baton_report: {directory: "DIR", files: [{name: a.txt, content: one}]}}
    - name: check mode
      baton_report: {directory: "DIR", files: [{name: b.txt, content: two}]}
      check_mode: true
    - name: secret
      baton_report: {directory: "DIR", files: [{name: c.txt, content: s3cret-value}]}
      no_log: true
    - name: bad mode
      baton_report: {directory: "DIR", files: [{name: d.txt, content: x}], mode: "9z"}
      ignore_errors: true
    - name: unknown option
      baton_report: {directory: "DIR", files: [], colour: blue}
      ignore_errors: true
    - name: relative folder, a native date
      baton_report: {directory: "rel-MODE", files: [{name: r.txt, content: "{{ now() }}"}]}
"""


def playbook(play: Path, inprocess: bool, tmp_path: Path,
             **env: str) -> subprocess.CompletedProcess:
    """ansible-playbook on localhost with the project's configuration; without the action
    plugins (the modules run as modules) unless inprocess."""
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), **env)
    if not inprocess:
        env["ANSIBLE_ACTION_PLUGINS"] = str(tmp_path / "none")
    return subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), str(play),
                           "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}"],
                          capture_output=True, text=True, env=env, cwd=ROOT, check=False)


def run(tmp_path: Path, inprocess: bool) -> tuple[dict, str]:
    folder = tmp_path / ("in" if inprocess else "module")
    play = tmp_path / f"play-{folder.name}.yml"
    play.write_text(PLAY.replace("DIR", str(folder)).replace("MODE", folder.name))
    proc = playbook(play, inprocess, tmp_path, ANSIBLE_STDOUT_CALLBACK="json",
                    ANSIBLE_LOCALHOST_WARNING="false")
    assert proc.stdout.strip(), proc.stderr
    tasks = json.loads(proc.stdout)["plays"][0]["tasks"]
    results = {t["task"]["name"]: t["hosts"]["localhost"] for t in tasks}
    return results, proc.stdout


def test_results_match_the_modules_run_as_modules(tmp_path):
    inproc, inproc_out = run(tmp_path, True)
    module, _ = run(tmp_path, False)
    for name in ("write", "again", "check mode", "secret", "bad mode", "unknown option",
                 "relative folder, a native date"):
        for key in ("changed", "failed", "msg"):
            assert inproc[name].get(key) == module[name].get(key), (name, key)
    assert inproc["write"]["changed"] is True and inproc["again"]["changed"] is False
    assert not (tmp_path / "in" / "b.txt").exists()
    assert inproc["bad mode"]["msg"] == "mode '9z' is not an octal mode: write it as 0644"
    assert "colour" in inproc["unknown option"]["msg"]
    assert "s3cret-value" not in inproc_out
    assert (tmp_path / "in" / "c.txt").read_text() == "s3cret-value"
    # A relative path is the play's folder's, as for a module the local connection runs.
    assert (tmp_path / "rel-in" / "r.txt").exists() and (tmp_path / "rel-module" / "r.txt").exists()


def test_on_localhost_no_module_is_built_or_sent(tmp_path):
    """With ANSIBLE_DEBUG, a module run shows its AnsiballZ file; an in-process run has none."""
    play = tmp_path / "play.yml"
    play.write_text(PLAY.replace("DIR", str(tmp_path / "out")).split("    - name: check")[0])

    def debug_output(inprocess: bool) -> str:
        proc = playbook(play, inprocess, tmp_path, ANSIBLE_DEBUG="1")
        assert proc.returncode == 0, proc.stdout[-2000:]
        return proc.stdout + proc.stderr
    assert "AnsiballZ_baton_report" in debug_output(False)
    assert "AnsiballZ_baton_report" not in debug_output(True)

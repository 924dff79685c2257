"""baton_report, the module that writes a run's report files, run as Ansible runs it."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def run_module(args: dict, check: bool = False) -> dict:
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"),
               ANSIBLE_LOAD_CALLBACK_PLUGINS="1", ANSIBLE_STDOUT_CALLBACK="json")
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-i", "localhost,", "-c", "local",
                           "-e", f"ansible_python_interpreter={sys.executable}",
                           "-m", "baton_report", "-a", json.dumps(args),
                           *(["--check"] if check else [])],
                          capture_output=True, text=True, cwd=ROOT, env=env, timeout=120,
                          check=False)
    return json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]


def test_the_report_files_are_written_together_into_a_new_folder_then_left_alone(tmp_path):
    folder = tmp_path / "reports" / "new"
    files = [{"name": "run-1.json", "content": '{"a": 1}\n'},
             {"name": "failover-latest.json", "content": '{"a": 1}\n'},
             {"name": "run-1.txt", "content": "summary\n"}]
    first = run_module({"directory": str(folder), "files": files})
    assert first["changed"] and not first.get("failed"), first
    assert sorted(p.name for p in folder.iterdir()) == [
        "failover-latest.json", "run-1.json", "run-1.txt"]
    assert (folder / "run-1.txt").read_text() == "summary\n"
    assert oct((folder / "run-1.json").stat().st_mode & 0o777) == "0o644"
    assert not run_module({"directory": str(folder), "files": files})["changed"]
    checked = run_module({"directory": str(tmp_path / "none"), "files": files}, check=True)
    assert not checked["changed"] and not (tmp_path / "none").exists()


def test_a_file_name_with_a_folder_is_refused_in_one_sentence(tmp_path):
    bad = run_module({"directory": str(tmp_path),
                      "files": [{"name": "../escape.json", "content": "x"}]})
    assert bad.get("failed") and "is not a plain file name" in bad["msg"], bad
    assert not (tmp_path.parent / "escape.json").exists()

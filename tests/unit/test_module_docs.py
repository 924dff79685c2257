"""Every Baton module's DOCUMENTATION, EXAMPLES and RETURN parse, and ansible-doc renders it."""

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted((ROOT / "plugins/modules").glob("baton_*.py"))


def docstrings(path: Path) -> dict[str, str]:
    tree = ast.parse(path.read_text())
    return {node.targets[0].id: node.value.value for node in tree.body
            if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in ("DOCUMENTATION", "EXAMPLES", "RETURN")}


@pytest.mark.parametrize("module", MODULES, ids=[m.stem for m in MODULES])
def test_module_docs_are_yaml_and_ansible_doc_renders_them(module):
    docs = docstrings(module)
    assert sorted(docs) == ["DOCUMENTATION", "EXAMPLES", "RETURN"]
    for text in docs.values():
        yaml.safe_load(text)
    env = dict(os.environ, ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"))
    shown = subprocess.run([str(Path(sys.executable).parent / "ansible-doc"), "-t", "module",
                            module.stem], capture_output=True, text=True, env=env, cwd=ROOT)
    assert shown.returncode == 0, shown.stderr
    assert "EXAMPLES:" in shown.stdout and "RETURN VALUES:" in shown.stdout

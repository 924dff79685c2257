"""Every role documents the same variables in defaults/main.yml and meta/argument_specs.yml."""

from pathlib import Path

import pytest
import yaml

ROLES = sorted(p for p in (Path(__file__).resolve().parents[2] / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_defaults_and_argument_specs_name_the_same_variables(role):
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    spec = yaml.safe_load((role / "meta/argument_specs.yml").read_text())
    options = spec["argument_specs"]["main"]["options"]
    assert sorted(defaults) == sorted(options)


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_public_variables_carry_the_role_prefix(role):
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    assert [k for k in defaults if not k.startswith(f"{role.name}_")] == []


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_choices_in_argument_specs_include_the_default(role):
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text()) or {}
    options = yaml.safe_load((role / "meta/argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    for name, option in options.items():
        if "choices" in option:
            assert str(defaults[name]).lower() in [str(c).lower() for c in option["choices"]], name


@pytest.mark.parametrize("role", ROLES, ids=[r.name for r in ROLES])
def test_the_roles_readme_lists_every_variable(role):
    readme = (role / "README.md").read_text()
    options = yaml.safe_load((role / "meta/argument_specs.yml").read_text())[
        "argument_specs"]["main"]["options"]
    assert [name for name in options if f"| `{name}` |" not in readme] == []

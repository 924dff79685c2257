"""Every role documents the same variables in defaults/main.yml and meta/argument_specs.yml."""

import re
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


def test_every_package_of_patronis_venv_is_pinned_and_patroni_matches_its_version():
    """The nodes pip install Patroni with the role's constraints: every line pins (==) one
    package, and patroni's pin is the role's patroni_version."""
    role = next(r for r in ROLES if r.name == "patroni")
    lines = [line.strip() for line in (role / "files/constraints.txt").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines and all(re.fullmatch(r"[A-Za-z0-9._-]+==[A-Za-z0-9.+-]+", line)
                         for line in lines), lines
    pins = dict(line.split("==") for line in lines)
    defaults = yaml.safe_load((role / "defaults/main.yml").read_text())
    assert pins["patroni"] == defaults["patroni_version"]
    assert {"psycopg", "psycopg-binary", "python-etcd"} <= set(pins)

"""The lab tests share one deployment per lab shape, in a fixed order:

1. test_lab.py        the mini lab comes up, site.yml deploys it (cold, then a re-run that must
                      change nothing), then the steps that keep the baton home;
2. test_lifecycle.py  whole outages under live clients, on that same deployment;
3. test_lab_down.py   refusals of stale containers, then `lab-down` leaves nothing behind;
4. test_full_lab.py   the `ha` shape (three nodes where in-region failover is tested).

BATON_REUSE_LAB=1 uses the mini lab that is up and deployed as it is (no down/up, no
site.yml): to run one lifecycle scenario alone after `make lab-up site`.
"""

from __future__ import annotations

import os
import time
from collections import defaultdict

import pytest

ORDER = ["test_lab.py", "test_lifecycle.py", "test_lab_down.py", "test_full_lab.py"]
REUSE = os.environ.get("BATON_REUSE_LAB") == "1"
_FILE_SECONDS: dict[str, float] = defaultdict(float)


def pytest_collection_modifyitems(session, config, items):
    def rank(item):
        name = item.path.name
        return ORDER.index(name) if name in ORDER else len(ORDER)
    items.sort(key=rank)  # stable: file order first, each file's own order within


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    started = time.monotonic()
    yield
    _FILE_SECONDS[item.path.name] += time.monotonic() - started


def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    terminalreporter.write_sep("-", "lab time by file (minutes)")
    for name in sorted(_FILE_SECONDS, key=lambda n: ORDER.index(n) if n in ORDER else 99):
        terminalreporter.write_line(f"{name:24} {_FILE_SECONDS[name] / 60:6.1f}")


@pytest.fixture(scope="session")
def mini_lab():
    """The mini lab, up (test_lab.py's first tests deploy it with site.yml)."""
    if os.geteuid() != 0:
        pytest.fail("the lab tests need root (rootful podman, host firewall rules)")
    from test_lab import labctl

    if not REUSE:
        labctl("down")
        up = labctl("up", "--size", "mini")
        assert up.returncode == 0, up.stderr
    yield
    labctl("heal")


@pytest.fixture(scope="session")
def deployed(mini_lab):
    """The mini lab with site.yml applied: by test_lab.py's converge test when it ran first,
    else here (a lifecycle scenario run alone), unless BATON_REUSE_LAB=1."""
    from test_lab import DEPLOYED, playbook

    if not DEPLOYED and not REUSE:
        site = playbook("site.yml")
        assert site.returncode == 0, site.stdout[-3000:]
        DEPLOYED.append(True)
    yield

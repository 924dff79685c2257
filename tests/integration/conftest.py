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

import json
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

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


LIFECYCLE_LOG = Path(__file__).resolve().parents[2] / "reports" / "lifecycle.jsonl"


def lifecycle_rows(path: Path) -> list[str]:
    """One line per lifecycle step: what the harness measured (tests/integration/harness.py)."""
    rows = [f"{'scenario / step':58} {'pg ack/lost/err/gap':22} {'asyncpg ack/lost/err/gap':24} "
            f"{'redis ack/lost/err/gap':22} 2w pg/redis  stated loss"]
    for line in path.read_text().splitlines():
        e = json.loads(line)
        cells = []
        for client in ("postgres", "postgres_asyncpg", "redis"):
            t = e.get(client)
            cells.append(f"{t['acked']}/{t['lost']}/{t['errors']}/{t['longest_gap']}s" if t
                         else "-")
        two = f"{len(e['postgres']['two_writer_intervals'])}/" \
              f"{len(e['redis']['two_writer_intervals'])}"
        stated = e.get("stated_loss_bytes")
        rows.append(f"{(e['scenario'] + ' / ' + e['step'])[:58]:58} {cells[0]:22} {cells[1]:24} "
                    f"{cells[2]:22} {two:11}  {'' if stated is None else f'{stated} B'}")
    return rows


def pytest_terminal_summary(terminalreporter):
    if not _FILE_SECONDS:
        return
    if "test_lifecycle.py" in _FILE_SECONDS and LIFECYCLE_LOG.exists():
        terminalreporter.write_sep("-", "lifecycle steps, as the harness measured them")
        for row in lifecycle_rows(LIFECYCLE_LOG):
            terminalreporter.write_line(row)
    played = getattr(sys.modules.get("test_lab"), "PLAYBOOK_SECONDS", {})
    if played:
        terminalreporter.write_sep("-", "playbook runs: count, total and longest (seconds)")
        for name, runs in sorted(played.items(), key=lambda kv: -sum(kv[1])):
            terminalreporter.write_line(f"{name:36} {len(runs):4} {sum(runs):8.0f} "
                                        f"{max(runs):7.0f}")
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


@pytest.fixture()
def over_ssh():
    """Every playbook of the test, and of the fixtures it takes after this one, runs through
    inventories/lab-ssh: SSH as baton-admin with sudo, host keys checked, the vault."""
    from test_lab import VIA_SSH

    VIA_SSH.append(True)
    yield
    VIA_SSH.clear()

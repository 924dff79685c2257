"""The planned Redis handover's decisions (baton_redis_replication.hand_over), on fake servers
that answer as Redis does: which server's writes are paused, and when a re-run finds the move
half done."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import baton_redis
import pytest

ROOT = Path(__file__).resolve().parents[2]


def load_module():
    sys.modules.setdefault("ansible.module_utils.baton_redis", baton_redis)
    spec = importlib.util.spec_from_file_location(
        "baton_redis_replication", ROOT / "plugins" / "modules" / "baton_redis_replication.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeRedis:
    """One server: its role, its offset, its keys and whether a write would wait (a pause)."""

    def __init__(self, role: str, master: str = "", offset: int = 100, replid: str = "r1",
                 paused: bool = False, marked: bool = False) -> None:
        self.role, self.master, self.offset, self.replid = role, master, offset, replid
        self.paused, self.keys, self.commands = paused, {}, []
        if marked:
            self.keys[baton_redis.HANDOVER_KEY] = "earlier run"

    def execute_command(self, *args):
        self.commands.append(" ".join(map(str, args)))
        if args[0] == "ROLE":
            if self.role == "master":
                return ["master", self.offset, []]
            host, port = self.master.rsplit(":", 1)
            return ["slave", host, int(port), "connected", self.offset]
        if args[:2] == ("CLIENT", "PAUSE"):
            self.paused = True
        elif args[:2] == ("CLIENT", "UNPAUSE"):
            self.paused = False
        return "OK"

    def get(self, key):
        return self.keys.get(key)

    def set(self, key, value, px=None):
        assert not self.paused, "a write to a paused server waits until the pause ends"
        self.commands.append(f"SET {key}")
        self.keys[key] = value

    def info(self, section):
        return {"master_repl_offset": self.offset, "master_replid": self.replid}


@pytest.fixture
def lab(monkeypatch):
    module = load_module()
    servers: dict[str, FakeRedis] = {}
    monkeypatch.setattr(module, "client",
                        lambda host, port, *a, **k: servers[f"{host}:{port}"])
    return module, servers


PARAMS = {"password": "x", "timeout": 1.0, "pause_ms": 60000, "handover_timeout": 1.0}
NEW = {"address": "10.0.1.11", "port": 6379}
OUTSIDE = ["10.0.2.11:6379", "10.0.3.11:6379"]


def test_the_master_outside_the_target_is_paused_and_the_new_one_waits_for_its_offset(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.2.11:6379", offset=100)
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=100)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.2.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert done["done"] and done["from"] == "10.0.2.11:6379" and done["offset"] == 100
    old = servers["10.0.2.11:6379"]
    assert old.paused and old.commands.index(f"SET {baton_redis.HANDOVER_KEY}") < \
        old.commands.index("CLIENT PAUSE 60000 WRITE")
    assert not servers["10.0.3.11:6379"].paused


def test_a_new_master_that_lags_lifts_the_pause_and_changes_nothing(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.2.11:6379", offset=90)
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=100)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.2.11:6379")
    lagging = r"reached offset 90 of 10\.0\.2\.11:6379's 100"
    with pytest.raises(baton_redis.RedisProblem, match=lagging):
        module.hand_over(OUTSIDE, NEW, PARAMS)
    assert not servers["10.0.2.11:6379"].paused


def test_a_rerun_that_finds_both_masters_pauses_the_old_one_and_defers_it(lab):
    """A run killed between Redis's promotion and the old master's release left two masters:
    the old one's clients wait (paused) for DNS instead of meeting READONLY."""
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master", offset=200, replid="r2")
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=100)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert done["done"] and done["from"] == "10.0.2.11:6379" and done["to"] == "10.0.1.11:6379"
    assert servers["10.0.2.11:6379"].paused


def test_a_rerun_renews_a_pause_an_interrupted_run_left_without_writing_behind_it(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master", offset=200, replid="r2")
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=100, paused=True, marked=True)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)  # FakeRedis.set asserts it is not paused
    assert done["done"] and "CLIENT PAUSE 60000 WRITE" in servers["10.0.2.11:6379"].commands


def test_a_rerun_after_the_move_finished_hands_nothing_over(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master")
    servers["10.0.2.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    assert module.hand_over(OUTSIDE, NEW, PARAMS) == {
        "done": False, "needed": False, "why": "10.0.1.11:6379 is a master already"}
    assert not any(s.paused for s in servers.values())


def test_two_masters_outside_the_target_are_not_chosen_between(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.2.11:6379")
    servers["10.0.2.11:6379"] = FakeRedis("master")
    servers["10.0.3.11:6379"] = FakeRedis("master")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert not done["done"] and done["needed"] and "2 masters" in done["why"]
    assert not any(s.paused for s in servers.values())

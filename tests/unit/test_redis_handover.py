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
    """One server: its role, its offsets, its fence and whether a write would wait (a pause)."""

    def __init__(self, role: str, master: str = "", offset: int = 100, replid: str = "r1",
                 paused: bool = False, fenced: bool = False, replid2: str = "",
                 second_offset: int = -1, marked: bool = False) -> None:
        self.role, self.master, self.offset, self.replid = role, master, offset, replid
        self.replid2, self.second_offset = replid2, second_offset
        self.paused, self.keys, self.commands = paused, {}, []
        self.config = {"min-replicas-to-write": str(baton_redis.REDIS_FENCE) if fenced else "0"}
        if marked:
            self.keys[baton_redis.HANDOVER_KEY] = "an earlier run"

    @property
    def fenced(self) -> bool:
        return self.config["min-replicas-to-write"] == str(baton_redis.REDIS_FENCE)

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

    def config_get(self, name):
        return {name: self.config[name]}

    def config_set(self, name, value):  # not a write: a pause does not hold it
        self.commands.append(f"CONFIG SET {name} {value}")
        self.config[name] = str(value)

    def get(self, key):
        return self.keys.get(key)

    def set(self, key, value, px=None):
        assert not self.paused, "a write to a paused server waits until the pause ends"
        assert not self.fenced, "a fenced server refuses the write (NOREPLICAS)"
        self.commands.append(f"SET {key}")
        self.keys[key] = value

    def info(self, section):
        return {"master_repl_offset": self.offset, "master_replid": self.replid,
                "master_replid2": self.replid2, "second_repl_offset": self.second_offset}


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


def test_the_master_the_target_follows_is_marked_paused_and_caught_up_with(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.2.11:6379", offset=100)
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=100)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.2.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert done["done"] and done["from"] == "10.0.2.11:6379" and done["offset"] == 100
    old = servers["10.0.2.11:6379"]
    # Marked (for its fence agent), then paused; not fenced: Redis refuses a write with
    # NOREPLICAS before it would pause it.
    assert old.paused and not old.fenced
    assert old.commands.index(f"SET {baton_redis.HANDOVER_KEY}") < old.commands.index(
        "CLIENT PAUSE 60000 WRITE")
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


def test_a_rerun_that_finds_both_masters_holds_the_old_one_and_counts_what_it_took(lab):
    """A run killed between Redis's promotion and the old master's release left two masters:
    the old one's clients wait (paused) for DNS instead of meeting READONLY, and the writes it
    took after the promotion are counted."""
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master", offset=200, replid="r2", replid2="r1",
                                          second_offset=150)
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=180, replid="r1")
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert done["done"] and done["from"] == "10.0.2.11:6379" and done["to"] == "10.0.1.11:6379"
    assert done["lost_bytes"] == 30
    assert servers["10.0.2.11:6379"].paused


def test_a_rerun_renews_a_pause_an_interrupted_run_left_without_writing_behind_it(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master", offset=200, replid="r2", replid2="r1",
                                          second_offset=180)
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=180, paused=True, marked=True)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert done["done"] and done["lost_bytes"] == 0
    assert "CLIENT PAUSE 60000 WRITE" in servers["10.0.2.11:6379"].commands


def test_a_rerun_holds_an_old_master_its_agent_fenced_without_writing_to_it(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master", offset=200, replid="r2")
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=180, fenced=True)
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)  # FakeRedis.set asserts it is not fenced
    assert done["done"] and done["from"] == "10.0.2.11:6379"
    assert servers["10.0.2.11:6379"].paused


def test_a_rerun_after_the_move_finished_hands_nothing_over(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("master")
    servers["10.0.2.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.1.11:6379")
    assert module.hand_over(OUTSIDE, NEW, PARAMS) == {
        "done": False, "needed": False, "why": "10.0.1.11:6379 is a master already"}
    assert not any(s.paused for s in servers.values())


def test_another_master_taking_writes_outside_the_target_stops_the_handover(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.2.11:6379")
    servers["10.0.2.11:6379"] = FakeRedis("master")
    servers["10.0.3.11:6379"] = FakeRedis("master")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert not done["done"] and done["needed"] and "10.0.3.11:6379 take writes" in done["why"]
    assert not any(s.paused for s in servers.values())


def test_a_fenced_master_outside_the_target_is_not_a_second_writer(lab):
    """A region back from a loss and not failed back yet: its master is fenced, takes no
    write, and does not stop a switchover between two other regions."""
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.2.11:6379", offset=100)
    servers["10.0.2.11:6379"] = FakeRedis("master", offset=100)
    servers["10.0.3.11:6379"] = FakeRedis("master", fenced=True)
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert done["done"] and done["from"] == "10.0.2.11:6379"
    assert not servers["10.0.3.11:6379"].paused


def test_a_new_master_that_follows_no_master_outside_the_target_gets_no_handover(lab):
    module, servers = lab
    servers["10.0.1.11:6379"] = FakeRedis("replica", "10.0.9.11:6379")
    servers["10.0.2.11:6379"] = FakeRedis("master")
    servers["10.0.3.11:6379"] = FakeRedis("replica", "10.0.2.11:6379")
    done = module.hand_over(OUTSIDE, NEW, PARAMS)
    assert not done["done"] and done["needed"] and "follows 10.0.9.11:6379" in done["why"]
    assert not servers["10.0.2.11:6379"].paused

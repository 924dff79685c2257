"""The zone's primary name server away from home: the witness's record, the name-server gate's
verdict (which copies may serve), and what the failover report says about it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from baton_failover import baton_failover_summary
from baton_witness import DNS_PRIMARY, WitnessUnavailable, parse_dns_primary

ROOT = Path(__file__).resolve().parents[2]
PRIMARY_CONF = 'zone "baton.internal" {\n    type primary;\n    file "/var/lib/bind/db.x";\n};\n'
SECONDARY_CONF = 'zone "baton.internal" {\n    type secondary;\n    primaries { 10.0.0.1; };\n};\n'


def load_gate():
    spec = importlib.util.spec_from_file_location(
        "baton_dns_gate", ROOT / "roles" / "dns" / "files" / "baton_dns_gate.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeEntry:
    def __init__(self, value: str) -> None:
        self.value = value


def gate_with(monkeypatch, tmp_path, conf: str, stored: Any) -> tuple[bool, str]:
    """The gate's verdict on global-1 with this named.conf.local and this witness value
    (None: no key; an exception: the witness does not answer)."""
    gate = load_gate()

    class FakeWitness:
        def __init__(self, endpoints, timeout, budget, client=None) -> None:
            assert endpoints == ["10.0.1.11:2391"]

        def get(self, key: str):
            assert key == DNS_PRIMARY
            if isinstance(stored, Exception):
                raise stored
            return FakeEntry(stored) if stored is not None else None

    monkeypatch.setattr(gate, "Witness", FakeWitness)
    path = tmp_path / "named.conf.local"
    path.write_text(conf)
    return gate.verdict({"host": "global-1", "home": "global-1",
                         "endpoints": ["10.0.1.11:2391"], "conf": str(path)})


AWAY = json.dumps({"host": "eu-west-1", "address": "10.0.3.11", "since": "2026-12-03T18:00:00Z"})


def test_no_record_means_the_primary_is_at_home():
    assert parse_dns_primary(None, "global-1") == {"host": "global-1", "home": "global-1",
                                                  "away": False}
    record = parse_dns_primary(AWAY, "global-1")
    assert record["host"] == "eu-west-1" and record["away"] is True


@pytest.mark.parametrize("value", ["not json", "[]", '{"address": "10.0.0.1"}'])
def test_a_malformed_record_is_refused(value):
    with pytest.raises(ValueError, match="/baton/dns_primary"):
        parse_dns_primary(value, "global-1")


def test_the_returning_primary_does_not_serve_while_the_witness_names_another(monkeypatch,
                                                                              tmp_path):
    ok, why = gate_with(monkeypatch, tmp_path, PRIMARY_CONF, AWAY)
    assert not ok
    assert "eu-west-1" in why and "failback.yml" in why


def test_the_home_primary_serves_when_the_record_is_gone(monkeypatch, tmp_path):
    assert gate_with(monkeypatch, tmp_path, PRIMARY_CONF, None)[0]


def test_an_interim_primary_that_the_primary_moved_away_from_does_not_serve(monkeypatch,
                                                                          tmp_path):
    gate = load_gate()
    monkeypatch.setattr(gate, "Witness", lambda *a, **k: type(
        "W", (), {"get": lambda self, key: None})())
    path = tmp_path / "named.conf.local"
    path.write_text(PRIMARY_CONF)
    ok, why = gate.verdict({"host": "eu-west-1", "home": "global-1",
                            "endpoints": ["10.0.1.11:2391"], "conf": str(path)})
    assert not ok and "global-1" in why


def test_a_secondary_always_serves(monkeypatch, tmp_path):
    assert gate_with(monkeypatch, tmp_path, SECONDARY_CONF, AWAY)[0]


def test_without_the_witness_named_starts_as_configured(monkeypatch, tmp_path):
    ok, why = gate_with(monkeypatch, tmp_path, PRIMARY_CONF, WitnessUnavailable("none answered"))
    assert ok and "cannot say" in why


def test_the_report_says_where_the_zones_updates_went():
    report = {"kind": "failover", "target": "eu-west", "old": "us-west", "already": False,
              "epoch": 7, "rto_seconds": 20.0, "data_lost_known": True, "data_lost_bytes": 0,
              "data_lost_source": "live", "data_loss_window": None, "actions_taken": ["x"],
              "not_following": [], "timeline": [], "promoted": True,
              "dns_primary": {"host": "eu-west-1", "away": True,
                              "why": "global-1 did not answer: timed out"}}
    lines = baton_failover_summary(report)
    assert any("eu-west-1" in line and "failback.yml" in line and "global-1 did not answer"
               in line for line in lines), lines
    report["dns_primary"] = {"host": "global-1", "away": False, "why": ""}
    assert not any(line.startswith("DNS:") for line in baton_failover_summary(report))


def test_the_timer_judges_what_named_serves_not_the_file(monkeypatch, tmp_path):
    """A run killed between rewriting named.conf.local (secondary) and restarting named leaves
    a primary copy running: the timer's check reads the running type."""
    gate = load_gate()

    class FakeWitness:
        def __init__(self, *a, **k) -> None:
            pass

        def get(self, key):
            return FakeEntry(AWAY)

    monkeypatch.setattr(gate, "Witness", FakeWitness)
    path = tmp_path / "named.conf.local"
    path.write_text(SECONDARY_CONF)
    cfg = {"host": "global-1", "home": "global-1", "endpoints": ["x:2391"], "conf": str(path)}
    assert gate.verdict(cfg)[0]  # by the file: a secondary
    assert not gate.verdict(cfg, serves_primary=True)[0]  # by what runs: a stale primary

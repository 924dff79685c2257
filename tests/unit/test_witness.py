"""The global witness: its etcd client (against recorded etcd 3.4 gateway replies on loopback),
the timing rules, the agent's decision and the failover lock's."""

from __future__ import annotations

import base64
import json
import os
import sys
import threading
import time
import types
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from baton_witness import (
    HOLDER,
    LOCK,
    Witness,
    WitnessError,
    WitnessUnavailable,
    agent_step,
    alive_key,
    alive_prefix,
    fresh_state,
    holder_value,
    keep_lock,
    lock_decision,
    parse_holder,
    prefix_end,
    process_alive,
    timing_problems,
)

AGENT_DIR = Path(__file__).resolve().parents[2] / "roles/witness/files"

DEFAULTS = {"interval": 1.0, "fence_after": 5.0, "lease_ttl": 10, "promotion_wait": 15.0}
CFG = {"region": "us-east", "fence_after": DEFAULTS["fence_after"]}


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


# --- a recorded etcd on 127.0.0.1 ---------------------------------------------------------------

HEADER = {"cluster_id": "324952591200643719", "member_id": "3319814642761637952",
          "revision": "9", "raft_term": "2"}
NOT_FOUND = (404, {"error": "etcdserver: requested lease not found",
                   "message": "etcdserver: requested lease not found", "code": 5})
NO_LEADER = (503, {"error": "etcdserver: request timed out",
                   "message": "etcdserver: request timed out", "code": 14})


class FakeEtcd:
    """Answers each POST /v3/<method> with the next recorded (status, body) for that path."""

    def __init__(self) -> None:
        self.replies: dict[str, list[tuple[int, Any]]] = {}
        self.requests: list[tuple[str, dict[str, Any]]] = []
        self.tokens: list[str | None] = []  # each request's Authorization header
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])) or b"{}")
                fake.requests.append((self.path, body))
                fake.tokens.append(self.headers.get("Authorization"))
                status, reply = fake.replies.get(self.path, [(404, {"message": "no route"})]).pop(0)
                data = json.dumps(reply).encode() + (b"\n" if "keepalive" in self.path else b"")
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.02},
                         daemon=True).start()

    def reply(self, path: str, *replies: tuple[int, Any]) -> None:
        self.replies.setdefault(path, []).extend(replies)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def etcd():
    server = FakeEtcd()
    yield server
    server.close()


def closed_port() -> str:
    """An address on loopback where nothing listens (connection refused)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{sock.getsockname()[1]}"


# --- the client ---------------------------------------------------------------------------------


def test_get_sends_the_key_in_base64_to_v3_range_and_decodes_etcds_string_integers(etcd):
    etcd.reply("/v3/kv/range", (200, {"header": HEADER, "count": "1", "kvs": [{
        "key": b64(HOLDER), "create_revision": "2", "mod_revision": "7", "version": "3",
        "value": b64('{"region": "us-east", "epoch": 3}'), "lease": "42"}]}))
    entry = Witness([etcd.endpoint]).get(HOLDER)
    assert etcd.requests == [("/v3/kv/range", {"key": b64(HOLDER)})]
    assert (entry.key, entry.value) == (HOLDER, '{"region": "us-east", "epoch": 3}')
    assert (entry.mod_revision, entry.create_revision, entry.lease) == (7, 2, 42)


def test_get_of_a_missing_key_is_none(etcd):
    etcd.reply("/v3/kv/range", (200, {"header": HEADER}))  # etcd omits kvs and count
    assert Witness([etcd.endpoint]).get(HOLDER) is None


def test_get_prefix_asks_for_the_range_up_to_the_prefixs_successor(etcd):
    etcd.reply("/v3/kv/range", (200, {"header": HEADER, "count": "2", "kvs": [
        {"key": b64(alive_key("us-east", "a")), "value": b64("1"), "mod_revision": "5",
         "create_revision": "5", "lease": "7"},
        {"key": b64(alive_key("us-east", "b")), "value": b64("2"), "mod_revision": "6",
         "create_revision": "6"}]}))
    entries = Witness([etcd.endpoint]).get_prefix(alive_prefix("us-east"))
    assert etcd.requests[0][1] == {"key": b64("/baton/alive/us-east/"),
                                   "range_end": b64("/baton/alive/us-east0")}
    assert [(e.key, e.lease) for e in entries] == [("/baton/alive/us-east/a", 7),
                                                   ("/baton/alive/us-east/b", 0)]


def test_prefix_end_increments_the_last_byte_that_can_be():
    assert prefix_end("/baton/") == b"/baton0"
    assert prefix_end("a\xff") == b"a\xc3\xc0"  # U+00FF is c3 bf in UTF-8
    assert prefix_end("") == b"\x00"


def test_put_with_a_lease_sends_it_and_returns_the_new_revision(etcd):
    etcd.reply("/v3/kv/put", (200, {"header": {**HEADER, "revision": "12"}}))
    assert Witness([etcd.endpoint]).put("/k", "v", lease=99) == 12
    assert etcd.requests[0][1] == {"key": b64("/k"), "value": b64("v"), "lease": "99"}


def test_create_is_a_txn_on_create_revision_zero_and_says_whether_it_wrote(etcd):
    etcd.reply("/v3/kv/txn", (200, {"header": HEADER, "succeeded": True,
                                    "responses": [{"response_put": {"header": HEADER}}]}),
               (200, {"header": HEADER}))  # a failed compare: etcd omits "succeeded"
    witness = Witness([etcd.endpoint])
    assert witness.create(HOLDER, "x") is True
    assert witness.create(HOLDER, "x") is False
    assert etcd.requests[0][1] == {
        "compare": [{"target": "CREATE", "key": b64(HOLDER), "result": "EQUAL",
                     "create_revision": "0"}],
        "success": [{"request_put": {"key": b64(HOLDER), "value": b64("x")}}]}


def test_put_unless_moved_writes_only_while_the_other_key_is_unchanged(etcd):
    etcd.reply("/v3/kv/txn", (200, {"header": HEADER, "succeeded": True}),
               (200, {"header": HEADER}))
    witness = Witness([etcd.endpoint])
    assert witness.put_unless_moved("/baton/alive/a/n", "v", 7, {HOLDER: 41}) is True
    assert witness.put_unless_moved("/baton/alive/a/n", "v", 7, {HOLDER: 41}) is False
    assert etcd.requests[0][1] == {
        "compare": [{"target": "MOD", "key": b64(HOLDER), "result": "EQUAL", "mod_revision": "41"}],
        "success": [{"request_put": {"key": b64("/baton/alive/a/n"), "value": b64("v"),
                                     "lease": "7"}}]}


def test_swap_is_a_compare_and_swap_on_mod_revision(etcd):
    etcd.reply("/v3/kv/txn", (200, {"header": HEADER}))
    assert Witness([etcd.endpoint]).swap(HOLDER, "y", expect_mod_revision=7, lease=5) is False
    assert etcd.requests[0][1] == {
        "compare": [{"target": "MOD", "key": b64(HOLDER), "result": "EQUAL",
                     "mod_revision": "7"}],
        "success": [{"request_put": {"key": b64(HOLDER), "value": b64("y"), "lease": "5"}}]}


def test_swap_can_also_require_other_keys_unchanged_in_the_same_transaction(etcd):
    etcd.reply("/v3/kv/txn", (200, {"header": HEADER, "succeeded": False}))
    assert Witness([etcd.endpoint]).swap(HOLDER, "y", expect_mod_revision=7,
                                         also={LOCK: 12}) is False
    body = etcd.requests[0][1]
    assert body["compare"] == [
        {"target": "MOD", "key": b64(HOLDER), "result": "EQUAL", "mod_revision": "7"},
        {"target": "MOD", "key": b64(LOCK), "result": "EQUAL", "mod_revision": "12"}]
    assert body["success"] == [{"request_put": {"key": b64(HOLDER), "value": b64("y")}}]


def test_delete_is_plain_without_an_expected_revision_and_guarded_with_one(etcd):
    etcd.reply("/v3/kv/deleterange", (200, {"header": HEADER, "deleted": "1"}),
               (200, {"header": HEADER}))
    etcd.reply("/v3/kv/txn", (200, {"header": HEADER, "succeeded": True}))
    witness = Witness([etcd.endpoint])
    assert witness.delete(LOCK) is True
    assert witness.delete(LOCK) is False
    assert witness.delete(LOCK, expect_mod_revision=4) is True
    assert etcd.requests[2][1]["success"] == [{"request_delete_range": {"key": b64(LOCK)}}]
    assert etcd.requests[2][1]["compare"][0]["mod_revision"] == "4"


def test_leases_grant_keepalive_time_to_live_and_revoke(etcd):
    etcd.reply("/v3/lease/grant", (200, {"header": HEADER, "ID": "2324035663259186185",
                                         "TTL": "10"}))
    etcd.reply("/v3/lease/keepalive",
               (200, {"result": {"header": HEADER, "ID": "2324035663259186185", "TTL": "10"}}),
               (200, {"result": {"header": HEADER, "ID": "2324035663259186185"}}))  # expired
    etcd.reply("/v3/lease/timetolive", (200, {"header": HEADER, "ID": "1", "TTL": "-1"}))
    etcd.reply("/v3/lease/revoke", (200, {"header": HEADER}), NOT_FOUND)
    witness = Witness([etcd.endpoint])
    lease = witness.grant(10)
    assert lease == 2324035663259186185
    assert etcd.requests[0][1] == {"TTL": "10"}
    assert witness.keepalive(lease) == 10
    assert etcd.requests[1][1] == {"ID": "2324035663259186185"}
    assert witness.keepalive(lease) == 0
    assert witness.time_to_live(lease) == -1
    assert witness.revoke(lease) is True
    assert witness.revoke(lease) is False  # already gone


def test_a_definite_refusal_raises_witness_error_without_asking_another_member(etcd):
    etcd.reply("/v3/kv/put", NOT_FOUND)
    other = FakeEtcd()
    try:
        with pytest.raises(WitnessError) as info:
            Witness([etcd.endpoint, other.endpoint]).put("/k", "v", lease=12345)
        assert not isinstance(info.value, WitnessUnavailable)
        assert info.value.code == 5
        assert "requested lease not found" in str(info.value)
        assert other.requests == []
    finally:
        other.close()


def test_the_client_moves_to_the_next_member_when_one_refuses_the_connection(etcd):
    etcd.reply("/v3/kv/range", (200, {"header": HEADER}), (200, {"header": HEADER}))
    dead = closed_port()
    witness = Witness([dead, etcd.endpoint], timeout=1)
    assert witness.get(HOLDER) is None
    assert witness.get(HOLDER) is None  # straight to the member that answered last
    assert len(etcd.requests) == 2


def test_the_client_moves_on_when_a_member_has_no_leader(etcd):
    etcd.reply("/v3/kv/range", NO_LEADER)
    good = FakeEtcd()
    good.reply("/v3/kv/range", (200, {"header": HEADER}))
    try:
        assert Witness([etcd.endpoint, good.endpoint]).get(HOLDER) is None
        assert len(good.requests) == 1
    finally:
        good.close()


def test_a_keepalive_stream_error_from_a_member_without_leader_moves_on(etcd):
    etcd.reply("/v3/lease/keepalive", (503, {"error": {
        "grpc_code": 14, "http_code": 503, "message": "etcdserver: no leader",
        "http_status": "Service Unavailable"}}))
    with pytest.raises(WitnessUnavailable, match="etcdserver: no leader"):
        Witness([etcd.endpoint]).keepalive(7)


BAD_TOKEN = (401, {"error": "etcdserver: invalid auth token",
                   "message": "etcdserver: invalid auth token", "code": 16})
USER = {"username": "baton-site-us-east", "password": "pw"}


def test_with_a_user_the_client_logs_in_once_and_sends_its_token(etcd):
    etcd.reply("/v3/auth/authenticate", (200, {"header": HEADER, "token": "T1"}))
    etcd.reply("/v3/kv/range", (200, {"header": HEADER}), (200, {"header": HEADER}))
    witness = Witness([etcd.endpoint], client=USER)
    assert witness.get(HOLDER) is None and witness.get(HOLDER) is None
    assert [path for path, _body in etcd.requests] == [
        "/v3/auth/authenticate", "/v3/kv/range", "/v3/kv/range"]
    assert etcd.requests[0][1] == {"name": "baton-site-us-east", "password": "pw"}
    assert etcd.tokens == [None, "T1", "T1"]


def test_a_member_that_no_longer_knows_the_token_gets_a_new_login_and_the_request_again(etcd):
    etcd.reply("/v3/auth/authenticate", (200, {"token": "T1"}), (200, {"token": "T2"}))
    etcd.reply("/v3/kv/range", BAD_TOKEN, (200, {"header": HEADER}))
    assert Witness([etcd.endpoint], client=USER).get(HOLDER) is None
    assert etcd.tokens == [None, "T1", None, "T2"]


def test_a_refused_login_says_which_user_and_is_not_retried_elsewhere(etcd):
    other = FakeEtcd()
    try:
        etcd.reply("/v3/auth/authenticate", (400, {
            "message": "etcdserver: authentication failed, invalid user ID or password",
            "code": 3}))
        with pytest.raises(WitnessError, match="login of etcd user 'baton-site-us-east'"):
            Witness([etcd.endpoint, other.endpoint], client=USER).get(HOLDER)
        assert other.requests == []
    finally:
        other.close()


def test_a_permission_denied_is_a_refusal_not_a_reason_to_log_in_again(etcd):
    etcd.reply("/v3/auth/authenticate", (200, {"token": "T1"}))
    etcd.reply("/v3/kv/put", (403, {"message": "etcdserver: permission denied", "code": 7}))
    with pytest.raises(WitnessError, match="permission denied") as caught:
        Witness([etcd.endpoint], client=USER).put(HOLDER, "x")
    assert caught.value.code == 7
    assert [path for path, _body in etcd.requests] == ["/v3/auth/authenticate", "/v3/kv/put"]


def test_a_client_with_a_ca_speaks_https_and_refuses_a_plain_http_member(etcd, tmp_path):
    from baton_witness import Client

    assert Client.from_mapping({}).scheme == "http"
    assert Client.from_mapping({"ca_file": "/x/ca.crt"}).scheme == "https"
    # A CA file that does not exist is an error at once, not a silent plain-HTTP client.
    with pytest.raises(OSError):
        Witness([etcd.endpoint], client={"ca_file": str(tmp_path / "missing.crt")})


def test_no_member_answering_raises_witness_unavailable_naming_each_and_its_error():
    first, second = closed_port(), closed_port()
    with pytest.raises(WitnessUnavailable) as info:
        Witness([first, second], timeout=1).get(HOLDER)
    message = str(info.value)
    assert f"tried {first}, {second}" in message
    assert message.count("refused") == 2


def test_the_client_ignores_an_http_proxy_in_the_environment(etcd, monkeypatch):
    monkeypatch.setenv("http_proxy", f"http://{closed_port()}")
    monkeypatch.setenv("HTTP_PROXY", f"http://{closed_port()}")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    etcd.reply("/v3/kv/range", (200, {"header": HEADER}))
    assert Witness([etcd.endpoint]).get(HOLDER) is None
    assert len(etcd.requests) == 1


class HangingOpener:
    """Every attempt times out after its full timeout; records the timeouts it was given."""

    def __init__(self) -> None:
        self.timeouts: list[float] = []

    def open(self, request: Any, timeout: float) -> Any:
        self.timeouts.append(timeout)
        time.sleep(timeout)
        raise TimeoutError("timed out")


def test_a_budget_bounds_one_call_over_all_members_and_the_next_call_starts_elsewhere():
    opener = HangingOpener()
    witness = Witness(["10.0.0.1:2391", "10.0.0.2:2391", "10.0.0.3:2391"], timeout=1.0,
                      budget=0.2, opener=opener)
    started = time.monotonic()
    with pytest.raises(WitnessUnavailable) as info:
        witness.get(HOLDER)
    assert time.monotonic() - started < 0.5
    assert "10.0.0.1:2391: timed out" in str(info.value)
    assert "not tried" in str(info.value)
    assert opener.timeouts[0] == pytest.approx(0.2, abs=0.01)
    with pytest.raises(WitnessUnavailable, match=r"tried 10\.0\.0\.2:2391"):
        witness.get(HOLDER)


def test_holder_records_round_trip_and_a_malformed_one_is_refused():
    record = parse_holder(holder_value("us-west", 4, "failover.yml", 1735689600.0))
    assert record == {"region": "us-west", "epoch": 4, "since": "2025-01-01T00:00:00Z",
                      "by": "failover.yml"}
    assert parse_holder(None) is None
    with pytest.raises(ValueError, match="not a holder record"):
        parse_holder('{"region": "us-west"}')
    with pytest.raises(ValueError):
        parse_holder("garbage")


# --- timing -------------------------------------------------------------------------------------


def test_the_default_timing_satisfies_every_rule():
    assert timing_problems(**DEFAULTS) == []


def test_timing_refuses_an_interval_not_below_the_fence_time():
    problems = timing_problems(5, 5, 20, 20, election_timeout_ms=0, watchdog=14, fence_time=3)
    assert len(problems) == 1
    assert "baton_agent_interval (5 s) must be less than baton_fence_after (5 s)" in problems[0]


def test_timing_refuses_a_lease_that_can_expire_before_the_node_has_fenced():
    problems = timing_problems(1, 9, 10, 15)
    assert len(problems) == 1
    assert "baton_fence_after + baton_agent_interval + baton_fence_time (13 s)" in problems[0]
    assert "raise baton_witness_lease_ttl above 13" in problems[0]


def test_timing_counts_the_fences_own_steps():
    """6 s to notice plus 3 s of fence steps fit a 10 s lease; 4.5 s of steps do not."""
    assert timing_problems(1, 5, 10, 15, fence_time=3) == []
    problems = timing_problems(1, 5, 10, 15, fence_time=4.5)
    assert len(problems) == 1
    assert "(10.5 s) must be less than baton_witness_lease_ttl (10 s)" in problems[0]


def test_timing_refuses_a_watchdog_that_lets_a_hung_agent_outlive_its_lease():
    problems = timing_problems(1, 5, 10, 15, watchdog=8)
    assert problems == [
        "baton_agent_watchdog (8 s) must be more than the longest a healthy loop is silent "
        "plus a second (max(1.5 x baton_agent_interval + max(2, baton_agent_interval), 3) + 1 "
        "= 4.5 s) and, with baton_fence_time (3 s), less than baton_witness_lease_ttl (10 s), "
        "so that a hung "
        "agent is killed (and Patroni, bound to it, stopped) before its lease can expire: "
        "change baton_agent_watchdog"]
    assert timing_problems(1, 5, 10, 15, watchdog=4.5) != []  # no margin over a slow loop
    assert timing_problems(0.5, 5, 10, 15, watchdog=3) != []  # a 3 s call alone is that long
    assert timing_problems(3, 5, 20, 20, election_timeout_ms=0, watchdog=6) != []


def test_timing_refuses_a_promotion_wait_shorter_than_the_lease():
    problems = timing_problems(1, 5, 10, 8)
    assert problems == [
        "baton_witness_lease_ttl (10 s) must not exceed baton_promotion_wait (8 s), or a "
        "failover could promote another region while the old one's leases are still alive: "
        "raise baton_promotion_wait to at least 10"]


def test_timing_names_every_violation_once():
    assert len(timing_problems(0, 0, 0, -1)) == 5


def test_timing_refuses_a_fence_time_a_witness_election_can_reach():
    problems = timing_problems(1, 5, 10, 15, election_timeout_ms=2500)
    assert problems == [
        "2 x the witness's election timeout + baton_agent_interval (6 s) must be less than "
        "baton_fence_after (5 s), or one witness election fences the holder: lower "
        "witness_election_timeout or raise baton_fence_after"]


def test_a_holder_that_stops_renewing_fences_before_its_lease_can_expire_and_before_promotion():
    """With the defaults, a node whose last renewal was at t, looping every interval from any
    phase, fences by t + fence_after + interval, strictly before t + lease_ttl (the earliest its
    lease can expire on the witness), and the controller promotes no earlier than
    t + promotion_wait >= t + lease_ttl."""
    interval, fence_after = DEFAULTS["interval"], DEFAULTS["fence_after"]
    lease_ttl, promotion_wait = DEFAULTS["lease_ttl"], DEFAULTS["promotion_wait"]
    t = 1000.0
    for phase in (0.0, 0.001, 0.25, 0.5, 0.999):
        state = {"lease": 7, "last_renewal": t, "holder_epoch": 3}
        now, fenced_at = t + phase, None
        while fenced_at is None and now < t + 60:
            actions, state = agent_step(state, {"witness_ok": False, "holder": None,
                                                "writable": True, "fenced": False}, now, CFG)
            if "fence" in actions:
                fenced_at = now
            now += interval
        assert fenced_at is not None
        assert t + fence_after < fenced_at <= t + fence_after + interval
        assert fenced_at + 3.0 < t + lease_ttl  # the fence's steps (baton_fence_time) done
        assert t + lease_ttl <= t + promotion_wait


# --- the agent's decision -----------------------------------------------------------------------

HOLDS = {"lease": 7, "last_renewal": 100.0, "holder_epoch": 3}


def observed(**kw: Any) -> dict[str, Any]:
    return {"witness_ok": True, "holder": {"region": "us-east", "epoch": 3}, "writable": True,
            "fenced": False, **kw}


def test_agent_stays_fenced_while_the_marker_exists_even_if_its_region_holds_the_baton():
    actions, state = agent_step(HOLDS, observed(fenced=True), 101.0, CFG)
    assert actions == ["stay_fenced"]
    assert "us-east holds the baton" in state["note"]
    assert (state["lease"], state["holder_epoch"]) == (None, None)


def test_agent_stays_fenced_when_the_witness_is_unreachable():
    actions, _ = agent_step(HOLDS, observed(fenced=True, witness_ok=False, holder=None), 200, CFG)
    assert actions == ["stay_fenced"]


def test_agent_takes_a_lease_when_its_region_holds_the_baton_and_it_has_none():
    actions, state = agent_step(fresh_state(), observed(writable=False), 100.0, CFG)
    assert actions == ["grant"]
    assert state["lease"] is None  # the caller records the lease once granted


def test_agent_renews_its_lease_while_its_region_holds_the_baton():
    actions, state = agent_step(HOLDS, observed(), 101.0, CFG)
    assert actions == ["keepalive"]
    assert state["lease"] == 7 and state["last_renewal"] == 100.0  # the caller updates it


def test_agent_renews_even_late_when_the_witness_answers_again_within_the_lease():
    actions, _ = agent_step(HOLDS, observed(), 104.0, CFG)
    assert actions == ["keepalive"]


def test_agent_fences_a_holder_node_that_has_not_renewed_for_longer_than_fence_after():
    actions, state = agent_step(HOLDS, observed(witness_ok=False, holder=None), 105.2, CFG)
    assert actions == ["fence"]
    assert state["note"] == "no lease renewal for 5.2 s"


def test_agent_fences_a_cut_off_holder_replica_too_so_it_cannot_be_promoted_in_region():
    actions, _ = agent_step(HOLDS, observed(witness_ok=False, holder=None, writable=False),
                            106.0, CFG)
    assert actions == ["fence"]


def test_agent_whose_lease_expired_but_still_holds_the_epoch_fences_when_cut_off():
    state = {"lease": None, "last_renewal": 100.0, "holder_epoch": 3}
    actions, _ = agent_step(state, observed(witness_ok=False, holder=None), 106.0, CFG)
    assert actions == ["fence"]


def test_agent_waits_while_the_witness_is_unreachable_for_no_longer_than_fence_after():
    actions, state = agent_step(HOLDS, observed(witness_ok=False, holder=None), 105.0, CFG)
    assert actions == ["wait"]
    assert "fencing after 5 s" in state["note"]


def test_agent_that_never_held_the_baton_only_waits_when_the_witness_is_unreachable():
    actions, _ = agent_step(fresh_state(), observed(witness_ok=False, holder=None), 1e6, CFG)
    assert actions == ["wait"]


def test_agent_releases_and_fences_a_writable_node_when_another_region_holds_the_baton():
    actions, state = agent_step(HOLDS, observed(holder={"region": "us-west", "epoch": 4}),
                                101.0, CFG)
    assert actions == ["fence", "release"]
    assert state["note"] == ("us-west holds the baton at epoch 4 and this node's PostgreSQL "
                             "is writable")
    assert (state["lease"], state["holder_epoch"], state["last_renewal"]) == (None, None, None)


def test_agent_releases_but_does_not_fence_a_replica_when_another_region_holds_the_baton():
    actions, _ = agent_step(HOLDS, observed(holder={"region": "us-west", "epoch": 4},
                                            writable=False), 101.0, CFG)
    assert actions == ["release"]


def test_a_former_holder_whose_postgresql_does_not_answer_keeps_its_lease_and_looks_again():
    """A demoted primary restarting as a standby answers nothing for a moment: it is not
    fenced for that, but its lease is not let go until it is known not to be writable."""
    actions, state = agent_step(HOLDS, observed(holder={"region": "us-west", "epoch": 4},
                                                writable=None), 101.0, CFG)
    assert actions == ["wait"] and state["lease"] == HOLDS["lease"]
    assert "does not answer yet" in state["note"]
    actions, _ = agent_step(state, observed(holder={"region": "us-west", "epoch": 4},
                                            writable=True), 102.0, CFG)
    assert actions == ["fence", "release"]


def test_agent_in_a_standby_region_leaves_an_unanswering_postgresql_alone():
    actions, _ = agent_step(fresh_state(), observed(holder={"region": "us-west", "epoch": 4},
                                                    writable=None), 101.0, CFG)
    assert actions == ["standby"]


def test_agent_in_a_standby_region_fences_a_writable_postgresql():
    actions, _ = agent_step(fresh_state(), observed(holder={"region": "us-west", "epoch": 4}),
                            101.0, CFG)
    assert actions == ["fence"]


def test_agent_fences_when_the_baton_left_and_came_back_while_it_held_an_older_epoch():
    actions, state = agent_step(HOLDS, observed(holder={"region": "us-east", "epoch": 5}),
                                101.0, CFG)
    assert actions == ["fence", "release"]
    assert "epoch 3 -> 5" in state["note"]


def test_agent_that_followed_the_baton_away_takes_a_new_lease_when_it_comes_back():
    _, state = agent_step(HOLDS, observed(holder={"region": "us-west", "epoch": 4},
                                          writable=False), 101.0, CFG)
    actions, _ = agent_step(state, observed(holder={"region": "us-east", "epoch": 5}), 102.0, CFG)
    assert actions == ["grant"]


def test_agent_is_idle_when_the_witness_has_no_holder_key():
    actions, state = agent_step(fresh_state(), observed(holder=None), 100.0, CFG)
    assert actions == ["idle"]
    assert "first deploy" in state["note"]


def test_a_holder_whose_renewals_keep_failing_while_reads_succeed_fences():
    """The witness answers the holder read but refuses or loses every renewal: the lease ends
    on the witness all the same, so the node fences after fence_after like a cut-off one."""
    actions, _ = agent_step(HOLDS, observed(holding_for=60), 104.9, CFG)
    assert actions == ["keepalive"]
    actions, state = agent_step(HOLDS, observed(holding_for=60), 105.2, CFG)
    assert actions == ["fence"]
    assert state["note"] == "us-east holds the baton (epoch 3) but no renewal succeeded for 5.2 s"
    # A lease lost on the witness (keepalive answered TTL 0) and no new one granted since.
    lost = {"lease": None, "last_renewal": 100.0, "holder_epoch": 3}
    assert agent_step(lost, observed(holding_for=60), 105.2, CFG)[0] == ["fence"]


def test_a_node_the_baton_just_came_to_gets_fence_after_to_take_its_lease():
    """A restarted agent, a rebooted node, or a long-running agent whose region was just
    given the baton: the failed-renewal rule counts from when it first read its region as
    the holder (after a reboot the saved renewal is old; a new holder never renewed)."""
    assert agent_step(HOLDS, observed(holding_for=1.0, agent_age=1.0), 400.0,
                      CFG)[0] == ["keepalive"]
    assert agent_step(fresh_state(), observed(holding_for=0.0, agent_age=3600), 400.0,
                      CFG)[0] == ["grant"]
    assert agent_step(fresh_state(), observed(holding_for=4.0), 400.0, CFG)[0] == ["grant"]
    assert agent_step(fresh_state(), observed(holding_for=5.5), 400.0, CFG)[0] == ["fence"]


def test_a_long_running_agent_in_a_region_given_the_baton_grants_instead_of_fencing(
        agent_module, tmp_path):
    witness = FakeWitness({"region": "us-west", "epoch": 3})
    agent = make_agent(agent_module, tmp_path, witness, writable=False)
    agent.started -= 3600
    assert agent.step() == ["standby"]
    witness.holder = {"region": "us-east", "epoch": 4}  # the baton comes to us-east
    assert agent.step() == ["grant"]


def test_a_holder_key_that_vanishes_after_it_was_seen_fails_closed():
    """Deleting /baton/holder must not set anyone free (no holder reads as "first deploy"): a
    node that has seen a holder treats its absence as a witness that does not answer."""
    gone = observed(holder=None, holder_seen=3)
    actions, state = agent_step(HOLDS, gone, 104.0, CFG)
    assert actions == ["wait"]
    assert "the holder key vanished from the witness (epoch 3 was seen)" in state["note"]
    actions, state = agent_step(HOLDS, gone, 105.5, CFG)
    assert actions == ["fence"]
    assert "no lease renewal for 5.5 s (the holder key vanished" in state["note"]
    # A standby region's replica waits; a writable node that holds nothing is fenced.
    assert agent_step(fresh_state(), {**gone, "writable": False, "agent_age": 60}, 200.0,
                      CFG)[0] == ["wait"]
    assert agent_step(fresh_state(), {**gone, "agent_age": 60}, 200.0, CFG)[0] == ["fence"]
    # Never seen: the first deploy, before site.yml writes the key.
    assert agent_step(fresh_state(), observed(holder=None), 200.0, CFG)[0] == ["idle"]


def test_agent_step_does_not_change_the_state_it_is_given():
    state = dict(HOLDS)
    agent_step(state, observed(holder={"region": "us-west", "epoch": 4}), 101.0, CFG)
    assert state == HOLDS


# --- the failover lock --------------------------------------------------------------------------

ME = {"run_id": "r2", "target": "us-west", "kind": "failover", "user": "bob", "host": "ctl-1",
      "pid": 200, "pid_start": 5000, "started": "2025-01-01T00:10:00Z"}
OTHER = {"run_id": "r1", "target": "eu-west", "kind": "switchover", "user": "alice",
         "host": "ctl-1", "pid": 100, "pid_start": 4000, "started": "2025-01-01T00:00:00Z"}
NOW = 1735690200.0  # 2025-01-01T00:10:00Z


def test_lock_is_acquired_when_free():
    decision, message = lock_decision(None, ME, NOW, lambda *_: True, "ctl-1")
    assert decision == "acquire"
    assert "r2" in message


def test_lock_held_by_this_run_is_already_mine():
    assert lock_decision(ME, ME, NOW, lambda *_: False, "ctl-1")[0] == "already_mine"


def test_lock_of_a_dead_run_on_this_host_is_taken_over():
    seen: list[tuple[int, int]] = []

    def pid_alive(pid: int, start: int) -> bool:
        seen.append((pid, start))
        return False

    decision, message = lock_decision(OTHER, ME, NOW, pid_alive, "ctl-1")
    assert decision == "take_over"
    assert seen == [(100, 4000)]
    assert "run r1 (switchover to eu-west) by alice@ctl-1" in message
    assert "process 100 no longer runs" in message


def test_lock_of_a_live_run_on_this_host_is_refused():
    decision, message = lock_decision(OTHER, ME, NOW, lambda *_: True, "ctl-1")
    assert decision == "refuse"
    assert "still running here as process 100" in message


def test_lock_held_from_another_host_is_refused_with_how_to_get_past_it():
    decision, message = lock_decision(OTHER, ME, NOW, lambda *_: False, "ctl-2")
    assert decision == "refuse"
    assert message == (
        "the baton lock is held by run r1 (switchover to eu-west) by alice@ctl-1, started "
        "2025-01-01T00:00:00Z, 10 min ago: wait for it to finish; if that run died, its lease "
        "expires by itself after baton_lock_ttl, or break the lock with -e break_lock=true")


def test_lock_record_without_a_pid_is_never_taken_over():
    record = {k: v for k, v in OTHER.items() if k != "pid"}
    assert lock_decision(record, ME, NOW, lambda *_: False, "ctl-1")[0] == "refuse"


# --- the agent process (files/baton_agent.py) with a fake witness -------------------------------


class FakeWitness:
    def __init__(self, holder: dict[str, Any] | None, fail: bool = False) -> None:
        self.holder, self.fail, self.calls = holder, fail, []
        self.leases: set[int] = set()
        self.revision = 41  # the holder key's mod_revision
        self.moved_meanwhile = False  # the baton moves between the agent's read and its write

    def _maybe_fail(self) -> None:
        if self.fail:
            raise WitnessUnavailable("no witness member answered (tried a): a: timed out")

    def get(self, key: str) -> Any:
        self.calls.append(("get", key))
        self._maybe_fail()
        if self.holder is None:
            return None
        return type("E", (), {"value": json.dumps(self.holder), "mod_revision": self.revision})()

    def grant(self, ttl: int) -> int:
        self.calls.append(("grant", ttl))
        self._maybe_fail()
        return 77

    def put(self, key: str, value: str, lease: int = 0) -> int:
        self.calls.append(("put", key, lease))
        return 1

    def put_unless_moved(self, key: str, value: str, lease: int,
                         unchanged: dict[str, int]) -> bool:
        self.calls.append(("put_unless_moved", key, lease, unchanged))
        return not self.moved_meanwhile and unchanged == {HOLDER: self.revision}

    def keepalive(self, lease: int) -> int:
        self.calls.append(("keepalive", lease))
        self._maybe_fail()
        return 10

    def time_to_live(self, lease: int) -> int:
        self.calls.append(("time_to_live", lease))
        self._maybe_fail()
        return 8 if lease in self.leases else -1

    def revoke(self, lease: int) -> bool:
        self.calls.append(("revoke", lease))
        return True


@pytest.fixture
def agent_module(monkeypatch):
    monkeypatch.syspath_prepend(str(AGENT_DIR))
    sys.modules.pop("baton_agent", None)
    import baton_agent

    return baton_agent


def make_agent(module: Any, tmp_path: Path, witness: FakeWitness, writable: bool = True) -> Any:
    (tmp_path / "metrics").mkdir()
    cfg = {**module.DEFAULTS, "region": "us-east", "node": "us-east-1",
           "endpoints": ["a:2391"], "marker": str(tmp_path / "fenced"),
           "metrics": str(tmp_path / "metrics/baton_agent.prom"),
           "state": str(tmp_path / "run/state.json")}
    agent = module.Agent(cfg, witness=witness)
    agent.writable = lambda: writable
    return agent


def test_agent_process_takes_a_lease_writes_its_alive_key_and_metrics(agent_module, tmp_path):
    witness = FakeWitness({"region": "us-east", "epoch": 3})
    agent = make_agent(agent_module, tmp_path, witness)
    assert agent.step() == ["grant"]
    assert ("put_unless_moved", "/baton/alive/us-east/us-east-1", 77, {HOLDER: 41}) \
        in witness.calls
    assert agent.state["lease"] == 77 and agent.state["holder_epoch"] == 3
    assert agent.step() == ["keepalive"]
    metrics = (tmp_path / "metrics/baton_agent.prom").read_text()
    assert 'baton_agent_holds_baton{region="us-east",node="us-east-1"} 1' in metrics
    assert 'baton_agent_holder_epoch{region="us-east",node="us-east-1"} 3' in metrics
    saved = json.loads((tmp_path / "run/state.json").read_text())
    assert saved["lease"] == 77


def test_a_holder_node_unfenced_by_an_operator_takes_its_lease_instead_of_fencing_again(
        agent_module, tmp_path, monkeypatch):
    witness = FakeWitness({"region": "us-east", "epoch": 3})
    agent = make_agent(agent_module, tmp_path, witness)
    Path(agent.cfg["marker"]).write_text("{}")
    clock = [1000.0]
    monkeypatch.setattr(agent_module.time, "monotonic", lambda: clock[0])
    assert agent.step() == ["stay_fenced"]
    clock[0] += 60  # fenced for a minute while its region holds the baton
    assert agent.step() == ["stay_fenced"]
    Path(agent.cfg["marker"]).unlink()  # baton_agent.py unfence
    assert agent.step() == ["grant"]


def test_agent_takes_no_lease_when_the_baton_moved_between_its_read_and_its_write(
        agent_module, tmp_path):
    # The controller reads the old region's liveness keys right after the move: a key
    # written after it (by a loop that read the holder before it) must not exist.
    witness = FakeWitness({"region": "us-east", "epoch": 3})
    witness.moved_meanwhile = True
    agent = make_agent(agent_module, tmp_path, witness)
    assert agent.step() == ["grant"]
    assert ("revoke", 77) in witness.calls
    assert agent.state["lease"] is None


class FakeStop:
    """subprocess.Popen's stand-in for `systemctl stop patroni` (recorded by `run`)."""

    def __init__(self, result: Any):
        self.returncode = result.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str, str]:
        return "", ""

    def kill(self) -> None:
        pass


def test_agent_process_writes_the_marker_before_it_touches_pgbouncer_or_patroni(
        agent_module, tmp_path, monkeypatch):
    witness = FakeWitness({"region": "us-west", "epoch": 4})
    agent = make_agent(agent_module, tmp_path, witness)
    agent.state = {"lease": 7, "last_renewal": time.monotonic(), "holder_epoch": 3}
    commands: list[tuple[list[str], bool, dict[str, str]]] = []

    def run(cmd: list[str], **kw: Any) -> Any:
        commands.append((cmd, (tmp_path / "fenced").exists(), kw.get("env") or {}))
        return type("R", (), {"returncode": 0, "stdout": "", "stderr": ""})()

    monkeypatch.setattr(agent_module.subprocess, "run", run)
    monkeypatch.setattr(agent_module.subprocess, "Popen",
                        lambda cmd, **kw: FakeStop(run(cmd, **kw)))
    assert agent.step() == ["fence", "release"]
    assert ("revoke", 7) in witness.calls
    # Patroni's stop is started first and runs beside PgBouncer's commands.
    assert [c[0][-1] for c in commands] == ["patroni", "DISABLE app", "KILL app"]
    assert all(marker_existed for _, marker_existed, _ in commands)
    assert "PGPASSWORD" in commands[1][2]
    assert all("PGPASSWORD" not in " ".join(cmd) for cmd, _, _ in commands)
    marker = json.loads((tmp_path / "fenced").read_text())
    assert marker["epoch"] == 4 and "us-west holds the baton" in marker["reason"]
    assert agent.step() == ["stay_fenced"]
    assert len(commands) == 3  # fenced once


def test_agent_process_restarted_during_a_partition_still_fences(agent_module, tmp_path,
                                                                 monkeypatch):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/state.json").write_text(json.dumps(
        {"lease": 7, "holder_epoch": 3, "last_renewal_wall": time.time() - 30}))
    witness = FakeWitness(None, fail=True)
    agent = make_agent(agent_module, tmp_path, witness)
    monkeypatch.setattr(agent_module, "fence", lambda *a, **kw: None)  # the decision is tested
    assert agent.step() == ["fence"]


def test_agent_fences_a_former_holder_whose_postgresql_stays_silent_past_fence_after():
    state = {**HOLDS, "last_renewal": 100.0}
    actions, _ = agent_step(state, observed(holder={"region": "us-west", "epoch": 4},
                                            writable=None), 103.0, CFG)
    assert actions == ["wait"]
    actions, new = agent_step(state, observed(holder={"region": "us-west", "epoch": 4},
                                              writable=None), 106.0, CFG)
    assert actions == ["fence", "release"] and "has not answered for 6.0 s" in new["note"]


def test_agent_fences_a_writable_node_that_starts_cut_off_from_the_witness():
    """Rebooted during a partition with no memory of the baton: nothing says it may write."""
    cut = {**observed(holder=None, writable=True), "witness_ok": False}
    assert agent_step(fresh_state(), {**cut, "agent_age": 2.0}, 2.0, CFG)[0] == ["wait"]
    assert agent_step(fresh_state(), {**cut, "agent_age": 6.0}, 6.0, CFG)[0] == ["fence"]
    replica = {**cut, "writable": False, "agent_age": 60.0}
    assert agent_step(fresh_state(), replica, 60.0, CFG)[0] == ["wait"]


def test_agent_drops_a_saved_lease_the_witness_no_longer_knows(agent_module, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run/state.json").write_text(json.dumps(
        {"lease": 7, "holder_epoch": 3, "last_renewal_wall": time.time() - 30}))
    witness = FakeWitness({"region": "us-east", "epoch": 5})
    agent = make_agent(agent_module, tmp_path, witness)
    assert agent.state == fresh_state()
    assert agent.step() == ["grant"]


def test_agent_process_fences_the_nodes_redis_after_pgbouncer_and_before_patroni(
        agent_module, tmp_path, monkeypatch):
    witness = FakeWitness({"region": "us-west", "epoch": 4})
    agent = make_agent(agent_module, tmp_path, witness)
    agent.cfg.update(redis_port=6379, redis_password="lab-redis-not-secret", sentinel_port=26379,
                     sentinel_password="lab-sentinel-not-secret")
    agent.state = {"lease": 7, "last_renewal": time.monotonic(), "holder_epoch": 3}
    commands: list[tuple[list[str], dict[str, str]]] = []

    def run(cmd: list[str], **kw: Any) -> Any:
        commands.append((cmd, kw.get("env") or {}))
        return type("R", (), {"returncode": 0, "stdout": "OK", "stderr": ""})()

    monkeypatch.setattr(agent_module.subprocess, "run", run)
    monkeypatch.setattr(agent_module.subprocess, "Popen",
                        lambda cmd, **kw: FakeStop(run(cmd, **kw)))
    assert agent.step() == ["fence", "release"]
    # Sentinel forgets the master right after the Redis fence, before Patroni's stop is
    # waited for; the Redis fence is written into redis.conf last.
    assert [c[0][-1] for c in commands] == ["patroni", "DISABLE app", "KILL app", "1000000",
                                            "baton", "REWRITE"]
    redis_cmd, redis_env = commands[3]
    assert redis_cmd[0] == "redis-cli" and redis_cmd[-4:] == [
        "CONFIG", "SET", "min-replicas-to-write", "1000000"]
    assert redis_env["REDISCLI_AUTH"] == "lab-redis-not-secret"
    sentinel_cmd, sentinel_env = commands[4]
    assert sentinel_cmd[sentinel_cmd.index("-p") + 1] == "26379"
    assert sentinel_cmd[-3:] == ["SENTINEL", "REMOVE", "baton"]
    assert sentinel_env["REDISCLI_AUTH"] == "lab-sentinel-not-secret"
    assert all("not-secret" not in " ".join(cmd) for cmd, _ in commands)


class FakeRedis:
    def __init__(self, role: str, fence: int):
        self.role, self.fence, self.calls = role, fence, []

    def __call__(self, _cfg: dict, *args: str) -> tuple[bool, str]:
        self.calls.append(args)
        if args[:2] == ("CONFIG", "GET"):
            return True, f"min-replicas-to-write\n{self.fence}"
        if args[:2] == ("CONFIG", "SET"):
            self.fence = int(args[3])
            return True, "OK"
        if args == ("CONFIG", "REWRITE"):
            return True, "OK"
        if args[:1] == ("EXISTS",):
            return True, "1" if getattr(self, "handover", False) else "0"
        if args == ("ROLE",):
            return True, f"{self.role}\n10.231.2.11\n6379\nconnected\n123"
        return False, "failed: ERR unknown command"


def test_unfence_redis_lifts_the_fence_only_from_a_replica_and_only_once(agent_module):
    cfg = {**agent_module.DEFAULTS, "redis_port": 6379}
    cfg["region"] = "us-east"
    master = FakeRedis("master", agent_module.REDIS_FENCE)
    refused = agent_module.unfence_redis(cfg, master, lambda _cfg: "us-west")
    assert refused["changed"] is False and "still a master" in refused["error"]
    assert agent_module.unfence_redis(cfg, master, lambda _cfg: None)["changed"] is False
    assert master.fence == agent_module.REDIS_FENCE
    # A master whose own region holds the baton (it fenced itself, nobody failed over).
    assert agent_module.unfence_redis(cfg, master, lambda _cfg: "us-east")["changed"] is True
    assert master.fence == 0
    replica = FakeRedis("slave", agent_module.REDIS_FENCE)
    assert agent_module.unfence_redis(cfg, replica, lambda _cfg: "us-west") == {
        "changed": True, "redis": "fence lifted (min-replicas-to-write 0)"}
    assert replica.fence == 0
    again = agent_module.unfence_redis(cfg, replica, lambda _cfg: "us-west")
    assert again["changed"] is False and "error" not in again
    assert agent_module.unfence_redis({**cfg, "redis_port": 0}, replica,
                                      lambda _cfg: "us-west")["changed"] is False
    assert agent_module.fence_redis({**cfg, "redis_port": 0}, replica) == "no Redis on this node"


# --- the gates and the name server refresh ---------------------------------------------------

REDIS_CONF = """# Baton: written once
port 6379
min-replicas-to-write 0
appendonly yes
"""


def test_the_redis_gate_fences_a_would_be_master_outside_the_holder_region(agent_module):
    cfg = {**agent_module.DEFAULTS, "region": "us-east"}
    text, why = agent_module.redis_gate_text(cfg, REDIS_CONF, allowed=False)
    assert "min-replicas-to-write 1000000" in text.splitlines() and why.startswith("fenced")
    assert "min-replicas-to-write 0" not in text and "appendonly yes" in text
    # Idempotent: a second start changes nothing.
    assert agent_module.redis_gate_text(cfg, text, allowed=False) == (text, "fenced already")
    # Back in the holder region: the fence goes, the configured value returns.
    lifted, why = agent_module.redis_gate_text(cfg, text, allowed=True)
    assert lifted == REDIS_CONF and why == "fence lifted"
    # A Redis that starts as a replica needs no fence: it refuses writes by itself.
    replica = REDIS_CONF + "replicaof 10.231.2.11 6379\n"
    assert agent_module.redis_gate_text(cfg, replica, allowed=False)[0] == replica
    # No min-replicas-to-write line at all (a file Redis never rewrote): one is appended.
    bare = "port 6379\n"
    assert agent_module.redis_gate_text(cfg, bare, allowed=False)[0] == (
        "port 6379\nmin-replicas-to-write 1000000\n")


def test_only_the_holder_regions_unfenced_nodes_may_serve(agent_module):
    cfg = {"region": "us-east"}
    east, west = {"region": "us-east", "epoch": 3}, {"region": "us-west", "epoch": 4}
    assert agent_module.may_serve(cfg, True, east, False)[0] is True
    assert agent_module.may_serve(cfg, True, None, False)[0] is True  # first deploy
    assert agent_module.may_serve(cfg, True, west, False) == (
        False, "us-west holds the baton (epoch 4)")
    assert agent_module.may_serve(cfg, False, None, False)[0] is False
    assert agent_module.may_serve(cfg, True, east, True) == (
        False, "this node is fenced (marker present)")
    # A key deleted after the agent saw epoch 3: nobody is set free.
    allowed, why = agent_module.may_serve(cfg, True, None, False, seen=3)
    assert allowed is False and "gone from the witness although epoch 3 was seen" in why


def test_a_deleted_holder_key_is_remembered_across_restarts_and_fences_the_holder(
        agent_module, tmp_path, monkeypatch):
    witness = FakeWitness({"region": "us-east", "epoch": 3})
    agent = make_agent(agent_module, tmp_path, witness)
    assert agent.step() == ["grant"]
    assert json.loads((tmp_path / "run/state.json").read_text())["seen_epoch"] == 3
    assert agent_module.saved_seen_epoch(agent.cfg) == 3  # what may-start and the gates read
    witness.holder = None  # deleted by someone
    assert agent.step() == ["wait"]
    fenced: list[str] = []
    monkeypatch.setattr(agent_module, "fence", lambda _cfg, reason, *a, **kw: fenced.append(reason))
    agent.state["last_renewal"] = time.monotonic() - 6
    assert agent.step() == ["fence"]
    assert "the holder key vanished from the witness (epoch 3 was seen)" in fenced[0]
    # Restarted without its lease (gone from the witness): it still remembers the epoch, and
    # a writable PostgreSQL without a holder key is fenced.
    again = agent_module.Agent(agent.cfg, witness=witness)
    again.writable = lambda: True
    again.started -= 10
    assert again.seen_epoch == 3
    assert again.step() == ["fence"]


def test_a_stopped_agent_fences_a_redis_master_and_says_it_is_down(
        agent_module, tmp_path, monkeypatch):
    bound = tmp_path / "bound"
    monkeypatch.setattr(agent_module, "BOUND_FILE", str(bound))
    monkeypatch.setenv("SERVICE_RESULT", "signal")
    bound.write_text(json.dumps({"units": ["patroni", "redis-sentinel"]}))
    redis = FakeRedis("master", 0)
    logged: list[str] = []
    (tmp_path / "metrics").mkdir()
    cfg = {**agent_module.DEFAULTS, "redis_port": 6379, "node": "us-east-1", "region": "us-east",
           "metrics": str(tmp_path / "metrics/baton_agent.prom")}
    agent_module.agent_stopped(cfg, logged.append, redis)
    assert redis.fence == agent_module.REDIS_FENCE
    assert ("CONFIG", "REWRITE") not in redis.calls  # in memory: lifted when the agent is back
    assert 'baton_agent_up{region="us-east",node="us-east-1"} 0' in (
        tmp_path / "metrics/baton_agent.prom").read_text()
    assert logged[0].startswith("agent stopped (signal): bound: patroni, redis-sentinel stop")
    replica = FakeRedis("slave", 0)  # a replica needs no fence
    agent_module.agent_stopped(cfg, logged.append, replica)
    assert replica.fence == 0


class FakeSystemctl:
    def __init__(self, active: set[str]):
        self.active, self.calls = active, []

    def __call__(self, cmd: list[str], **kw: Any) -> Any:
        self.calls.append(cmd)
        states = [("active" if u in self.active else "inactive")
                  for u in cmd[2:] if not u.startswith("-")]
        code = 0 if all(st == "active" for st in states) else 3
        return type("R", (), {"returncode": code, "stdout": "\n".join(states) + "\n",
                              "stderr": ""})()


def test_the_agent_notes_what_runs_and_when_back_starts_what_stopped_with_it(
        agent_module, tmp_path, monkeypatch):
    bound = tmp_path / "bound"
    monkeypatch.setattr(agent_module, "BOUND_FILE", str(bound))
    monkeypatch.setenv("NOTIFY_SOCKET", str(tmp_path / "no-such-socket"))
    systemctl = FakeSystemctl({"patroni", "redis-sentinel"})
    monkeypatch.setattr(agent_module.subprocess, "run", systemctl)
    agent = make_agent(agent_module, tmp_path, FakeWitness({"region": "us-east", "epoch": 3}))
    agent.note_bound_units()
    assert json.loads(bound.read_text())["units"] == ["patroni", "redis-sentinel"]
    # An explicit stop of the agent stops Patroni first: a unit seen running lately counts.
    systemctl.active = {"redis-sentinel"}
    agent.note_bound_units()
    assert json.loads(bound.read_text())["units"] == ["patroni", "redis-sentinel"]
    agent.bound_seen["patroni"] -= agent_module.BOUND_MEMORY + 1  # stopped long ago
    agent.note_bound_units()
    assert json.loads(bound.read_text())["units"] == ["redis-sentinel"]
    bound.write_text(json.dumps({"units": ["patroni", "redis-sentinel"]}))
    # The agent died; systemd stopped both. The next agent starts them.
    systemctl.active = set()
    (tmp_path / "next").mkdir()
    again = make_agent(agent_module, tmp_path / "next", FakeWitness({"region": "us-east",
                                                                     "epoch": 3}))
    again.cfg["marker"] = str(tmp_path / "fenced")
    again.restart_bound_units(agent_module.read_bound_units())
    starts = [c for c in systemctl.calls if c[1] == "start"]
    assert starts == [["systemctl", "start", "--no-block", "patroni"],
                      ["systemctl", "start", "--no-block", "redis-sentinel"]]
    # Running already (a restart that left them up): left alone. Fenced: no Patroni.
    systemctl.calls.clear()
    systemctl.active = {"patroni", "redis-sentinel"}
    again.restart_bound_units(["patroni", "redis-sentinel"])
    assert [c for c in systemctl.calls if c[1] == "start"] == []
    systemctl.active = set()
    (tmp_path / "fenced").write_text("{}")
    again.restart_bound_units(["patroni", "redis-sentinel"])
    assert [c for c in systemctl.calls if c[1] == "start"] == [
        ["systemctl", "start", "--no-block", "redis-sentinel"]]


def test_sd_notify_sends_one_datagram_to_the_notify_socket(agent_module, tmp_path, monkeypatch):
    import socket as socket_module
    path = str(tmp_path / "notify")
    server = socket_module.socket(socket_module.AF_UNIX, socket_module.SOCK_DGRAM)
    server.bind(path)
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    assert agent_module.sd_notify("WATCHDOG=1") is True
    assert server.recv(64) == b"WATCHDOG=1"
    server.close()
    monkeypatch.delenv("NOTIFY_SOCKET")
    assert agent_module.sd_notify("READY=1") is False


def test_the_sentinel_gate_removes_every_line_of_every_monitor(agent_module):
    text = """port 26379
sentinel myid 0123
sentinel sentinel-pass "pw"
sentinel monitor baton 10.231.1.11 6379 1
sentinel auth-pass baton "pw"
sentinel down-after-milliseconds baton 5000
sentinel config-epoch baton 3
sentinel leader-epoch baton 3
sentinel known-replica baton 10.231.2.11 6379
sentinel known-sentinel baton 10.231.1.12 26379 abcd
sentinel current-epoch 3
"""
    kept, removed = agent_module.sentinel_gate_text(text)
    assert removed == ["baton"]
    assert kept == ('port 26379\nsentinel myid 0123\nsentinel sentinel-pass "pw"\n'
                    "sentinel current-epoch 3\n")
    assert agent_module.sentinel_gate_text(kept) == (kept, [])


def test_a_gate_edits_the_file_in_place_and_keeps_its_mode(agent_module, tmp_path, monkeypatch):
    conf = tmp_path / "redis.conf"
    conf.write_text(REDIS_CONF)
    conf.chmod(0o640)
    cfg = {**agent_module.DEFAULTS, "region": "us-east", "node": "us-east-1",
           "endpoints": ["a:2391"], "marker": str(tmp_path / "fenced"),
           "redis_config": str(conf), "gate_wait": 0}
    monkeypatch.setattr(agent_module, "read_holder_patiently",
                        lambda _cfg: (True, {"region": "us-west", "epoch": 4}, ""))
    logged: list[str] = []
    assert agent_module.gate(cfg, "redis", logged.append) == 0
    assert "min-replicas-to-write 1000000" in conf.read_text()
    assert conf.stat().st_mode & 0o777 == 0o640
    assert logged == ["redis-gate: fenced (min-replicas-to-write 1000000): us-west holds the "
                      "baton (epoch 4)"]


def test_a_silent_witness_is_asked_again_for_gate_wait_then_counts_as_not_this_region(
        agent_module, monkeypatch):
    class Silent:
        def __init__(self, *_a: Any, **_kw: Any) -> None:
            pass

        def get(self, _key: str) -> Any:
            raise agent_module.WitnessError("connection refused")

    monkeypatch.setattr(agent_module, "Witness", Silent)
    clock = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        clock[0] += seconds

    answered, holder, error = agent_module.read_holder_patiently(
        {"endpoints": ["a:2391"], "gate_wait": 3}, sleep, lambda: clock[0])
    assert (answered, holder) == (False, None) and "refused" in error and len(slept) == 3


def test_the_agent_refreshes_the_zone_at_start_on_a_new_epoch_and_when_the_witness_returns(
        agent_module, tmp_path, monkeypatch):
    witness = FakeWitness({"region": "us-west", "epoch": 4})
    agent = make_agent(agent_module, tmp_path, witness, writable=False)
    agent.cfg["dns_zone"] = "baton.internal"
    refreshed: list[str] = []
    monkeypatch.setattr(agent_module, "refresh_zone",
                        lambda cfg: refreshed.append(cfg["dns_zone"]) or "ok")
    agent.step()
    agent.step()
    assert refreshed == ["baton.internal"]  # at start only
    witness.holder = {"region": "us-east", "epoch": 5}
    agent.step()
    assert len(refreshed) == 2  # a new epoch
    witness.fail = True
    agent.step()
    witness.fail = False
    agent.step()
    assert len(refreshed) == 3  # the witness answers again


def test_a_writable_redis_master_outside_the_holder_region_is_fenced_after_its_grace(
        agent_module, tmp_path, monkeypatch):
    witness = FakeWitness({"region": "us-west", "epoch": 4})
    agent = make_agent(agent_module, tmp_path, witness, writable=False)
    agent.cfg.update(redis_port=6379, redis_master_grace=30.0)
    redis = FakeRedis("master", 0)
    monkeypatch.setattr(agent_module, "redis_command", redis)
    clock = [1000.0]
    monkeypatch.setattr(agent_module.time, "monotonic", lambda: clock[0])
    agent.check_redis_outside_holder(witness.holder)
    assert redis.fence == 0  # seen once: within its grace (a planned handover)
    clock[0] += 31
    agent.check_redis_outside_holder(witness.holder)
    assert redis.fence == agent_module.REDIS_FENCE
    assert ("CONFIG", "REWRITE") in redis.calls
    # The old master of a planned handover (paused on purpose, marked) is left alone.
    paused = FakeRedis("master", 0)
    paused.handover = True
    monkeypatch.setattr(agent_module, "redis_command", paused)
    agent.check_redis_outside_holder(witness.holder)
    clock[0] += 120
    agent.check_redis_outside_holder(witness.holder)
    assert paused.fence == 0
    # A replica, or a fenced master, is left alone.
    replica = FakeRedis("slave", 0)
    monkeypatch.setattr(agent_module, "redis_command", replica)
    agent.check_redis_outside_holder(witness.holder)
    clock[0] += 60
    agent.check_redis_outside_holder(witness.holder)
    assert replica.fence == 0


def test_the_agent_speaks_tls_to_its_redis_as_its_own_user_with_the_password_off_argv(
        agent_module, monkeypatch):
    seen = []

    def run(argv, **kwargs):
        seen.append((argv, kwargs["env"]))
        return types.SimpleNamespace(returncode=0, stdout="OK\n", stderr="")

    monkeypatch.setattr(agent_module.subprocess, "run", run)
    cfg = {"redis_port": 6379, "redis_username": "baton_agent", "redis_password": "pw",
           "redis_tls_ca_file": "/etc/ssl/baton/ca.crt"}
    assert agent_module.redis_command(cfg, "PING") == (True, "OK")
    argv, env = seen[-1]
    assert argv[:7] == ["redis-cli", "-e", "--tls", "--cacert", "/etc/ssl/baton/ca.crt",
                        "--user", "baton_agent"]  # its own ACL user, not the default one
    assert "pw" not in argv and env["REDISCLI_AUTH"] == "pw"
    agent_module.sentinel_command({**cfg, "sentinel_port": 26379, "sentinel_password": "sp"},
                                  "SENTINEL", "MASTERS")
    argv, env = seen[-1]
    assert argv[2:4] == ["--tls", "--cacert"] and "26379" in argv and env["REDISCLI_AUTH"] == "sp"
    assert "--user" not in argv  # Sentinel's own password
    agent_module.redis_command({**cfg, "redis_tls_ca_file": ""}, "PING")
    assert "--tls" not in seen[-1][0]


def test_the_agent_takes_a_refused_redis_command_for_a_failure(agent_module, monkeypatch):
    replies = iter([(1, "NOPERM User baton_agent has no permissions to run the 'config|set' "
                        "command"), (0, "NOPERM this user has no permissions")])

    def run(argv, **kwargs):
        code, text = next(replies)
        return types.SimpleNamespace(returncode=code, stdout=text + "\n", stderr="")

    monkeypatch.setattr(agent_module.subprocess, "run", run)
    cfg = {"redis_port": 6379, "redis_username": "baton_agent", "redis_password": "pw"}
    for _ in range(2):  # exit status (-e), or the reply itself
        ok, reply = agent_module.redis_command(cfg, "CONFIG", "SET", "min-replicas-to-write", "1")
        assert not ok and "NOPERM" in reply


def test_the_agent_and_the_controller_agree_on_the_fence_and_the_handover_key(agent_module):
    import baton_redis

    assert agent_module.REDIS_FENCE == baton_redis.REDIS_FENCE
    assert agent_module.HANDOVER_KEY == baton_redis.HANDOVER_KEY


# --- the failover lock's keeper -----------------------------------------------------------------

class LockWitness:
    """The lock key and its lease, as keep_lock sees them."""

    def __init__(self, run_id: str | None, ttl: int = 30):
        self.run_id, self.ttl, self.renewals, self.fail_next = run_id, ttl, 0, 0

    def get(self, key: str) -> Any:
        assert key == LOCK
        if self.fail_next:
            self.fail_next -= 1
            raise WitnessUnavailable("no witness member answered")
        if self.run_id is None:
            return None
        return type("E", (), {"value": json.dumps({"run_id": self.run_id})})()

    def keepalive(self, lease: int) -> int:
        self.renewals += 1
        return self.ttl


def test_the_lock_keeper_renews_while_the_run_lives_and_stops_when_it_ends():
    witness, loops = LockWitness("r1"), iter([True, True, True, False])
    why = keep_lock(witness, 7, "r1", lambda: next(loops), 10, sleep=lambda _s: None)
    assert why == "the run has ended" and witness.renewals == 3


def test_the_lock_keeper_stops_when_the_lock_was_taken_over_or_released():
    witness = LockWitness("r2")
    assert keep_lock(witness, 7, "r1", lambda: True, 10, sleep=lambda _s: None) == \
        "the lock is no longer this run's"
    assert witness.renewals == 0
    assert keep_lock(LockWitness(None), 7, "r1", lambda: True, 10, sleep=lambda _s: None) == \
        "the lock is no longer this run's"


def test_the_lock_keeper_stops_on_an_expired_lease_and_rides_out_a_silent_witness():
    assert keep_lock(LockWitness("r1", ttl=0), 7, "r1", lambda: True, 10,
                     sleep=lambda _s: None) == "the lock's lease has expired"
    witness, loops = LockWitness("r1"), iter([True, True, True, False])
    witness.fail_next = 2
    assert keep_lock(witness, 7, "r1", lambda: next(loops), 10, sleep=lambda _s: None) == \
        "the run has ended"
    assert witness.renewals == 1


def test_a_process_counts_as_alive_only_with_its_own_start_time():
    with open(f"/proc/{os.getpid()}/stat", encoding="utf-8") as handle:
        start = int(handle.read().rsplit(")", 1)[1].split()[19])
    assert process_alive(os.getpid(), start)
    assert not process_alive(os.getpid(), start + 1)  # a reused pid
    assert not process_alive(2 ** 22 + 12345, start)


def test_the_fence_keeps_the_watchdog_fed_while_patroni_takes_its_time_to_stop(
        agent_module, tmp_path, monkeypatch):
    class SlowStop:
        returncode = 0

        def __init__(self) -> None:
            self.waits = 0

        def communicate(self, timeout: float | None = None) -> tuple[str, str]:
            self.waits += 1
            if self.waits < 4:
                raise agent_module.subprocess.TimeoutExpired("systemctl", timeout or 0)
            return "", ""

    stop = SlowStop()
    monkeypatch.setattr(agent_module.subprocess, "Popen", lambda cmd, **kw: stop)
    monkeypatch.setattr(agent_module, "fence_redis", lambda *a, **kw: "no Redis on this node")
    monkeypatch.setattr(agent_module, "persist_redis_fence", lambda *a, **kw: "no Redis")
    monkeypatch.setattr(agent_module, "fence_sentinel", lambda *a, **kw: "no Sentinel")
    pings: list[int] = []
    logged: list[str] = []
    cfg = {**agent_module.DEFAULTS, "region": "us-east", "node": "us-east-1",
           "marker": str(tmp_path / "fenced")}
    agent_module.fence(cfg, "a test", 4, lambda _c: "ok", logged.append,
                       lambda: pings.append(1))
    assert stop.waits == 4 and len(pings) >= 4
    assert "systemctl stop patroni: ok" in logged
    # Sentinel forgot its master before the wait on Patroni (a partition that heals meanwhile
    # must find no Sentinel that could demote the new holder's Redis).
    assert logged.index("Sentinel: no Sentinel") < logged.index("systemctl stop patroni: ok")


# --- moving the baton (baton_holder and baton_handover share it) -------------------------------

class KV:
    """An in-memory witness: keys with mod revisions, swap as etcd's transaction does it."""

    def __init__(self, **keys: str) -> None:
        self.revision = 10
        self.keys: dict[str, tuple[str, int]] = {}
        for key, value in keys.items():
            self.set(key, value)

    def set(self, key: str, value: str) -> None:
        self.revision += 1
        self.keys[key] = (value, self.revision)

    def get(self, key: str) -> Any:
        if key not in self.keys:
            return None
        value, revision = self.keys[key]
        return types.SimpleNamespace(key=key, value=value, mod_revision=revision)

    def get_prefix(self, prefix: str) -> list[Any]:
        return [self.get(k) for k in sorted(self.keys) if k.startswith(prefix)]

    def swap(self, key: str, value: str, expect: int, also: dict[str, int] | None = None) -> bool:
        checks = {key: expect, **(also or {})}
        if any((self.keys.get(k) or (None, 0))[1] != rev for k, rev in checks.items()):
            return False
        self.set(key, value)
        return True


def test_moving_the_baton_bumps_the_epoch_only_while_this_run_holds_the_lock():
    from baton_witness import BatonStop, move_holder

    kv = KV(**{HOLDER: json.dumps({"region": "us-east", "epoch": 4}),
               LOCK: json.dumps({"run_id": "run-1"})})
    moved = move_holder(kv, "us-west", expect_region="us-east", lock_run_id="run-1", by="run-1")
    assert moved["changed"] and moved["after"]["epoch"] == 5
    assert json.loads(kv.get(HOLDER).value)["region"] == "us-west"
    again = move_holder(kv, "us-west", expect_region="us-east", lock_run_id="run-1")
    assert not again["changed"]  # a re-run finds the baton there
    with pytest.raises(BatonStop, match=r"held by us-west .*not us-east as this run expected"):
        move_holder(kv, "eu-west", expect_region="us-east", lock_run_id="run-1")
    kv.set(LOCK, json.dumps({"run_id": "run-2"}))
    with pytest.raises(BatonStop, match=r"this run \(run-1\) no longer holds the failover lock"):
        move_holder(kv, "eu-west", expect_region="us-west", lock_run_id="run-1")
    assert json.loads(kv.get(HOLDER).value)["region"] == "us-west"


def test_the_handover_waits_for_the_old_regions_leases_and_names_them_at_the_deadline():
    from baton_witness import BatonStop, alive_key, wait_released

    kv = KV(**{alive_key("us-east", "us-east-1"): "{}"})
    with pytest.raises(BatonStop, match=r"us-east's fence agents still hold leases .*us-east-1"):
        wait_released(kv, "us-east", "us-west", 0.3, poll=0.05)
    threading.Timer(0.2, lambda: kv.keys.clear()).start()
    assert wait_released(kv, "us-east", "us-west", 5, poll=0.05)["alive"] == []


def test_the_handover_settles_only_for_liveness_records_of_agents_that_do_not_mark_them():
    from baton_witness import alive_key, wait_released

    marked = KV(**{alive_key("us-east", "n1"): json.dumps({"txn": True})})
    started = time.monotonic()
    threading.Timer(0.1, lambda: marked.keys.clear()).start()
    wait_released(marked, "us-east", "us-west", 5, poll=0.05, settle_unless_marked=1.0)
    assert time.monotonic() - started < 0.9  # every key marked: no settle
    unmarked = KV(**{alive_key("us-east", "n1"): json.dumps({"node": "n1"})})
    threading.Timer(0.1, lambda: unmarked.keys.clear()).start()
    started = time.monotonic()
    wait_released(unmarked, "us-east", "us-west", 5, poll=0.05, settle_unless_marked=0.5)
    assert time.monotonic() - started >= 0.5


def test_a_run_that_lost_the_lock_stops_before_the_promotion():
    from baton_witness import BatonStop, lock_still_held

    kv = KV(**{LOCK: json.dumps({"run_id": "run-1"})})
    lock_still_held(kv, "run-1", "promotes us-west")
    kv.set(LOCK, json.dumps({"run_id": "run-2"}))
    with pytest.raises(BatonStop, match=r"now run-2\): it stops before it promotes us-west"):
        lock_still_held(kv, "run-1", "promotes us-west")
    kv.keys.clear()
    with pytest.raises(BatonStop, match="now nobody"):
        lock_still_held(kv, "run-1", "promotes us-west")

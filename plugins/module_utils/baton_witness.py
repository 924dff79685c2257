"""The global witness: an etcd v3 client (the JSON gateway, stdlib only) and the baton's
decisions: who may accept writes, when a node fences itself, who may run a failover.

The witness is an etcd cluster with one member per region. It holds:

    /baton/holder                 which region holds the baton: {"region", "epoch", "since", "by"}
    /baton/lock                   the failover lock of a controller run (attached to a lease)
    /baton/alive/<region>/<node>  one key per database node of the holder region, attached to the
                                  node's lease: it vanishes when the node stops renewing
    /baton/dns_primary            the name server that holds the failover zone's primary copy
                                  while it is away from its home on the global site
                                  ({"host", "address", "since", "by", "why"}); absent: at home

This file is also copied next to the agent (roles/witness/files/baton_agent.py), which imports
it: keep it free of Ansible imports.
"""

from __future__ import annotations

import base64
import http.client
import json
import math
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

PREFIX = "/baton/"
HOLDER = PREFIX + "holder"
LOCK = PREFIX + "lock"
DNS_PRIMARY = PREFIX + "dns_primary"
# etcd 3.4 serves its gRPC gateway at /v3/ (and the older /v3beta/); 3.3 only at /v3beta/.
API = "/v3/"
# gRPC codes (the gateway's "code") that mean "this member cannot serve now, ask another":
# DEADLINE_EXCEEDED (a minority member's linearizable read), UNAVAILABLE (no leader).
_RETRY_CODES = {4, 14}
_NOT_FOUND = 5
# UNAUTHENTICATED: a token this member does not know (tokens are per member and die with its
# restart) or none; "revision of auth store is old" (INVALID_ARGUMENT): users changed since the
# token was issued. Both: authenticate again and retry once.
_REAUTH_CODES = {16}
_REAUTH_MESSAGES = ("auth store is old", "user name is empty", "invalid auth token")


def alive_prefix(region: str) -> str:
    """Prefix of the liveness keys of a region's nodes."""
    return f"{PREFIX}alive/{region}/"


def alive_key(region: str, node: str) -> str:
    """A node's liveness key, attached to its lease."""
    return alive_prefix(region) + node


def utc_iso(timestamp: float) -> str:
    """A Unix time as ISO 8601 UTC to the second, e.g. 2025-01-31T12:00:00Z."""
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def holder_value(region: str, epoch: int, by: str, now: float) -> str:
    """The JSON value of HOLDER."""
    return json.dumps({"region": region, "epoch": int(epoch), "since": utc_iso(now), "by": by},
                      sort_keys=True)


def decode_record(value: str | None) -> dict[str, Any] | None:
    """A JSON object stored in a key; None when absent or not a JSON object."""
    if value is None:
        return None
    try:
        record = json.loads(value)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def parse_holder(value: str | None) -> dict[str, Any] | None:
    """HOLDER's value as {"region", "epoch", ...}; None when absent; ValueError when malformed."""
    if value is None:
        return None
    record = decode_record(value)
    if record is None or not record.get("region") or "epoch" not in record:
        raise ValueError(f"{HOLDER} holds {value!r}, not a holder record "
                         '({"region": ..., "epoch": ...})')
    try:
        return {**record, "region": str(record["region"]), "epoch": int(record["epoch"])}
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{HOLDER} has a non-integer epoch: {record['epoch']!r}") from exc


def parse_dns_primary(value: str | None, home: str) -> dict[str, Any]:
    """DNS_PRIMARY's value as {"host", "home", "away", ...}: the zone's primary name server;
    `home` (the inventory's, on the global site) when the key is absent; ValueError when
    malformed."""
    if value is None:
        return {"host": home, "home": home, "away": False}
    record = decode_record(value)
    if record is None or not record.get("host"):
        raise ValueError(f"{DNS_PRIMARY} holds {value!r}, not a name-server record "
                         '({"host": ..., "address": ...})')
    return {**record, "host": str(record["host"]), "home": home,
            "away": str(record["host"]) != home}


# --- the client --------------------------------------------------------------------------------


class WitnessError(Exception):
    """A witness member answered, and refused the request (the message says which and why)."""

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class WitnessUnavailable(WitnessError):
    """No witness member answered; the message names the members tried and their errors."""


@dataclass(frozen=True)
class Entry:
    """One key as etcd returns it."""

    key: str
    value: str
    mod_revision: int
    create_revision: int
    lease: int


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def _unb64(text: str | None) -> str:
    return base64.b64decode(text or "").decode()


def prefix_end(prefix: str) -> bytes:
    """etcd's range_end that selects every key starting with prefix."""
    raw = bytearray(prefix.encode())
    while raw:
        if raw[-1] < 0xFF:
            raw[-1] += 1
            return bytes(raw)
        raw.pop()
    return b"\x00"  # every key


def _entry(kv: Mapping[str, Any]) -> Entry:
    return Entry(key=_unb64(kv.get("key")), value=_unb64(kv.get("value")),
                 mod_revision=int(kv.get("mod_revision", 0)),
                 create_revision=int(kv.get("create_revision", 0)),
                 lease=int(kv.get("lease", 0)))


@dataclass(frozen=True)
class Client:
    """How to reach and log in to an etcd cluster of Baton's: TLS (the Baton CA, this client's
    certificate and key, which etcd requires: client-cert-auth) and an etcd user. Baton's
    client certificates have no CommonName: etcd's JSON gateway refuses one that has, and
    takes the user from the password login only."""

    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    key_password: str = ""
    username: str = ""
    password: str = ""

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> Client:
        """From a dict (a module's option, the agent's configuration); missing keys: empty."""
        data = data or {}
        return cls(**{name: str(data.get(name) or "") for name in
                      ("ca_file", "cert_file", "key_file", "key_password", "username",
                       "password")})

    @property
    def scheme(self) -> str:
        return "https" if self.ca_file else "http"

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context (the server must have a certificate of the CA for its address)."""
        if not self.ca_file:
            return None
        context = ssl.create_default_context(cafile=self.ca_file)
        if self.cert_file:
            context.load_cert_chain(self.cert_file, self.key_file or None,
                                    password=self.key_password or None)
        return context


# The argument spec of a controller module's `client` option (modules import it).
CLIENT_SPEC = {
    "type": "dict",
    "default": {},
    "options": {
        "ca_file": {"type": "str", "default": ""},
        "cert_file": {"type": "str", "default": ""},
        "key_file": {"type": "str", "default": ""},
        "key_password": {"type": "str", "default": "", "no_log": True},
        "username": {"type": "str", "default": ""},
        "password": {"type": "str", "default": "", "no_log": True},
    },
}


class Witness:
    """An etcd cluster of Baton's (the witness, or a region's DCS), through its members' JSON
    gateway: HTTPS with a client certificate and an etcd user when `client` says so.

    endpoints: "host:port" of every member. A call goes to the member that answered last
    (the first one at start), and moves on to the next on a connection error, a timeout or
    an answer that says the member cannot serve now (no leader, a minority member's read);
    WitnessUnavailable when none answers. timeout bounds one attempt; budget, when set,
    bounds one call over all its attempts (the agent keeps a whole loop within its interval).
    Reads are linearizable, etcd's default: a member cut off in a minority answers nothing.
    With a user, the client logs in to each member it talks to (etcd's tokens are per member)
    and again when a member no longer knows its token. Never goes through an HTTP proxy of
    the environment.
    """

    def __init__(self, endpoints: list[str], timeout: float = 2.0,
                 budget: float | None = None, opener: Any = None,
                 client: Client | Mapping[str, Any] | None = None) -> None:
        if not endpoints:
            raise ValueError("Witness needs at least one endpoint (host:port)")
        self.endpoints = list(endpoints)
        self.timeout = float(timeout)
        self.budget = budget
        self.client = client if isinstance(client, Client) else Client.from_mapping(client)
        if opener is None:
            handlers: list[Any] = [urllib.request.ProxyHandler({})]
            context = self.client.ssl_context()
            if context is not None:
                handlers.append(urllib.request.HTTPSHandler(context=context))
            opener = urllib.request.build_opener(*handlers)
        self._opener = opener
        self._first = 0  # index of the member that answered last
        self._tokens: dict[str, str] = {}  # endpoint -> its auth token

    # --- transport ---

    def call(self, method: str, body: Mapping[str, Any], stream: bool = False) -> dict[str, Any]:
        """POST /v3/<method> to the members in turn; the decoded JSON reply.

        stream: a streaming RPC (lease/keepalive): the reply is the first message's "result".
        """
        data = json.dumps(body).encode()
        started = time.monotonic()
        errors: list[str] = []
        tried: list[str] = []
        count = len(self.endpoints)
        for step in range(count):
            index = (self._first + step) % count
            endpoint = self.endpoints[index]
            tried.append(endpoint)
            try:
                reply = self._call_member(endpoint, method, data, stream, started)
            except _BudgetSpent:
                tried.pop()
                errors.append(f"{endpoint}: not tried, the call's {self.budget:g} s were spent")
                break
            except WitnessError as exc:
                if exc.code in _RETRY_CODES:
                    errors.append(f"{endpoint}: {exc}")
                    continue
                raise
            except (OSError, http.client.HTTPException, ValueError) as exc:
                errors.append(f"{endpoint}: {_reason(exc)}")
                continue
            self._first = index
            return reply
        self._first = (self._first + 1) % count  # next call starts elsewhere
        raise WitnessUnavailable(f"no witness member answered {API}{method} (tried "
                                 f"{', '.join(tried) or 'none'}): {'; '.join(errors)}")

    def _left(self, started: float) -> float:
        """Seconds one attempt may take now; _BudgetSpent when the call's budget is spent."""
        if self.budget is None:
            return self.timeout
        left = min(self.timeout, self.budget - (time.monotonic() - started))
        if left <= 0.01:
            raise _BudgetSpent
        return left

    def _call_member(self, endpoint: str, method: str, data: bytes, stream: bool,
                     started: float) -> dict[str, Any]:
        """One member: log in first when there is a user and no token for it, and once more
        when the member refuses the token."""
        if not self.client.username:
            return self._post(endpoint, method, data, self._left(started), stream)
        for attempt in (1, 2):
            if endpoint not in self._tokens:
                self._tokens[endpoint] = self._authenticate(endpoint, self._left(started))
            try:
                return self._post(endpoint, method, data, self._left(started), stream,
                                  self._tokens[endpoint])
            except WitnessError as exc:
                if attempt == 2 or not _needs_login(exc):
                    raise
                self._tokens.pop(endpoint, None)
        raise AssertionError("unreachable")

    def _authenticate(self, endpoint: str, timeout: float) -> str:
        body = json.dumps({"name": self.client.username,
                           "password": self.client.password}).encode()
        try:
            reply = self._post(endpoint, "auth/authenticate", body, timeout, False)
        except WitnessError as exc:
            if exc.code in _RETRY_CODES:
                raise
            raise WitnessError(f"{endpoint} refused the login of etcd user "
                               f"{self.client.username!r}: {exc}", exc.code) from None
        token = str(reply.get("token") or "")
        if not token:
            raise WitnessError(f"{endpoint} gave etcd user {self.client.username!r} no token "
                               "(is authentication enabled on it?)")
        return token

    def _post(self, endpoint: str, method: str, data: bytes, timeout: float,
              stream: bool, token: str = "") -> dict[str, Any]:
        url = f"{self.client.scheme}://{endpoint}{API}{method}"
        headers = {"Content-Type": "application/json"}
        if token:
            headers["Authorization"] = token
        req = urllib.request.Request(url, data=data, method="POST", headers=headers)
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                raw = resp.readline() if stream else resp.read()
        except urllib.error.HTTPError as exc:
            message, code = _error_detail(exc.read())
            if exc.code >= 500 and code not in _RETRY_CODES:
                code = 14  # e.g. grant on a member without quorum: 500 "context deadline exceeded"
            raise WitnessError(f"{endpoint} refused {API}{method} (HTTP {exc.code}): "
                               f"{message or exc.reason}", code) from None
        reply = json.loads(raw.decode() or "{}")
        if not isinstance(reply, dict):
            raise ValueError(f"not a JSON object: {raw[:200]!r}")
        if stream:
            if "error" in reply:  # a stream's error can arrive as a message
                message, code = _error_detail(raw)
                raise WitnessError(f"{endpoint} refused {API}{method}: {message}", code)
            reply = reply.get("result") or {}
        return reply

    # --- keys ---

    def get(self, key: str) -> Entry | None:
        """The key, or None when it does not exist."""
        kvs = self.call("kv/range", {"key": _b64(key)}).get("kvs") or []
        return _entry(kvs[0]) if kvs else None

    def get_prefix(self, prefix: str) -> list[Entry]:
        """Every key that starts with prefix, sorted by key."""
        reply = self.call("kv/range", {"key": _b64(prefix), "range_end": _b64(prefix_end(prefix))})
        return [_entry(kv) for kv in reply.get("kvs") or []]

    def put(self, key: str, value: str, lease: int = 0) -> int:
        """Writes the key unconditionally; the new revision."""
        body: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)
        return int(self.call("kv/put", body).get("header", {}).get("revision", 0))

    def _txn(self, compare: dict[str, Any] | list[dict[str, Any]],
             success: dict[str, Any]) -> bool:
        compares = compare if isinstance(compare, list) else [compare]
        return bool(self.call("kv/txn", {"compare": compares, "success": [success]})
                    .get("succeeded", False))

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        """Writes the key only if it does not exist; whether it did."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return self._txn({"target": "CREATE", "key": _b64(key), "result": "EQUAL",
                          "create_revision": "0"}, {"request_put": put})

    def swap(self, key: str, value: str, expect_mod_revision: int, lease: int = 0,
             also: dict[str, int] | None = None) -> bool:
        """Writes the key only if its mod_revision is still expect_mod_revision (compare and
        swap) and, for each key of `also`, that key's mod_revision is still the one given (one
        transaction: a fencing token, e.g. the failover lock); whether it did."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        compares = [{"target": "MOD", "key": _b64(key), "result": "EQUAL",
                     "mod_revision": str(int(expect_mod_revision))}]
        compares += [{"target": "MOD", "key": _b64(other), "result": "EQUAL",
                      "mod_revision": str(int(revision))}
                     for other, revision in (also or {}).items()]
        return self._txn(compares, {"request_put": put})

    def put_unless_moved(self, key: str, value: str, lease: int,
                         unchanged: dict[str, int]) -> bool:
        """Writes the key only while every key of `unchanged` still has the mod_revision given
        (0: still absent), in one transaction; whether it did."""
        put: dict[str, Any] = {"key": _b64(key), "value": _b64(value)}
        if lease:
            put["lease"] = str(lease)
        return self._txn([{"target": "MOD", "key": _b64(other), "result": "EQUAL",
                           "mod_revision": str(int(revision))}
                          for other, revision in unchanged.items()], {"request_put": put})

    def delete(self, key: str, expect_mod_revision: int | None = None) -> bool:
        """Deletes the key (only if its mod_revision is expect_mod_revision, when given);
        whether a key was deleted."""
        if expect_mod_revision is None:
            reply = self.call("kv/deleterange", {"key": _b64(key)})
            return int(reply.get("deleted", 0)) > 0
        return self._txn({"target": "MOD", "key": _b64(key), "result": "EQUAL",
                          "mod_revision": str(int(expect_mod_revision))},
                         {"request_delete_range": {"key": _b64(key)}})

    # --- leases ---

    def grant(self, ttl: int) -> int:
        """A new lease of ttl seconds; its id."""
        reply = self.call("lease/grant", {"TTL": str(int(ttl))})
        if reply.get("error"):
            raise WitnessError(f"the witness refused a lease of {ttl} s: {reply['error']}")
        return int(reply["ID"])

    def keepalive(self, lease_id: int) -> int:
        """Renews the lease once; its remaining TTL in seconds (0 or less: expired, unknown)."""
        reply = self.call("lease/keepalive", {"ID": str(int(lease_id))}, stream=True)
        return int(reply.get("TTL", 0))

    def revoke(self, lease_id: int) -> bool:
        """Revokes the lease (its keys go with it); False when it was already gone."""
        try:
            self.call("lease/revoke", {"ID": str(int(lease_id))})
        except WitnessError as exc:
            if exc.code == _NOT_FOUND:
                return False
            raise
        return True

    def time_to_live(self, lease_id: int) -> int:
        """The lease's remaining TTL in seconds; -1 when it has expired or never existed."""
        return int(self.call("lease/timetolive", {"ID": str(int(lease_id))}).get("TTL", -1))


class _BudgetSpent(Exception):
    """The call's budget is spent before the next attempt."""


def _needs_login(exc: WitnessError) -> bool:
    """The member refused the token (unknown, expired, older than the users), not the user."""
    text = str(exc)
    return exc.code in _REAUTH_CODES or any(m in text for m in _REAUTH_MESSAGES)


def _error_detail(raw: bytes) -> tuple[str, int | None]:
    """(message, gRPC code) of the gateway's error body. Unary calls answer
    {"error", "message", "code"}; streaming ones {"error": {"message", "grpc_code", ...}}."""
    try:
        body = json.loads(raw.decode(errors="replace"))
    except ValueError:
        return raw.decode(errors="replace").strip()[:200], None
    if not isinstance(body, dict):
        return str(body)[:200], None
    inner = body.get("error")
    if isinstance(inner, dict):
        body = inner
    code = body.get("code", body.get("grpc_code"))
    message = body.get("message") or body.get("error") or ""
    return str(message), int(code) if isinstance(code, int) else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and not isinstance(exc, urllib.error.HTTPError):
        exc = exc.reason if isinstance(exc.reason, BaseException) else exc
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__


# --- timing ------------------------------------------------------------------------------------


def timing_problems(interval: float, fence_after: float, lease_ttl: int,
                    promotion_wait: float, election_timeout_ms: float = 1000,
                    fence_time: float = 3.0, watchdog: float = 5.0) -> list[str]:
    """Everything wrong with the agent's and the controller's timing, one sentence each.

    The chain that keeps two regions from accepting writes at once: a holder node that cannot
    renew its lease starts fencing itself after fence_after, noticed within one interval, and
    the fence's own steps (PgBouncer, Redis, Patroni's stop) take up to fence_time; an agent
    that hangs is killed by systemd's watchdog after `watchdog` seconds, which stops Patroni
    (bound to it) within fence_time; its lease on the witness lives lease_ttl after its last
    renewal; the controller waits promotion_wait (>= lease_ttl) after moving the baton before
    it promotes another region. A witness election (up to two election timeouts without a
    leader) must not last long enough to fence the holder.
    """
    problems: list[str] = []
    if interval <= 0:
        problems.append(f"baton_agent_interval is {interval:g} s: set it above 0 (1 is usual)")
    if interval >= fence_after:
        problems.append(
            f"baton_agent_interval ({interval:g} s) must be less than baton_fence_after "
            f"({fence_after:g} s), or one slow loop fences a healthy node: lower "
            f"baton_agent_interval or raise baton_fence_after")
    if fence_after + interval + fence_time >= lease_ttl:
        total = fence_after + interval + fence_time
        problems.append(
            f"baton_fence_after + baton_agent_interval + baton_fence_time ({total:g} s) must "
            f"be less than baton_witness_lease_ttl ({lease_ttl} s), so that a node cut off from "
            f"the witness has fenced itself before the witness lets its lease go: raise "
            f"baton_witness_lease_ttl above {total:g} or lower baton_fence_after")
    # The longest a healthy loop goes without a word to the watchdog: the sleep, the witness
    # read (half an interval) and the question to PostgreSQL (max(2, interval)), or one of the
    # calls bounded by 3 s; and a second of margin.
    quiet = max(1.5 * interval + max(2.0, interval), 3.0) + 1.0
    if watchdog <= quiet or watchdog + fence_time >= lease_ttl:
        problems.append(
            f"baton_agent_watchdog ({watchdog:g} s) must be more than the longest a healthy loop "
            f"is silent plus a second (max(1.5 x baton_agent_interval + max(2, "
            f"baton_agent_interval), 3) + 1 = {quiet:g} s) and, with baton_fence_time "
            f"({fence_time:g} s), less than "
            f"baton_witness_lease_ttl ({lease_ttl} s), so that a hung agent is killed (and "
            f"Patroni, bound to it, stopped) before its lease can expire: change "
            f"baton_agent_watchdog")
    if lease_ttl > promotion_wait:
        problems.append(
            f"baton_witness_lease_ttl ({lease_ttl} s) must not exceed baton_promotion_wait "
            f"({promotion_wait:g} s), or a failover could promote another region while the "
            f"old one's leases are still alive: raise baton_promotion_wait to at least "
            f"{lease_ttl}")
    election = 2 * float(election_timeout_ms) / 1000
    if election + interval >= fence_after > interval:
        problems.append(
            f"2 x the witness's election timeout + baton_agent_interval ({election + interval:g} "
            f"s) must be less than baton_fence_after ({fence_after:g} s), or one witness "
            f"election fences the holder: lower witness_election_timeout or raise "
            f"baton_fence_after")
    return problems


# --- the agent's decision ----------------------------------------------------------------------

# Actions agent_step can ask for, in the order the agent carries them out.
ACTIONS = ("stay_fenced", "idle", "grant", "keepalive", "release", "fence", "standby", "wait")


def fresh_state() -> dict[str, Any]:
    """The agent's state when it holds nothing."""
    return {"lease": None, "last_renewal": None, "holder_epoch": None}


def agent_step(state: Mapping[str, Any], observed: Mapping[str, Any], now: float,
               cfg: Mapping[str, Any]) -> tuple[list[str], dict[str, Any]]:
    """The agent's whole decision for one loop (pure): the actions, and the new state.

    state:    {"lease": id|None, "last_renewal": time|None, "holder_epoch": int|None}, what
              this node holds: the lease it renews, when it last renewed it, and the epoch of
              its region's baton it renews under. The caller records a successful grant or
              keepalive in it (lease, last_renewal = now, holder_epoch); agent_step clears it
              when the node must stop holding.
    observed: {"witness_ok": bool, "holder": {"region", "epoch"}|None,
               "writable": bool|None (local PostgreSQL out of recovery; None: no answer),
               "fenced": bool (the marker file exists),
               "agent_age": seconds since this agent process started,
               "holding_for": seconds since this agent process first read its own region as
               the holder at the current epoch (0: it does not),
               "holder_seen": epoch of the last holder key this node read (kept across
               restarts; None: never)}
    cfg:      {"region": this node's region, "fence_after": seconds}

    Fails closed: a holder key that vanishes after it was seen counts as a witness that does
    not answer (nobody deletes it but an intruder or a mistake: site.yml writes it again), and
    a holder node whose renewals keep failing while reads succeed fences like one cut off.

    The new state also carries "note": one sentence on why, for the log.
    """
    region = str(cfg["region"])
    fence_after = float(cfg["fence_after"])
    new: dict[str, Any] = {"lease": state.get("lease"), "last_renewal": state.get("last_renewal"),
                           "holder_epoch": state.get("holder_epoch")}
    holder = observed.get("holder")
    witness_ok = bool(observed.get("witness_ok"))
    writable = observed.get("writable")
    held = new["lease"] is not None or new["holder_epoch"] is not None

    if observed.get("fenced"):  # only failback or an operator removes the marker
        note = "fenced (marker present); stays fenced until failback or an operator unfences it"
        if witness_ok and holder and holder.get("region") == region:
            note += (f"; note: the witness says {region} holds the baton "
                     f"(epoch {holder.get('epoch')})")
        return ["stay_fenced"], {**fresh_state(), "note": note}

    vanished = witness_ok and holder is None and observed.get("holder_seen") is not None
    if vanished:
        witness_ok = False
    if not witness_ok:
        lost = ("the holder key vanished from the witness (epoch "
                f"{observed.get('holder_seen')} was seen)" if vanished else "witness unreachable")
        if not held:
            age = float(observed.get("agent_age") or 0)
            if observed.get("writable") is True and age > fence_after:
                # Booted (or first started) while cut off: nothing says it may take writes.
                return ["fence"], {**new, "note": (f"{lost} for {age:.1f} s since the agent "
                                                   "started and this node's PostgreSQL is "
                                                   "writable")}
            return ["wait"], {**new, "note": f"{lost}; this node holds no baton"}
        age = math.inf if new["last_renewal"] is None else now - float(new["last_renewal"])
        if age > fence_after:
            return ["fence"], {**new, "note": f"no lease renewal for {age:.1f} s"
                                              + (f" ({lost})" if vanished else "")}
        return ["wait"], {**new, "note": (f"{lost}; last renewal {age:.1f} s ago, "
                                          f"fencing after {fence_after:g} s")}

    if holder is None:
        return ["idle"], {**new, "note": "the witness holds no baton yet (no holder key: the "
                                          "first deploy has not written it)"}

    epoch = int(holder["epoch"])
    held_epoch = new["holder_epoch"]
    moved_back = holder["region"] == region and held_epoch is not None and epoch > held_epoch
    if holder["region"] == region and not moved_back:
        # Renewals that keep failing while reads succeed (a witness that refuses this node's
        # writes, a lease it lost) fence like a witness that does not answer: the lease ends
        # on the witness either way. Counted from when this process first read its region as
        # the holder at this epoch at the earliest, so that a node the baton just came to, a
        # restarted agent or a rebooted node gets fence_after to take or renew its lease.
        age = min(math.inf if new["last_renewal"] is None else now - float(new["last_renewal"]),
                  float(observed.get("holding_for") or 0))
        if age > fence_after:
            return ["fence"], {**new, "note": (f"{region} holds the baton (epoch {epoch}) but "
                                               f"no renewal succeeded for {age:.1f} s")}
        action = "keepalive" if new["lease"] is not None else "grant"
        return [action], {**new, "note": f"{region} holds the baton (epoch {epoch}): renewing"}

    # Another region holds the baton, or it left this region and came back while this node
    # still held the old epoch (a paused VM): this node's PostgreSQL may be a stale primary.
    # Fence before releasing: the controller promotes the new region once this node's lease
    # is gone from the witness, so the lease must outlive this node's writes.
    release = ["release"] if new["lease"] is not None else []
    actions: list[str] = []
    if moved_back:
        why = (f"the baton left {region} and came back (epoch {held_epoch} -> {epoch}) while "
               f"this node held it")
    else:
        why = f"{holder['region']} holds the baton at epoch {epoch}"
    if writable is True:
        actions = ["fence", *release]
        note = f"{why} and this node's PostgreSQL is writable"
    elif writable is None and held:
        # Not known yet (a demoted primary restarting as a standby, a slow answer): keep the
        # lease without renewing it and look again next loop - but not past fence_after since
        # the last renewal: a PostgreSQL that stays silent that long is fenced, before the
        # lease can expire on the witness.
        age = math.inf if new["last_renewal"] is None else now - float(new["last_renewal"])
        if age > fence_after:
            return ["fence", *release], {**fresh_state(), "note": (
                f"{why} and this node's PostgreSQL has not answered for {age:.1f} s")}
        return ["wait"], {**new, "note": f"{why}; this node's PostgreSQL does not answer yet: "
                                         "looking again before letting the lease go"}
    else:
        actions = release or ["standby"]
        note = f"{why}; this node's PostgreSQL is not writable"
    return actions, {**fresh_state(), "note": note}


# --- the failover lock -------------------------------------------------------------------------

def proc_stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks since boot) of a process (/proc); None if gone."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def process_alive(pid: int, start: int) -> bool:
    """Whether process pid runs and started at `start`: a pid reused by another process does
    not count."""
    stat = proc_stat(pid)
    return stat is not None and stat[1] == int(start)


def keep_lock(witness: Any, lease: int, run_id: str, alive: Callable[[], bool],
              interval: float, sleep: Callable[[float], None] = time.sleep) -> str:
    """Keeps the failover lock's lease alive for as long as its run lives and the lock is
    still this run's; why it stopped. A run that stalls (its controller suspended, cut off from
    the witness) longer than the lease loses the lock, and its next check stops it."""
    while alive():
        try:
            entry = witness.get(LOCK)
            record = json.loads(entry.value) if entry else None
            if not isinstance(record, dict) or record.get("run_id") != run_id:
                return "the lock is no longer this run's"
            if witness.keepalive(lease) <= 0:
                return "the lock's lease has expired"
        except (WitnessError, ValueError):
            pass  # asked again next time; the lease outlives a few misses
        sleep(interval)
    return "the run has ended"


def keep_lock_main(args: Mapping[str, Any]) -> None:
    """The keeper process baton_lock starts (python -c with this file's source)."""
    witness = Witness(list(args["endpoints"]), timeout=float(args.get("timeout", 3)),
                      client=args.get("client"))
    keep_lock(witness, int(args["lease"]), str(args["run_id"]),
              lambda: process_alive(int(args["pid"]), int(args["pid_start"])),
              float(args["interval"]))


def lock_decision(existing: Mapping[str, Any] | None, me: Mapping[str, Any], now: float,
                  pid_alive: Callable[[int, int], bool], hostname: str) -> tuple[str, str]:
    """Whether this controller run may take the failover lock (pure but for pid_alive).

    existing, me: lock records {"run_id", "target", "kind" (failover|switchover|failback),
    "user", "host", "pid", "pid_start", "started" (ISO 8601)}; existing is None when the lock
    is free. pid_alive(pid, pid_start): whether that process still runs on this host (pid_start
    tells a reused pid apart). Returns ("acquire" | "already_mine" | "take_over" | "refuse",
    one sentence).
    """
    mine = f"run {me.get('run_id')} ({me.get('kind')} to {me.get('target')})"
    if existing is None:
        return "acquire", f"the baton lock is free: {mine} takes it"
    if existing.get("run_id") == me.get("run_id"):
        return "already_mine", f"{mine} already holds the baton lock"
    other = (f"run {existing.get('run_id', '?')} ({existing.get('kind', '?')} to "
             f"{existing.get('target', '?')}) by {existing.get('user', '?')}@"
             f"{existing.get('host', '?')}, started {existing.get('started', '?')}"
             f"{_age(existing.get('started'), now)}")
    pid, pid_start = existing.get("pid"), existing.get("pid_start")
    if existing.get("host") == hostname and isinstance(pid, int) and not isinstance(pid, bool):
        if not pid_alive(pid, int(pid_start or 0)):
            return "take_over", (f"the baton lock is stale: {other} held it, and its process "
                                 f"{pid} no longer runs on this host; {mine} takes it over")
        return "refuse", (f"the baton lock is held by {other}, still running here as process "
                          f"{pid}: wait for it to finish, or stop it first")
    return "refuse", (f"the baton lock is held by {other}: wait for it to finish; if that run "
                      f"died, its lease expires by itself after baton_lock_ttl, or break the "
                      f"lock with -e break_lock=true")


def _age(started: Any, now: float) -> str:
    try:
        when = datetime.fromisoformat(str(started))
    except ValueError:
        return ""
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = int(now - when.timestamp())
    if seconds < 0:
        return ""
    if seconds < 120:
        return f", {seconds} s ago"
    if seconds < 7200:
        return f", {seconds // 60} min ago"
    return f", {seconds // 3600} h ago"


# --- moving the baton (baton_holder, baton_handover) --------------------------------------------

class BatonStop(Exception):
    """A move of the baton that stopped: one sentence, and what was found (for the result)."""

    def __init__(self, msg: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.result = result or {}


def move_holder(witness: Witness, region: str, *, expect_region: str | None = None,
                lock_run_id: str = "", by: str = "", check_mode: bool = False
                ) -> dict[str, Any]:
    """Gives the baton to `region` (a compare-and-swap that bumps the epoch; with lock_run_id,
    in the same transaction as "this run still holds the failover lock"); a baton that region
    holds already is left as it is. {"changed", "before", "after"}; raises BatonStop."""
    from datetime import UTC, datetime

    entry = witness.get(HOLDER)
    try:
        before = json.loads(entry.value) if entry else None
        int(before.get("epoch", 0)) if before else 0
    except (ValueError, TypeError, AttributeError) as exc:
        raise BatonStop(f"the witness's {HOLDER} holds '{entry.value if entry else ''}', not a "
                        "baton record: restore it (etcdctl put, JSON with region and epoch) "
                        "from the last report before moving the baton") from exc
    result: dict[str, Any] = {"changed": False, "before": before, "after": before}
    if before is None:
        raise BatonStop("the witness has no baton holder yet: run site.yml first (it writes "
                        "the initial primary region)", result)
    if before.get("region") == region:
        return result
    if expect_region and before.get("region") != expect_region:
        raise BatonStop(f"the baton is held by {before.get('region')} (epoch "
                        f"{before.get('epoch')}), not {expect_region} as this run expected: "
                        "another run moved it; run health.yml and decide again", result)
    after = {"region": region, "epoch": int(before.get("epoch", 0)) + 1,
             "since": datetime.now(UTC).isoformat(), "by": by, "from": before.get("region")}
    result.update(changed=True, after=after)
    also: dict[str, int] = {}
    if lock_run_id:
        lock = witness.get(LOCK)
        holder_of_lock = (decode_record(lock.value) or {}).get("run_id") if lock else None
        if lock is None or holder_of_lock != lock_run_id:
            raise BatonStop(f"this run ({lock_run_id}) no longer holds the failover lock (now "
                            f"{holder_of_lock or 'nobody'}): the baton was not moved; see what "
                            "the other run did (its report, health.yml), then re-run", result)
        also[LOCK] = lock.mod_revision
    if not check_mode and not witness.swap(HOLDER, json.dumps(after), entry.mod_revision,
                                           also=also):
        now = witness.get(HOLDER)
        lock_now = witness.get(LOCK) if also else None
        if also and (lock_now is None or lock_now.mod_revision != also[LOCK]):
            raise BatonStop("the failover lock changed hands while this run was moving the "
                            "baton: the baton was not moved; see what the other run did (its "
                            "report, health.yml), then re-run", result)
        raise BatonStop(f"the baton moved while this run was deciding (now "
                        f"{now.value if now else 'gone'}): run health.yml and decide again",
                        result)
    return result


def lock_still_held(witness: Witness, run_id: str, step: str) -> None:
    """Raises BatonStop unless the failover lock is still this run's (before a step that
    moves something)."""
    lock = witness.get(LOCK)
    holder_of_lock = (decode_record(lock.value) or {}).get("run_id") if lock else None
    if holder_of_lock != run_id:
        raise BatonStop(f"this run ({run_id}) no longer holds the failover lock (now "
                        f"{holder_of_lock or 'nobody'}): it stops before it {step}; see what the "
                        "other run did (its report, health.yml), then re-run")


def wait_released(witness: Witness, old: str, region: str, wait_timeout: float, *,
                  settle: float = 0.0, moved: bool = True, check_mode: bool = False,
                  poll: float = 0.1, settle_unless_marked: float = 0.0) -> dict[str, Any]:
    """Waits until every liveness key of the old region is gone from the witness: its agents
    saw the new holder and fenced or let go (or, cut off, fenced before their leases expired).
    With settle_unless_marked, first waits that long after a move unless every key it finds
    was written by an agent that writes only while the holder key is unchanged (its record
    says "txn"): an older agent could write one just after the move, unseen.
    {"alive", "waited"}; raises BatonStop at wait_timeout."""
    started = time.monotonic()
    if moved and not check_mode and settle > 0:
        time.sleep(settle)
    prefix = alive_prefix(old)
    entries = witness.get_prefix(prefix)
    if moved and not check_mode and settle_unless_marked > 0 and (
            not entries or not all((decode_record(e.value) or {}).get("txn") for e in entries)):
        time.sleep(settle_unless_marked)
        entries = witness.get_prefix(prefix)
    alive = [e.key for e in entries]
    while alive and not check_mode:
        if time.monotonic() - started >= wait_timeout:
            raise BatonStop(f"{old}'s fence agents still hold leases on the witness "
                            f"{wait_timeout:g} s after the baton moved ({', '.join(alive)}): the "
                            f"region is not known to be fenced, so {region} is not promoted; "
                            "check baton-agent there (journalctl -u baton-agent), then re-run",
                            {"alive": alive})
        time.sleep(poll)
        alive = [e.key for e in witness.get_prefix(prefix)]
    return {"alive": alive, "waited": round(time.monotonic() - started, 3)}

"""Redis and Sentinel clients (redis-py), and the decisions Baton takes from what they report.

The decisions are pure functions of what was read, so unit tests feed them recorded replies.
redis-py is imported lazily: the controller has it in the project's venv, the nodes have
Debian's python3-redis (4.3), and both speak the small API used here.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

REDIS_MISSING = ("the Python library redis is missing on {where}: install python3-redis "
                 "(Debian) or `pip install redis`")


class RedisProblem(Exception):
    """One actionable sentence: what failed, where, and what to do."""


# The Baton CA's certificate, once use_tls set it: every client of this process speaks TLS.
_TLS_CA = ""


def use_tls(ca_file: str | None) -> None:
    """Speak TLS to Redis and Sentinel from now on (this process), trusting only ca_file (the
    Baton CA) and checking the address in the server's certificate; plain TCP when empty.
    Every Baton module that talks to Redis or Sentinel calls it with its tls_ca_file."""
    global _TLS_CA
    _TLS_CA = ca_file or ""


def client(host: str, port: int, password: str | None, timeout: float, where: str = "this host",
           once: bool = False, tls: bool = True):
    """A redis-py client (TLS once use_tls was given the CA) that raises RedisProblem for a
    missing library.

    once: try each command a single time. Recent redis-py retries a failed connection by
    default, which multiplies `timeout` against a host that drops packets.
    tls: False for plain text whatever use_tls said (to recognise a server before TLS).
    """
    try:
        import redis
    except ImportError as exc:
        raise RedisProblem(REDIS_MISSING.format(where=where)) from exc
    extra: dict[str, Any] = {}
    if tls and _TLS_CA:
        extra.update(ssl=True, ssl_ca_certs=_TLS_CA, ssl_cert_reqs="required",
                     ssl_check_hostname=True)
    if once:
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        extra["retry"] = Retry(NoBackoff(), 0)
    return redis.Redis(host=host, port=port, password=password or None,
                       socket_timeout=timeout, socket_connect_timeout=timeout,
                       decode_responses=True, **extra)


def _error_kind(exc: Exception) -> str:
    """'auth' for a refused password, 'down' for no answer, 'tls' for a failed TLS handshake,
    'error' otherwise."""
    name = type(exc).__name__
    text = str(exc)
    if name in ("AuthenticationError", "AuthenticationWrongNumberOfArgsError") or any(
            word in text for word in ("WRONGPASS", "NOAUTH", "invalid password",
                                      "invalid username-password")):
        return "auth"
    if "SSL" in text or "certificate" in text.lower():
        return "tls"
    if name in ("ConnectionError", "TimeoutError") or isinstance(exc, OSError):
        return "down"
    return "error"


def speaks_plain_text(host: str, port: int, timeout: float) -> bool:
    """Whether host:port answers a plain-text client (a server deployed before TLS): its PING
    gets PONG or NOAUTH."""
    try:
        client(host, port, None, timeout, once=True, tls=False).ping()
        return True
    except RedisProblem:
        raise
    except Exception as exc:  # redis-py's tree; NOAUTH means it answered
        return _error_kind(exc) == "auth"


def node_state(host: str, port: int, password: str | None, timeout: float) -> dict[str, Any]:
    """What one Redis server says of itself (ROLE); never raises for an unreachable server.

    Returns {address, answered, role ('master'|'replica'|None), master (host:port or None),
    link ('up'|'down'|None), offset, error, error_kind ('auth'|'down'|'error'|None)}.
    """
    state: dict[str, Any] = {"address": f"{host}:{port}", "answered": False, "role": None,
                             "master": None, "link": None, "offset": None, "error": None,
                             "error_kind": None}
    try:
        reply = client(host, port, password, timeout).execute_command("ROLE")
    except RedisProblem:
        raise
    except Exception as exc:  # redis-py raises its own tree; all mean "no usable answer"
        kind = _error_kind(exc)
        if kind == "tls" and _TLS_CA and speaks_plain_text(host, port, timeout):
            kind = "plain"
        state.update(error=f"{type(exc).__name__}: {exc}", error_kind=kind)
        return state
    state["answered"] = True
    state.update(parse_role(reply))
    return state


def parse_role(reply: list[Any]) -> dict[str, Any]:
    """The ROLE reply of a master or a replica, as a flat dict."""
    kind = str(reply[0])
    if kind == "master":
        return {"role": "master", "offset": int(reply[1]), "master": None, "link": None}
    if kind in ("slave", "replica"):
        state = "up" if str(reply[3]) == "connected" else "down"
        return {"role": "replica", "master": f"{reply[1]}:{reply[2]}", "link": state,
                "offset": int(reply[4])}
    return {"role": kind, "master": None, "link": None, "offset": None}


# min-replicas-to-write while a node is fenced (the agent's fence and its redis-gate use the
# same value: more replicas than any deployment has, so every write gets NOREPLICAS).
REDIS_FENCE = 1000000
# Set on the old master, with the pause's expiry, while a planned move hands Redis over: its
# fence agent leaves it alone meanwhile (baton_agent.py has the same two names: stdlib only).
# Names that begin with two underscores are out of the application's reach (redis_app_rules).
HANDOVER_KEY = "__baton__:handover"


def plan_server(role: dict[str, Any], priority: str | None, want_master: str,
                want_priority: int | None, fence: str | None = None,
                unfence_to: int | None = None) -> list[list[str]]:
    """The commands that make one server what is wanted (pure). want_master is '' for a
    master, else host:port of its master. fence is its min-replicas-to-write; unfence_to,
    when given, is the value that replaces a fence (a server of the holder region)."""
    commands: list[list[str]] = []
    if unfence_to is not None and str(fence) == str(REDIS_FENCE):
        commands.append(["CONFIG", "SET", "min-replicas-to-write", str(unfence_to)])
    if not want_master and role["role"] != "master":
        commands.append(["REPLICAOF", "NO", "ONE"])
    elif want_master and (role["role"] != "replica" or role["master"] != want_master):
        host, port = want_master.rsplit(":", 1)
        commands.append(["REPLICAOF", host, port])
    if want_priority is not None and str(priority) != str(want_priority):
        commands.append(["CONFIG", "SET", "replica-priority", str(want_priority)])
    if commands:
        commands.append(["CONFIG", "REWRITE"])
    return commands


def read_regions(regions: dict[str, list[str]], port: int, password: str | None,
                 timeout: float) -> dict[str, list[dict[str, Any]]]:
    """node_state of every node of every region, all in parallel: a dead region costs one
    timeout, not one per node."""
    jobs = [(r, a) for r, addrs in regions.items() for a in addrs]
    with ThreadPoolExecutor(max_workers=max(1, len(jobs))) as pool:
        futures = [(r, pool.submit(node_state, a, port, password, timeout)) for r, a in jobs]
        states: dict[str, list[dict[str, Any]]] = {r: [] for r in regions}
        for region, future in futures:
            states[region].append(future.result())
    return states


def decide_writable_region(states: dict[str, list[dict[str, Any]]],
                           database_primary: str) -> tuple[str, str]:
    """The region whose Redis takes writes, from what every node reports.

    The writable region is the one with a node that reports itself master. None anywhere is a
    first deploy (no server answered) or a region whose servers are all down: the database's
    primary region then. A server that still speaks plain text, a refused password, masters
    in two regions, or a writable region other than the database's, stop the run: each means
    the operator must look first.
    """
    def failed(kind: str) -> list[str]:
        return [n["address"] for nodes in states.values() for n in nodes
                if n["error_kind"] == kind]

    plain = failed("plain")
    if plain:
        raise RedisProblem(
            f"Redis at {', '.join(plain)} speaks plain text, not TLS: a deployment before "
            "Baton's TLS, which this run would cut off from its clients, replicas and "
            "Sentinels; move it to TLS first (README, 'Upgrading a plain-text Redis'), then "
            "re-run")
    refused = failed("auth")
    if refused:
        raise RedisProblem(
            f"Redis at {', '.join(refused)} refused the password: redis_password in the "
            "inventory does not match the running servers; set it to their password "
            "(ansible-vault), or change the servers' requirepass and masterauth first")
    masters = {r: [n["address"] for n in nodes if n["role"] == "master"]
               for r, nodes in states.items()}
    writable = [r for r, addrs in masters.items() if addrs]
    if len(writable) > 1:
        detail = "; ".join(f"{r}: {', '.join(masters[r])}" for r in writable)
        raise RedisProblem(
            f"Redis masters in more than one region ({detail}): make the regions that do not "
            "hold the baton replicas (REPLICAOF) before deploying")
    if len(writable) == 1:
        region = writable[0]
        if region != database_primary:
            raise RedisProblem(
                f"Redis takes writes in {region} but PostgreSQL's primary region is "
                f"{database_primary}: a failover did not finish; finish it before deploying")
        return region, f"{region} has the only Redis master"
    if not any(n["answered"] for nodes in states.values() for n in nodes):
        return database_primary, (f"no Redis server answered: first deploy, "
                                  f"{database_primary} as PostgreSQL's primary region")
    return database_primary, (f"no Redis master answered: {database_primary} as PostgreSQL's "
                              "primary region")


def region_master(nodes: list[dict[str, Any]]) -> str | None:
    """host:port of the node of a region that reports itself master, if one does."""
    return next((n["address"] for n in nodes if n["role"] == "master"), None)


# Sentinel -------------------------------------------------------------------------------

# Module option -> the name SENTINEL MASTERS and SENTINEL SET use.
MONITOR_SETTINGS = {
    "quorum": "quorum",
    "down_after_milliseconds": "down-after-milliseconds",
    "failover_timeout": "failover-timeout",
    "parallel_syncs": "parallel-syncs",
}


def monitor_settings_to_set(current: dict[str, Any], wanted: dict[str, Any]) -> dict[str, str]:
    """The SENTINEL SET pairs (sentinel name -> value) that make current hold wanted.

    current is one entry of SENTINEL MASTERS (flat strings); wanted maps module options to
    values, None meaning 'leave as is'.
    """
    changes: dict[str, str] = {}
    for option, name in MONITOR_SETTINGS.items():
        value = wanted.get(option)
        if value is not None and str(current.get(name)) != str(value):
            changes[name] = str(value)
    return changes


def masters_by_name(reply: Any) -> dict[str, dict[str, Any]]:
    """SENTINEL MASTERS as name -> flat dict, whichever shape redis-py returned."""
    if isinstance(reply, dict):  # redis-py parses it into {name: {...}}
        return {str(k): dict(v) for k, v in reply.items()}
    masters = {}
    for entry in reply or []:
        if isinstance(entry, dict):
            masters[str(entry["name"])] = entry
        else:  # a flat [k1, v1, k2, v2, ...] list
            pairs = dict(zip(entry[::2], entry[1::2], strict=False))
            masters[str(pairs["name"])] = pairs
    return masters


def config_settings_to_set(current: dict[str, str], wanted: dict[str, Any]) -> dict[str, str]:
    """The CONFIG SET pairs that make a server's live configuration hold wanted.

    Values compare as Redis prints them (CONFIG GET): booleans as yes/no, sizes in bytes.
    """
    changes = {}
    for name, value in wanted.items():
        text = redis_value(value)
        if current.get(name) != text:
            changes[name] = text
    return changes


def redis_value(value: Any) -> str:
    """A setting as CONFIG GET prints it: yes/no for booleans, plain text otherwise."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def monitor_commands(name: str, current: dict[str, Any] | None, state: str,
                     master_host: str | None, master_port: int, auth_pass: str | None,
                     wanted: dict[str, Any], auth_user: str = "") -> list[list[str]]:
    """The Sentinel commands that take a monitor from current (None: absent) to what is wanted.

    An existing monitor keeps its address (Sentinel moves it on failover); auth-user and
    auth-pass are sent only with a new monitor, since SENTINEL MASTERS never shows them.
    """
    if state == "absent":
        return [] if current is None else [["SENTINEL", "REMOVE", name]]
    commands: list[list[str]] = []
    if current is None:
        commands.append(["SENTINEL", "MONITOR", name, str(master_host), str(master_port),
                         str(wanted["quorum"])])
        if auth_user:
            commands.append(["SENTINEL", "SET", name, "auth-user", auth_user])
        if auth_pass:
            commands.append(["SENTINEL", "SET", name, "auth-pass", auth_pass])
        current = {"quorum": str(wanted["quorum"])}
    for setting, value in monitor_settings_to_set(current, wanted).items():
        commands.append(["SENTINEL", "SET", name, setting, value])
    return commands


def acl_rule_words(rules: str) -> list[str]:
    """ACL rules as ACL SETUSER's arguments: split at blanks, but a selector - `(...)`, which
    holds blanks itself - stays one argument."""
    words: list[str] = []
    selector: list[str] = []
    for word in rules.split():
        if selector or word.startswith("("):
            selector.append(word)
            if word.endswith(")"):
                words.append(" ".join(selector))
                selector = []
        else:
            words.append(word)
    if selector:
        raise RedisProblem(f"an ACL selector is not closed: {' '.join(selector)} (add ')')")
    return words


def acl_setuser_args(password: str, rules: str) -> list[str]:
    """ACL SETUSER's arguments after the user's name: exactly this password (its SHA-256, never
    the password itself) and these rules, nothing kept from before (reset)."""
    digest = hashlib.sha256(password.encode()).hexdigest()
    return ["reset", "on", f"#{digest}", *acl_rule_words(rules)]


# The connection options of a module that talks to one Redis server (its argument_spec).
SERVER_OPTIONS: dict[str, dict[str, Any]] = {
    "host": {"type": "str", "default": "127.0.0.1"},
    "port": {"type": "int", "default": 6379},
    "password": {"type": "str", "no_log": True},
    "timeout": {"type": "float", "default": 3.0},
    "tls_ca_file": {"type": "str", "default": ""},
}

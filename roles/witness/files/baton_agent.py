#!/usr/bin/python3
"""Baton agent: keeps a database node's lease on the global witness while its region holds
the baton, and fences the node when it must not accept writes.

    baton_agent.py run     --config /etc/baton/agent.json   # the service (baton-agent.service)
    baton_agent.py status  --config /etc/baton/agent.json   # JSON: fenced?, marker, holder, lease
    baton_agent.py unfence --config /etc/baton/agent.json   # remove the marker, ENABLE + RESUME
                                                            # the app database on PgBouncer
    baton_agent.py unfence-redis --config ...               # lift the Redis fence, once the
                                                            # node's Redis follows the holder
    baton_agent.py redis-gate    --config ...               # redis-server's ExecStartPre
    baton_agent.py sentinel-gate --config ...               # redis-sentinel's ExecStartPre

Every interval: read the holder key (linearizable) from the witness, ask the local PostgreSQL
whether it is writable, let baton_witness.agent_step decide, carry out what it says. To fence:
write the marker file first (patroni.service will not start while it exists), then start
Patroni's stop and, beside it, DISABLE and KILL the application database on PgBouncer's admin
console and make the node's Redis (if it runs one) refuse writes (min-replicas-to-write set out
of reach: NOREPLICAS, kept across restarts by CONFIG REWRITE); once Patroni has stopped, make
its Sentinel forget the master it watched (SENTINEL REMOVE: a fenced region's Sentinel must
never reconfigure anything). Unfencing never happens
by itself: failback (or an operator) runs `unfence`, then starts Patroni, and runs
`unfence-redis` once the node's Redis has become a replica of the holder's.

Gates, decided from the witness like Patroni's (`may-start`): before Redis starts, `redis-gate`
writes the fence into redis.conf when this Redis would start as a master outside the holder
region (or the node is fenced, or the witness does not answer); before Sentinel starts,
`sentinel-gate` removes every monitor from sentinel.conf unless this region holds the baton. So
a region that comes back after a failover has no writable Redis and no Sentinel that could
turn the new holder's master into its replica, from its first second.

The region's secondary name server: the agent asks it to check the primary's zone (rndc
refresh) when it starts, when the baton's epoch changes and when the witness answers again
after it did not, so a region that returns or heals does not answer from an old zone.

No writes without the agent: it runs as a Type=notify service with a watchdog, and Patroni and
Sentinel are bound to it (systemd stops them when it stops, dies or hangs; `agent-stopped`, its
ExecStopPost, fences a Redis master); back, it starts what stopped with it. `systemctl reload`
makes it check the code and configuration on disk (`check`) and replace itself (same PID).

Stdlib only (Debian's python3); baton_witness.py sits in the same folder. Its state (lease,
epoch, last renewal, the last epoch seen) survives a restart of the agent and a reboot in
/var/lib/baton, so a restart during a partition does not forget that the node held the baton.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from baton_witness import (
    HOLDER,
    Client,
    Witness,
    WitnessError,
    agent_step,
    alive_key,
    decode_record,
    fresh_state,
    parse_holder,
    utc_iso,
)

DEFAULTS: dict[str, Any] = {
    "interval": 1.0,
    "fence_after": 5.0,
    "lease_ttl": 10,
    "postgresql_port": 5432,
    "pgbouncer_port": 6432,
    "pgbouncer_database": "app",
    "pgbouncer_admin_username": "baton_pgbouncer",
    "pgbouncer_admin_password": "",
    "marker": "/var/lib/baton/fenced",
    "metrics": "/var/lib/prometheus/node-exporter/baton_agent.prom",
    "state": "/run/baton/agent-state.json",
    "redis_port": 0,  # 0: no Redis on this node
    "redis_username": "",  # the fence agent's ACL user ("": the default user)
    "redis_password": "",
    "redis_min_replicas_to_write": 0,  # the value the fence replaces, restored by unfence-redis
    "redis_config": "/etc/redis/redis.conf",
    "redis_tls_ca_file": "",  # the Baton CA: Redis and Sentinel speak TLS only ("": plain)
    "sentinel_port": 0,  # 0: no Sentinel on this node
    "sentinel_password": "",
    "sentinel_master_name": "baton",
    "sentinel_config": "/etc/redis/sentinel.conf",
    "dns_zone": "",  # the zone this node's secondary name server serves ("": none)
    "gate_wait": 10.0,  # seconds a gate keeps asking a silent witness before it fences
    # A Redis master outside the holder region is fenced once seen that long (a planned move
    # holds the old master paused for a few seconds; a run that died there would leave two).
    "redis_master_grace": 90.0,
}

# min-replicas-to-write while fenced: more replicas than any deployment has, so the master
# answers every write with NOREPLICAS (reads and replication go on).
REDIS_FENCE = 1000000
# Set (with the pause's expiry) on the old master while a planned move hands Redis over.
HANDOVER_KEY = "__baton__:handover"
# The units bound to the agent (BindsTo=, drop-ins of the witness role): systemd stops them
# when the agent stops, dies or hangs. Every loop the agent notes in BOUND_FILE which of them
# ran (or were starting or stopping) in the last BOUND_MEMORY seconds - systemd stops them as
# the agent dies, and an explicit stop of the agent stops them just before it - and when it is
# back it starts those again (their gates still decide what they may run as).
BOUND_UNITS = ("patroni", "redis-sentinel")
BOUND_FILE = "/run/baton/bound-units"
BOUND_MEMORY = 15.0


def read_bound_units() -> list[str] | None:
    """The bound units the agent last noted as running lately; None when nothing was noted."""
    try:
        with open(BOUND_FILE, encoding="utf-8") as handle:
            return [u for u in json.load(handle).get("units", []) if u in BOUND_UNITS]
    except (OSError, ValueError, AttributeError):
        return None

# What the running process loaded: the sha256 of agent.py, baton_witness.py and agent.json
# together, written after its first loop (the witness role's reload handler waits for it).
LOADED_FILE = "/run/baton/agent-loaded"


def loaded_stamp(cfg: dict[str, Any]) -> str:
    """sha256 of this agent's code and configuration files, as `cat ... | sha256sum` says."""
    digest = hashlib.sha256()
    here = os.path.dirname(os.path.abspath(__file__))
    for path in (os.path.abspath(__file__), os.path.join(here, "baton_witness.py"),
                 str(cfg.get("_path", ""))):
        try:
            with open(path, "rb") as handle:
                digest.update(handle.read())
        except OSError:
            pass
    return digest.hexdigest()


def sd_notify(message: str) -> bool:
    """Tells systemd (Type=notify: READY=1, WATCHDOG=1) over $NOTIFY_SOCKET; False without it."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if not path:
        return False
    if path.startswith("@"):  # an abstract socket
        path = "\0" + path[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.connect(path)
            sock.sendall(message.encode())
    except OSError:
        return False
    return True


def load_config(path: str) -> dict[str, Any]:
    with open(path, encoding="utf-8") as handle:
        cfg = {**DEFAULTS, **json.load(handle)}
    missing = [k for k in ("region", "node", "endpoints") if not cfg.get(k)]
    if missing:
        raise SystemExit(f"baton-agent: {path} lacks {', '.join(missing)}: re-run the witness role")
    cfg["interval"] = float(cfg["interval"])
    cfg["fence_after"] = float(cfg["fence_after"])
    cfg["lease_ttl"] = int(cfg["lease_ttl"])
    cfg["_path"] = path
    return cfg


def write_atomic(path: str, text: str, mode: int = 0o644) -> None:
    """Writes a file so that readers see the old or the new content, never half of it."""
    folder = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


def render_metrics(cfg: dict[str, Any], values: dict[str, float]) -> str:
    """node_exporter textfile lines for the agent's gauges (name -> value)."""
    labels = f'region="{_label(cfg["region"])}",node="{_label(cfg["node"])}"'
    helps = {
        "baton_agent_up": "1 while the agent runs its loop.",
        "baton_agent_fenced": "1 when this node is fenced (the marker file exists).",
        "baton_agent_holds_baton": "1 when this node renews a lease for its region's baton.",
        "baton_agent_region_holds_baton": "1 when the witness (last read) names this node's "
                                          "region as the holder.",
        "baton_agent_witness_reachable": "1 when the witness answered the last read.",
        "baton_agent_last_renewal_timestamp_seconds": "Unix time of the last lease renewal "
                                                      "(0: never).",
        "baton_agent_holder_epoch": "Epoch of the baton as last read from the witness (-1: "
                                    "unknown).",
        "baton_agent_loop_timestamp_seconds": "Unix time the agent finished its last loop "
                                              "(stale: the agent is dead or hung).",
    }
    lines: list[str] = []
    for name, value in values.items():
        lines += [f"# HELP {name} {helps.get(name, name)}", f"# TYPE {name} gauge",
                  f"{name}{{{labels}}} {_number(value)}"]
    return "\n".join(lines) + "\n"


def pgbouncer_command(cfg: dict[str, Any], command: str) -> str:
    """One command on PgBouncer's admin console; "ok" or the error (never raises). The
    password goes in the environment, never on the command line."""
    dsn = (f"host=127.0.0.1 port={cfg['pgbouncer_port']} dbname=pgbouncer "
           f"user={cfg['pgbouncer_admin_username']} connect_timeout=1")
    try:
        # Bounded: with the Redis command, the fence's first steps take at most 3 s, inside
        # lease_ttl - fence_after - interval (4 s by default).
        out = subprocess.run(["psql", dsn, "-XAtq", "-c", command], capture_output=True,
                             text=True, timeout=1, check=False,
                             env={**os.environ, "PGPASSWORD": str(cfg["pgbouncer_admin_password"])})
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    if out.returncode != 0:
        return f"failed: {(out.stderr or out.stdout).strip() or f'exit {out.returncode}'}"
    return "ok"


def redis_command(cfg: dict[str, Any], *args: str) -> tuple[bool, str]:
    """One command to this node's Redis with redis-cli, bounded by a second: (ok, reply or
    error), never raises. The password goes in the environment, never on the command line; TLS
    against the Baton CA when redis_tls_ca_file is set (the certificate names 127.0.0.1)."""
    ca_file = str(cfg.get("redis_tls_ca_file") or "")
    tls = ["--tls", "--cacert", ca_file] if ca_file else []
    user = ["--user", str(cfg["redis_username"])] if cfg.get("redis_username") else []
    try:
        out = subprocess.run(["redis-cli", "-e", *tls, *user, "-h", "127.0.0.1", "-p",
                              str(cfg["redis_port"]), *args],
                             capture_output=True, text=True, timeout=1, check=False,
                             env={**os.environ, "REDISCLI_AUTH": str(cfg["redis_password"])})
    except (OSError, subprocess.SubprocessError) as exc:
        return False, f"failed: {exc}"
    reply = (out.stdout or out.stderr).strip()
    # -e: an error reply (NOPERM, ERR...) exits non-zero; the prefixes catch older redis-cli.
    if out.returncode != 0 or reply.startswith(("ERR", "WRONGPASS", "NOAUTH", "NOPERM",
                                                "Could not")):
        return False, f"failed: {reply or f'exit {out.returncode}'}"
    return True, reply


def fence_redis(cfg: dict[str, Any], command: Any = redis_command, persist: bool = True) -> str:
    """Makes this node's Redis refuse writes; what happened, in a few words."""
    if not int(cfg.get("redis_port") or 0):
        return "no Redis on this node"
    ok, reply = command(cfg, "CONFIG", "SET", "min-replicas-to-write", str(REDIS_FENCE))
    if not ok:
        return f"min-replicas-to-write {REDIS_FENCE}: {reply}"
    if not persist:
        return f"min-replicas-to-write {REDIS_FENCE}: ok"
    return f"min-replicas-to-write {REDIS_FENCE}: ok, {persist_redis_fence(cfg, command)}"


def persist_redis_fence(cfg: dict[str, Any], command: Any = redis_command) -> str:
    """Keeps the fence in redis.conf (CONFIG REWRITE): a Redis restarted while fenced comes
    back fenced (the gate would fence it too; this also covers a node without the drop-in)."""
    if not int(cfg.get("redis_port") or 0):
        return "no Redis on this node"
    ok, reply = command(cfg, "CONFIG", "REWRITE")
    return "persisted" if ok else reply


def sentinel_command(cfg: dict[str, Any], *args: str) -> tuple[bool, str]:
    """One command to this node's Sentinel, like redis_command."""
    return redis_command({**cfg, "redis_port": cfg["sentinel_port"], "redis_username": "",
                          "redis_password": cfg["sentinel_password"]}, *args)


def fence_sentinel(cfg: dict[str, Any], command: Any = sentinel_command) -> str:
    """Makes this node's Sentinel forget the master it watched (Sentinel saves that in its
    file): a fenced region's Sentinel must not turn the new holder's master into a replica of
    the old one when the region comes back or the partition heals."""
    if not int(cfg.get("sentinel_port") or 0):
        return "no Sentinel on this node"
    ok, reply = command(cfg, "SENTINEL", "REMOVE", str(cfg["sentinel_master_name"]))
    if not ok and "No such master" in reply:
        return "watched nothing"
    return f"SENTINEL REMOVE {cfg['sentinel_master_name']}: {'ok' if ok else reply}"


def witness_holder_region(cfg: dict[str, Any]) -> str | None:
    """The region the witness says holds the baton; None when nobody does or it does not answer."""
    try:
        entry = Witness(list(cfg["endpoints"]), timeout=2,
                        client=cfg.get("client")).get(HOLDER)
        holder = parse_holder(entry.value if entry else None)
    except (WitnessError, ValueError):
        return None
    return holder["region"] if holder else None


def unfence_redis(cfg: dict[str, Any], command: Any = redis_command,
                  holder_region: Any = witness_holder_region) -> dict[str, Any]:
    """Lifts the Redis fence once this node's Redis is a replica (it follows the holder's
    master), or when it is a master and the witness says this node's region holds the baton
    (a holder region that fenced itself while nobody failed over). A fenced master anywhere
    else would take writes again: refused. Idempotent; 'changed' says whether it did
    something, 'error' why it could not."""
    if not int(cfg.get("redis_port") or 0):
        return {"changed": False, "redis": "no Redis on this node"}
    ok, reply = command(cfg, "CONFIG", "GET", "min-replicas-to-write")
    if not ok:
        return {"changed": False, "error": f"cannot read the Redis fence: {reply}"}
    lines = reply.split()
    current = int(lines[1]) if len(lines) > 1 and lines[1].isdigit() else None
    if current != REDIS_FENCE:
        return {"changed": False, "redis": f"not fenced (min-replicas-to-write {current})"}
    ok, role = command(cfg, "ROLE")
    is_replica = ok and bool(role.split()) and role.split()[0] == "slave"
    if not is_replica and not (ok and holder_region(cfg) == cfg.get("region")):
        return {"changed": False,
                "error": "this node's Redis is still a master (or does not answer: "
                         f"{role.split()[0] if ok and role.split() else role}): it stays fenced "
                         "until it replicates from the holder's master (failback.yml does that)"}
    wanted = str(int(cfg.get("redis_min_replicas_to_write") or 0))
    ok, reply = command(cfg, "CONFIG", "SET", "min-replicas-to-write", wanted)
    if not ok:
        return {"changed": False, "error": f"cannot lift the Redis fence: {reply}"}
    ok, reply = command(cfg, "CONFIG", "REWRITE")
    if not ok:
        return {"changed": True, "error": f"fence lifted but not saved to redis.conf: {reply}"}
    return {"changed": True, "redis": f"fence lifted (min-replicas-to-write {wanted})"}


# --- gates: what a service may start as, decided from the witness -----------------------------

def read_holder_patiently(cfg: dict[str, Any], sleep: Any = time.sleep,
                          clock: Any = time.monotonic) -> tuple[bool, dict[str, Any] | None, str]:
    """(answered, holder, error): the witness's holder, asked again for up to gate_wait
    seconds when it does not answer (a node booting before its network, a witness election)."""
    deadline = clock() + float(cfg.get("gate_wait") or 0)
    while True:
        try:
            entry = Witness(list(cfg["endpoints"]), timeout=2,
                        client=cfg.get("client")).get(HOLDER)
            return True, parse_holder(entry.value if entry else None), ""
        except (WitnessError, ValueError) as exc:
            error = str(exc)
        if clock() >= deadline:
            return False, None, error
        sleep(1)


def saved_seen_epoch(cfg: dict[str, Any]) -> int | None:
    """The epoch of the last holder key the agent read (its state file); None: never."""
    try:
        with open(cfg["state"], encoding="utf-8") as handle:
            seen = json.load(handle).get("seen_epoch")
    except (OSError, ValueError, AttributeError):
        return None
    return int(seen) if isinstance(seen, int) else None


def vanished(seen: int | None) -> str:
    return (f"the holder key is gone from the witness although epoch {seen} was seen (deleted: "
            "site.yml writes it again from the live clusters)")


def may_serve(cfg: dict[str, Any], answered: bool, holder: dict[str, Any] | None,
              fenced: bool, seen: int | None = None) -> tuple[bool, str]:
    """Whether this node's Redis may take writes and its Sentinel may watch a master: only
    when the witness names this region (or nobody yet: the first deploy, never a key that
    vanished after it was seen) and the node is not fenced (pure)."""
    if fenced:
        return False, "this node is fenced (marker present)"
    if not answered:
        return False, "the witness does not answer"
    if holder is None and seen is not None:
        return False, vanished(seen)
    if holder is None:
        return True, "the witness names no holder yet (first deploy)"
    if holder["region"] == cfg["region"]:
        return True, f"{cfg['region']} holds the baton (epoch {holder['epoch']})"
    return False, f"{holder['region']} holds the baton (epoch {holder['epoch']})"


def conf_set(text: str, name: str, value: str | None) -> str:
    """text (redis.conf) with every `name ...` line replaced by `name value` (None: removed),
    or the line appended when there was none (pure)."""
    lines, done = [], False
    for line in text.splitlines():
        words = line.split()
        if words and words[0].lower() == name:
            if value is not None and not done:
                lines.append(f"{name} {value}")
                done = True
            continue
        lines.append(line)
    if value is not None and not done:
        lines.append(f"{name} {value}")
    return "\n".join(lines) + "\n"


def conf_value(text: str, name: str) -> str | None:
    """The last `name value` of a redis.conf text (pure); None when absent."""
    found = None
    for line in text.splitlines():
        words = line.split(None, 1)
        if words and words[0].lower() == name:
            found = words[1].strip() if len(words) > 1 else ""
    return found


def redis_gate_text(cfg: dict[str, Any], text: str, allowed: bool) -> tuple[str, str]:
    """redis.conf as the gate leaves it, and why (pure). A Redis that will start as a replica
    (a replicaof line) needs no fence: it refuses writes, and only Baton promotes it. One that
    will start as a master is fenced unless it may take writes; a fence left in the holder
    region (allowed) is lifted."""
    fence = str(REDIS_FENCE)
    current = conf_value(text, "min-replicas-to-write")
    if allowed:
        if current == fence:
            wanted = str(int(cfg.get("redis_min_replicas_to_write") or 0))
            return conf_set(text, "min-replicas-to-write", wanted), "fence lifted"
        return text, "not fenced"
    if conf_value(text, "replicaof") or conf_value(text, "slaveof"):
        return text, "starts as a replica: no fence needed"
    if current == fence:
        return text, "fenced already"
    return conf_set(text, "min-replicas-to-write", fence), f"fenced (min-replicas-to-write {fence})"


# Per-master lines of sentinel.conf (`sentinel <directive> <master> ...`).
SENTINEL_MASTER_DIRECTIVES = {
    "monitor", "known-replica", "known-slave", "known-sentinel", "leader-epoch", "config-epoch",
    "auth-pass", "auth-user", "down-after-milliseconds", "failover-timeout", "parallel-syncs",
    "notification-script", "client-reconfig-script", "rename-command",
    "master-reboot-down-after-period", "quorum",
}


def sentinel_gate_text(text: str) -> tuple[str, list[str]]:
    """sentinel.conf without any monitor (every per-master line), and the masters removed
    (pure)."""
    kept, removed = [], []
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[0].lower() == "sentinel" \
                and words[1].lower() in SENTINEL_MASTER_DIRECTIVES:
            if words[1].lower() == "monitor":
                removed.append(words[2])
            continue
        kept.append(line)
    return "\n".join(kept) + "\n", removed


def rewrite_conf(path: str, text: str) -> None:
    """Replaces a service's configuration file, keeping its owner and mode."""
    info = os.stat(path)
    write_atomic(path, text, mode=info.st_mode & 0o7777)
    os.chown(path, info.st_uid, info.st_gid)


def gate(cfg: dict[str, Any], kind: str, log: Any) -> int:
    """redis-gate / sentinel-gate: edit the service's file before it starts. Always lets the
    service start (exit 0): a fenced Redis serves reads and replication; an idle Sentinel
    answers. Exits 1 only when the file cannot be read or written."""
    answered, holder, error = read_holder_patiently(cfg)
    allowed, why = may_serve(cfg, answered, holder, os.path.exists(cfg["marker"]),
                             saved_seen_epoch(cfg))
    why += f" ({error})" if error else ""
    path = cfg["redis_config" if kind == "redis" else "sentinel_config"]
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        log(f"{kind}-gate: cannot read {path}: {exc}")
        return 1
    if kind == "redis":
        new, what = redis_gate_text(cfg, text, allowed)
    elif allowed or (not answered and not os.path.exists(cfg["marker"])):
        # A silent witness (a holder node booting before its network) leaves the monitors:
        # a cut-off region's Sentinel reaches nothing outside it, and its agent's fence
        # removes them before the partition can heal.
        new, what = text, "may watch"
    else:
        new, removed = sentinel_gate_text(text)
        what = (f"monitors removed: {', '.join(removed)}" if removed
                else "watches nothing") if new != text or removed else "watches nothing"
    if new != text:
        try:
            rewrite_conf(path, new)
        except OSError as exc:
            log(f"{kind}-gate: cannot write {path}: {exc}")
            return 1
    log(f"{kind}-gate: {what}: {why}")
    return 0


def refresh_zone(cfg: dict[str, Any]) -> str:
    """Asks this node's secondary name server to check the primary's zone now (rndc refresh);
    what happened, in a few words. Never raises."""
    try:
        out = subprocess.run(["rndc", "refresh", str(cfg["dns_zone"])], capture_output=True,
                             text=True, timeout=3, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"failed: {exc}"
    return "ok" if out.returncode == 0 else f"failed: {(out.stderr or out.stdout).strip()}"


class Agent:
    """One database node's agent: observe, decide (agent_step), act."""

    def __init__(self, cfg: dict[str, Any], witness: Witness | None = None) -> None:
        self.cfg = cfg
        # One loop's witness calls stay within the interval: the holder read and the renewal
        # each get half of it, over all members (an unreachable member costs its share once;
        # the next call starts at the next member). Not less per member: a linearizable read
        # through a follower costs two round trips to the leader's region.
        share = max(0.2, cfg["interval"] / 2)
        self.witness = witness or Witness(list(cfg["endpoints"]), timeout=share, budget=share,
                                          client=cfg.get("client"))
        self.state = fresh_state()
        self.last_renewal_wall = 0.0
        self.holder: dict[str, Any] | None = None
        self.witness_error = ""
        self.holder_revision = 0  # mod_revision of the holder key this loop read
        self.last_summary = ""
        self.started = time.monotonic()
        self.loops = 0
        # The name server is asked to refresh at start, on a new epoch and when the witness
        # answers again: the epoch it last refreshed for, and whether the witness answered.
        self.zone_epoch: Any = "start"
        self.witness_was_ok = True
        self.redis_master_since: float | None = None
        self.zone_retry_at = 0
        # The epoch of the last holder key read (kept on disk): a key that vanishes after it
        # was seen fails closed (agent_step, may-start and the gates).
        self.seen_epoch: int | None = None
        self.bound_noted: list[str] | None = None
        self.bound_seen: dict[str, float] = {}
        self.redis_checked = False  # the Redis fence looked at in a holding loop yet
        # (region, epoch) of the holder key naming this node's region, and when this process
        # first read it (agent_step's "holding_for").
        self.holding: tuple[Any, Any] | None = None
        self.holding_since = 0.0
        self.load_state()

    # --- helpers ---

    def log(self, message: str) -> None:
        print(f"baton-agent {self.cfg['node']}: {message}", flush=True)

    def load_state(self) -> None:
        """The state a previous run of the agent left (on disk: it survives a reboot, so a node
        rebooted while cut off still knows it held the baton). A saved lease the witness no
        longer knows is dropped with its epoch (the baton may have left and come back while
        the agent was down); when the witness does not answer, the state is kept."""
        try:
            with open(self.cfg["state"], encoding="utf-8") as handle:
                saved = json.load(handle)
        except (OSError, ValueError):
            return
        self.seen_epoch = saved.get("seen_epoch")
        wall = float(saved.get("last_renewal_wall") or 0)
        self.state = {"lease": saved.get("lease"), "holder_epoch": saved.get("holder_epoch"),
                      "last_renewal": (time.monotonic() - max(0.0, time.time() - wall)
                                       if wall else None)}
        self.last_renewal_wall = wall
        if self.state["lease"] is not None:
            try:
                if self.witness.time_to_live(int(self.state["lease"])) <= 0:
                    self.log(f"saved lease {self.state['lease']} is gone from the witness: "
                             "starting afresh")
                    self.state = fresh_state()
                    return
            except (WitnessError, ValueError):
                pass
        if self.state["lease"] is not None or self.state["holder_epoch"] is not None:
            self.log(f"resuming: lease {self.state['lease']}, epoch "
                     f"{self.state['holder_epoch']}, last renewal "
                     f"{utc_iso(wall) if wall else 'never'}")

    def save_state(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.cfg["state"]), mode=0o700, exist_ok=True)
            write_atomic(self.cfg["state"], json.dumps(
                {"lease": self.state["lease"], "holder_epoch": self.state["holder_epoch"],
                 "last_renewal_wall": self.last_renewal_wall if self.state["last_renewal"]
                 is not None else 0, "seen_epoch": self.seen_epoch}), mode=0o600)
        except OSError as exc:
            self.log(f"cannot save state to {self.cfg['state']}: {exc}")

    def writable(self) -> bool | None:
        """Whether the local PostgreSQL accepts writes; None when it does not answer."""
        timeout = max(2.0, self.cfg["interval"])
        try:
            # As postgres over the local socket (peer), without a PAM session per loop.
            out = subprocess.run(
                ["psql", "-p", str(self.cfg["postgresql_port"]), "-XAtqc",
                 "SELECT NOT pg_is_in_recovery()"],
                capture_output=True, text=True, timeout=timeout, check=False, user="postgres",
                group="postgres", cwd="/", env={**os.environ, "PGCONNECT_TIMEOUT": "2"})
        except (OSError, subprocess.SubprocessError):
            return None
        answer = out.stdout.strip()
        return {"t": True, "f": False}.get(answer) if out.returncode == 0 else None

    def pgbouncer(self, command: str) -> str:
        return pgbouncer_command(self.cfg, command)

    # --- the loop ---

    def observe(self) -> dict[str, Any]:
        fenced = os.path.exists(self.cfg["marker"])
        witness_ok, holder = False, None
        try:
            entry = self.witness.get(HOLDER)
            holder = parse_holder(entry.value if entry else None)
            self.holder_revision = entry.mod_revision if entry else 0
            witness_ok = True
            self.witness_error = ""
        except WitnessError as exc:
            self.witness_error = f"witness unreachable: {exc}"
        except ValueError as exc:  # a holder key nobody can read: nobody may rely on it
            self.witness_error = f"unreadable holder key: {exc}"
        self.holder = holder if witness_ok else self.holder
        if holder is not None:
            self.seen_epoch = int(holder["epoch"])
        now = time.monotonic()
        # Not while fenced: a node an operator unfences gets fence_after from then to take its
        # lease (counted from before, it would fence again at once).
        mine = (holder["region"], holder["epoch"]) if holder is not None \
            and holder["region"] == self.cfg["region"] and not fenced else None
        if mine != self.holding:
            self.holding, self.holding_since = mine, now
        # Asked only when it matters: another region holds the baton, or it came back at a
        # newer epoch than the one this node held (the holder's own nodes just renew), or the
        # witness does not answer a node that holds nothing (booted while cut off).
        held_epoch = self.state.get("holder_epoch")
        held = self.state.get("lease") is not None or held_epoch is not None
        matters = bool(witness_ok and holder and not fenced) and (
            holder["region"] != self.cfg["region"]
            or (held_epoch is not None and int(holder["epoch"]) > int(held_epoch)))
        matters = matters or (not witness_ok and not fenced and not held)
        # A holder key that vanished after it was seen: is a node that holds nothing writable?
        matters = matters or (witness_ok and holder is None and self.seen_epoch is not None
                              and not fenced and not held)
        writable = self.writable() if matters else None
        return {"witness_ok": witness_ok, "holder": holder, "writable": writable,
                "holder_revision": self.holder_revision if witness_ok else None,
                "fenced": fenced, "agent_age": time.monotonic() - self.started,
                "holding_for": now - self.holding_since if self.holding else 0.0,
                "holder_seen": self.seen_epoch}

    def alive(self) -> None:
        """Tells systemd's watchdog the loop makes progress (between steps that are each
        bounded well under baton_agent_watchdog)."""
        sd_notify("WATCHDOG=1")

    def step(self) -> list[str]:
        observed = self.observe()
        self.alive()
        actions, new_state = agent_step(self.state, observed, time.monotonic(), self.cfg)
        note = new_state.pop("note", "")
        previous, self.state = self.state, new_state
        summary = ",".join(actions)
        if "fence" not in actions and summary != self.last_summary:
            detail = f" ({self.witness_error})" if self.witness_error else ""
            self.log(f"{summary.upper()}: {note}{detail}")
        self.last_summary = summary
        for action in actions:
            handler = getattr(self, f"do_{action}", None)
            if handler is not None:  # stay_fenced, idle, standby, wait: nothing to do
                handler(observed, note, previous)
                self.alive()
        self.save_state()
        self.write_metrics(observed)
        self.after_step(observed, actions)
        self.alive()
        return actions

    def after_step(self, observed: dict[str, Any], actions: list[str]) -> None:
        """What follows the baton besides PostgreSQL: the name server's zone, and in the
        holder region a Redis fence left by a gate that could not read the witness."""
        # Each call below is bounded (3 s at most) and followed by a word to the watchdog.
        self.loops += 1
        self.note_bound_units()
        self.alive()
        epoch = (observed.get("holder") or {}).get("epoch")
        regained = observed["witness_ok"] and not self.witness_was_ok
        self.witness_was_ok = observed["witness_ok"]
        if self.cfg.get("dns_zone") and observed["witness_ok"] and (
                regained or epoch != self.zone_epoch) and (
                regained or self.loops >= self.zone_retry_at):
            why = ("the witness answers again" if regained else "agent started"
                   if self.zone_epoch == "start" else f"epoch {self.zone_epoch} -> {epoch}")
            result = refresh_zone(self.cfg)
            self.alive()
            if result == "ok":
                self.zone_epoch = epoch
            else:  # asked again 10 loops on (named not up yet, say): a loop stays short
                self.zone_retry_at = self.loops + 10
            if result == "ok" or self.loops % 30 == 1:
                self.log(f"name server: rndc refresh {self.cfg['dns_zone']} ({why}): {result}")
        holder = observed.get("holder")
        elsewhere = bool(observed["witness_ok"] and holder
                         and holder.get("region") != self.cfg["region"])
        fencing = "fence" in actions or observed["fenced"]  # the fence covers Redis itself
        if elsewhere and not fencing and int(self.cfg.get("redis_port") or 0) \
                and self.loops % 5 == 1:
            self.check_redis_outside_holder(holder)
            self.alive()
        elif not elsewhere:
            self.redis_master_since = None
        holds = actions and actions[0] in ("grant", "keepalive")
        if holds and int(self.cfg.get("redis_port") or 0) and (
                self.loops % 10 == 1 or not self.redis_checked):
            # The first holding loop too: a restart of the agent fenced Redis (agent-stopped).
            lifted = unfence_redis(self.cfg, holder_region=lambda _cfg: self.cfg["region"])
            self.redis_checked = not lifted.get("error")
            self.alive()
            if lifted.get("changed"):
                self.log(f"Redis: {lifted.get('redis') or lifted.get('error')} (this region "
                         "holds the baton)")

    def do_grant(self, observed: dict[str, Any], note: str,
                 previous: dict[str, Any]) -> None:
        cfg, holder = self.cfg, observed["holder"]
        sent, sent_wall = time.monotonic(), time.time()
        try:
            lease = self.witness.grant(cfg["lease_ttl"])
        except WitnessError as exc:
            self.log(f"cannot get a lease: {exc}")
            return
        # "txn": written only while the holder key was unchanged (the controller waits a
        # settle for records without it, which an agent of an older release wrote).
        record = {"node": cfg["node"], "region": cfg["region"], "epoch": holder["epoch"],
                  "renewed_at": utc_iso(sent_wall), "txn": True}
        # Only while the holder key is the one this loop read: a liveness key written after
        # the baton moved would be one the controller may not see when it waits for this
        # region's keys to go (it reads them right after the move, without waiting a loop).
        try:
            written = self.witness.put_unless_moved(
                alive_key(cfg["region"], cfg["node"]), json.dumps(record), lease,
                {HOLDER: observed["holder_revision"]})
        except WitnessError as exc:
            self.log(f"cannot write {alive_key(cfg['region'], cfg['node'])}: {exc}")
            self._revoke(lease)
            return
        if not written:
            self.log("the baton moved while this node was taking its lease: no lease taken")
            self._revoke(lease)
            return
        self.state.update(lease=lease, last_renewal=sent, holder_epoch=holder["epoch"])
        self.last_renewal_wall = sent_wall
        self.log(f"LEASE {lease} ({cfg['lease_ttl']} s) for {cfg['region']}'s baton, epoch "
                 f"{holder['epoch']}")

    def do_keepalive(self, observed: dict[str, Any], note: str,
                     previous: dict[str, Any]) -> None:
        sent, sent_wall = time.monotonic(), time.time()
        try:
            ttl = self.witness.keepalive(self.state["lease"])
        except WitnessError as exc:
            self.log(f"lease {self.state['lease']} not renewed: {exc}")
            return
        if ttl <= 0:
            self.log(f"lease {self.state['lease']} has expired on the witness: taking a new one")
            self.state["lease"] = None  # holder_epoch and last_renewal stay: still the holder
            return
        self.state["last_renewal"] = sent
        self.last_renewal_wall = sent_wall

    def do_release(self, observed: dict[str, Any], note: str,
                   previous: dict[str, Any]) -> None:
        if previous.get("lease") is not None:
            self._revoke(previous["lease"])
            self.log(f"RELEASED lease {previous['lease']}: {note}")

    def _revoke(self, lease: int) -> None:
        try:
            self.witness.revoke(lease)
        except WitnessError as exc:
            self.log(f"cannot revoke lease {lease} (it expires by itself): {exc}")

    def do_fence(self, observed: dict[str, Any], note: str,
                 previous: dict[str, Any]) -> None:
        reason = note + (f" ({self.witness_error})" if self.witness_error else "")
        holder = observed.get("holder") or self.holder or {}
        fence(self.cfg, reason, holder.get("epoch"), self.pgbouncer, self.log, self.alive)

    def check_redis_outside_holder(self, holder: dict[str, Any]) -> None:
        """Fences this node's Redis when it has been a writable master for redis_master_grace
        while another region holds the baton (nothing Baton does leaves it so that long)."""
        ok, role = redis_command(self.cfg, "ROLE")
        master = ok and role.split()[:1] == ["master"]
        if master:
            ok, reply = redis_command(self.cfg, "CONFIG", "GET", "min-replicas-to-write")
            master = ok and reply.split()[1:2] != [str(REDIS_FENCE)]
        if master:  # a planned handover holds it paused on purpose (baton_redis_replication)
            ok, reply = redis_command(self.cfg, "EXISTS", HANDOVER_KEY)
            master = not (ok and reply.strip() == "1")
        if not master:
            self.redis_master_since = None
            return
        now = time.monotonic()
        self.redis_master_since = self.redis_master_since or now
        if now - self.redis_master_since >= float(self.cfg["redis_master_grace"]):
            self.log(f"Redis: a writable master for {now - self.redis_master_since:.0f} s while "
                     f"{holder['region']} holds the baton (epoch {holder.get('epoch')}): "
                     f"{fence_redis(self.cfg, redis_command)}")
            self.redis_master_since = None

    def note_bound_units(self) -> None:
        """Notes which bound units ran lately (BOUND_FILE), for the agent's next start; never
        raises. Units seen running in the last BOUND_MEMORY seconds count: an explicit
        `systemctl stop baton-agent` stops Patroni just before the agent."""
        if not os.environ.get("NOTIFY_SOCKET"):
            return  # not run by systemd (Type=notify): nothing is bound to this process
        now = time.monotonic()
        try:
            out = subprocess.run(["systemctl", "is-active", *BOUND_UNITS], capture_output=True,
                                 text=True, timeout=3, check=False)
        except (OSError, subprocess.SubprocessError) as exc:
            self.log(f"cannot note the units bound to the agent: {exc}")
            return
        states = out.stdout.split()
        if len(states) != len(BOUND_UNITS):
            self.log(f"cannot note the units bound to the agent: systemctl said {states}")
            return
        for unit, state in zip(BOUND_UNITS, states, strict=True):
            if state in ("active", "activating", "reloading", "refreshing", "deactivating"):
                self.bound_seen[unit] = now
        running = [unit for unit in BOUND_UNITS
                   if now - self.bound_seen.get(unit, -math.inf) <= BOUND_MEMORY]
        if running != self.bound_noted:
            try:
                os.makedirs(os.path.dirname(BOUND_FILE), exist_ok=True)
                write_atomic(BOUND_FILE, json.dumps({"units": running}))
                self.bound_noted = running
            except OSError as exc:
                self.log(f"cannot note the units bound to the agent: {exc}")

    def restart_bound_units(self, units: list[str]) -> None:
        """Starts what systemd stopped with the agent's previous process. Patroni's gate
        (may-start) and the fence marker, and Sentinel's gate, still decide what they may run
        as; a unit that runs already is left alone."""
        units = list(units)
        if "patroni" in units and os.path.exists(self.cfg["marker"]):
            units.remove("patroni")
        for unit in units:
            self.alive()
            try:
                running = subprocess.run(["systemctl", "is-active", "--quiet", unit], timeout=3,
                                         check=False).returncode == 0
                self.alive()
                if running:
                    continue
                out = subprocess.run(["systemctl", "start", "--no-block", unit],
                                     capture_output=True, text=True, timeout=3, check=False)
                result = "ok" if out.returncode == 0 else (out.stderr.strip() or
                                                           f"exit {out.returncode}")
            except (OSError, subprocess.SubprocessError) as exc:
                result = f"failed: {exc}"
            self.log(f"{unit} was stopped with the agent: systemctl start {unit}: {result}")

    def write_metrics(self, observed: dict[str, Any]) -> None:
        path = self.cfg["metrics"]
        if not os.path.isdir(os.path.dirname(path)):
            return  # node_exporter's textfile folder is not there (yet)
        holds = (observed["witness_ok"] and self.state["lease"] is not None
                 and (observed["holder"] or {}).get("region") == self.cfg["region"])
        epoch = (self.holder or {}).get("epoch")
        values = {
            "baton_agent_up": 1,
            "baton_agent_fenced": int(os.path.exists(self.cfg["marker"])),
            "baton_agent_holds_baton": int(bool(holds)),
            "baton_agent_region_holds_baton": int((self.holder or {}).get("region")
                                                  == self.cfg["region"]),
            "baton_agent_witness_reachable": int(observed["witness_ok"]),
            "baton_agent_last_renewal_timestamp_seconds": round(self.last_renewal_wall, 3),
            "baton_agent_holder_epoch": -1 if epoch is None else int(epoch),
            "baton_agent_loop_timestamp_seconds": round(time.time(), 3),
        }
        try:
            write_atomic(path, render_metrics(self.cfg, values))
        except OSError as exc:
            self.log(f"cannot write {path}: {exc}")

    def reload(self) -> None:
        """Replaces this process with the agent on disk (same PID: systemd sees no stop), once
        the new code and configuration have been checked; if they fail, it keeps running."""
        try:
            check = subprocess.run([sys.executable, sys.argv[0], "check", *sys.argv[2:]],
                                   capture_output=True, text=True, timeout=3, check=False)
            said = (check.stderr or check.stdout).strip().splitlines()
            problem = "" if check.returncode == 0 else (said[-1] if said else
                                                        f"exit {check.returncode}")
        except (OSError, subprocess.SubprocessError) as exc:
            problem = str(exc)
        self.alive()
        if problem:
            self.log(f"reload refused, the running agent goes on: the new agent fails its "
                     f"check: {problem[-300:]}")
            return
        self.save_state()
        self.log("reloading: the agent replaces itself (same PID; the lease is kept)")
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        self.alive()
        try:
            os.execv(sys.executable, [sys.executable, *sys.argv])
        except OSError as exc:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
            self.log(f"reload failed, the running agent goes on: {exc}")

    def run(self) -> None:
        stopping: list[int] = []
        reloading: list[int] = []
        signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
        # systemctl reload (a new agent.py or agent.json): the process replaces itself at the
        # end of a loop, keeping its PID, so systemd never sees it stop and Patroni, bound to
        # it, keeps running.
        signal.signal(signal.SIGHUP, lambda signum, _frame: reloading.append(signum))
        # Blocked across the exec of a reload (below) until the handler is back: a reload
        # arriving meanwhile waits instead of killing the agent (and Patroni with it).
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        sd_notify("WATCHDOG=1")  # after an exec too: the new process is alive
        to_restart = read_bound_units() or []  # the previous process's, before this one notes
        now = time.monotonic()
        self.bound_seen.update({unit: now for unit in to_restart})  # kept if it dies again
        loaded = loaded_stamp(self.cfg)
        self.log(f"started: region {self.cfg['region']}, witness "
                 f"{', '.join(self.cfg['endpoints'])}, every {self.cfg['interval']:g} s, fencing "
                 f"after {self.cfg['fence_after']:g} s without renewal, lease "
                 f"{self.cfg['lease_ttl']} s")
        interval = self.cfg["interval"]
        tick = time.monotonic()
        ready = False
        while not stopping:
            try:
                self.step()
            except Exception as exc:  # the loop must go on; the log says why
                self.log(f"loop error: {type(exc).__name__}: {exc}")
            if not ready:  # after the first loop, whatever it decided
                ready = True
                sd_notify("READY=1")
                self.restart_bound_units(to_restart)
                try:  # what this process runs (the reload handler waits for it)
                    write_atomic(LOADED_FILE, loaded + "\n")
                except OSError as exc:
                    self.log(f"cannot write {LOADED_FILE}: {exc}")
            if reloading and not stopping:
                reloading.clear()
                self.reload()
            tick += interval
            delay = tick - time.monotonic()
            if delay < 0:  # overran: start the next loop now, on a new schedule
                tick, delay = time.monotonic(), 0
            time.sleep(delay)
        # Keep the lease: a restart resumes it (state in /var/lib/baton); it expires by itself.
        self.log("stopping (the lease, if any, is kept and expires by itself)")
        metrics = self.cfg["metrics"]
        if os.path.isdir(os.path.dirname(metrics)):
            write_atomic(metrics, render_metrics(self.cfg, {"baton_agent_up": 0}))


def fence(cfg: dict[str, Any], reason: str, epoch: Any, pgbouncer: Any, log: Any,
          alive: Any = lambda: None) -> None:
    """Marker first (nothing starts Patroni while it exists), then Patroni's stop, started
    at once and left running beside PgBouncer's DISABLE and KILL, the Redis fence and
    Sentinel's SENTINEL REMOVE: the writes stop within baton_fence_time, not the sum of the
    steps, and nothing in the region can turn another region's Redis into a replica."""
    record = {"since": utc_iso(time.time()), "reason": reason, "epoch": epoch,
              "region": cfg["region"], "node": cfg["node"]}
    try:
        os.makedirs(os.path.dirname(cfg["marker"]), exist_ok=True)
        write_atomic(cfg["marker"], json.dumps(record, sort_keys=True) + "\n")
    except OSError as exc:
        log(f"cannot write the fence marker {cfg['marker']}: {exc} (fencing anyway)")
    log(f"FENCED: {reason}")
    try:
        stop: Any = subprocess.Popen(["systemctl", "stop", "patroni"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
    except OSError as exc:
        stop, result = None, f"failed: {exc}"
    db = cfg["pgbouncer_database"]
    for command in (f"DISABLE {db}", f"KILL {db}"):
        log(f"PgBouncer {command}: {pgbouncer(command)}")
    log(f"Redis: {fence_redis(cfg, persist=False)}")
    # Before the wait on Patroni, which may take minutes (a large shutdown checkpoint, or a
    # PostgreSQL waiting on what a cut-off region cannot reach): were the partition to
    # heal meanwhile, this Sentinel, still watching the old master, would make the new
    # holder's Redis, which it knew as a replica, a replica again, and its writes would go.
    log(f"Sentinel: {fence_sentinel(cfg)}")
    alive()
    if stop is not None:
        # Patroni may take a while to stop its PostgreSQL: the watchdog hears from the agent
        # every second meanwhile (were the agent killed, systemd would stop Patroni anyway).
        deadline = time.monotonic() + 120
        while True:
            try:
                _out, err = stop.communicate(timeout=1)
                result = "ok" if stop.returncode == 0 else (err.strip() or
                                                            f"exit {stop.returncode}")
                break
            except subprocess.TimeoutExpired:
                alive()
                if time.monotonic() < deadline:
                    continue
                stop.kill()
                result = "failed: still stopping after 120 s"
                break
    log(f"systemctl stop patroni: {result}")
    alive()
    # After Patroni: these keep the fence across restarts, nothing here stops writes sooner.
    log(f"Redis fence kept in redis.conf: {persist_redis_fence(cfg)}")


def status(cfg: dict[str, Any]) -> dict[str, Any]:
    marker = None
    if os.path.exists(cfg["marker"]):
        with open(cfg["marker"], encoding="utf-8") as handle:
            text = handle.read()
        marker = decode_record(text) or {"raw": text.strip()}
    try:
        with open(cfg["state"], encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        saved = {}
    share = max(0.5, cfg["interval"])
    witness = Witness(list(cfg["endpoints"]), timeout=share, client=cfg.get("client"))
    report: dict[str, Any] = {"region": cfg["region"], "node": cfg["node"],
                              "fenced": marker is not None, "marker": marker,
                              "lease": saved.get("lease"),
                              "holder_epoch": saved.get("holder_epoch"),
                              "last_renewal": utc_iso(saved["last_renewal_wall"])
                              if saved.get("last_renewal_wall") else None}
    try:
        entry = witness.get(HOLDER)
        report["holder"] = parse_holder(entry.value if entry else None)
        if saved.get("lease"):
            report["lease_ttl"] = witness.time_to_live(int(saved["lease"]))
    except (WitnessError, ValueError) as exc:
        report["holder"] = None
        report["witness_error"] = str(exc)
    return report


def may_start(cfg: dict[str, Any]) -> tuple[bool, str]:
    """Whether Patroni may start on this node (its unit asks before every start, at boot
    too): when the witness says this region holds the baton (or nobody does yet), or when
    this region's cluster is a standby cluster in its own DCS, which cannot take writes.
    Anything else - another region holds the baton, or the witness does not answer, and this
    region's cluster is a primary cluster - would let a stale primary promote itself."""
    try:
        entry = Witness(list(cfg["endpoints"]), timeout=2,
                        client=cfg.get("client")).get(HOLDER)
        holder = parse_holder(entry.value if entry else None)
        seen = saved_seen_epoch(cfg)
        if holder is None and seen is not None:
            why = vanished(seen)
        elif holder is None or holder["region"] == cfg["region"]:
            named = holder["region"] if holder else "nobody"
            return True, f"the witness says {named} holds the baton"
        else:
            why = f"{holder['region']} holds the baton (epoch {holder['epoch']})"
    except (WitnessError, ValueError) as exc:
        why = f"the witness does not answer ({exc})"
    try:
        entry = Witness(list(cfg["dcs_endpoints"]), timeout=2,
                        client=cfg.get("dcs_client")).get(cfg["patroni_config_key"])
        standby = (decode_record(entry.value if entry else None) or {}).get("standby_cluster")
    except (WitnessError, ValueError) as exc:
        return False, f"{why}, and this region's DCS does not answer ({exc})"
    if standby:
        return True, f"{why}, and this region is a standby cluster of {standby.get('host')}"
    return False, (f"{why}, and this region's cluster is a primary cluster: it would take "
                   "writes; run failback.yml to make it a standby of the holder")


def agent_stopped(cfg: dict[str, Any], log: Any, command: Any = redis_command) -> dict[str, Any]:
    """The agent's service stopped (ExecStopPost: killed, crashed, hung and killed by the
    watchdog, or stopped). Nothing fences this node while the agent is away, so a writable
    Redis master stops taking writes (in memory; the agent lifts it when it is back and its
    region holds the baton), and the metrics say the agent is down. systemd stops Patroni and
    Sentinel itself (they are bound to the agent); the agent starts them when it is back."""
    done: dict[str, Any] = {"result": os.environ.get("SERVICE_RESULT", "")}
    noted = read_bound_units()
    done["bound"] = ("not noted yet" if noted is None else
                     f"{', '.join(noted)} stop with it, started again when it is back" if noted
                     else "none ran")
    if int(cfg.get("redis_port") or 0):
        ok, role = command(cfg, "ROLE")
        if ok and role.split()[:1] == ["master"]:
            done["redis"] = fence_redis(cfg, command, persist=False)
        else:
            done["redis"] = "not a master: nothing to fence" if ok else role
    metrics = str(cfg.get("metrics") or "")
    if metrics and os.path.isdir(os.path.dirname(metrics)):
        try:
            write_atomic(metrics, render_metrics(cfg, {"baton_agent_up": 0}))
        except OSError as exc:
            done["metrics"] = f"not written: {exc}"
    log(f"agent stopped ({done['result'] or 'no result'}): "
        + "; ".join(f"{k}: {v}" for k, v in done.items() if k != "result"))
    return done


def unfence(cfg: dict[str, Any], log: Any) -> dict[str, Any]:
    """Removes the marker and lets clients back in through PgBouncer; never starts Patroni."""
    removed = False
    if os.path.exists(cfg["marker"]):
        os.unlink(cfg["marker"])
        removed = True
        log("UNFENCED: marker removed (Patroni is not started here: the caller starts it)")
    db = cfg["pgbouncer_database"]
    pgbouncer = {command: pgbouncer_command(cfg, command)
                 for command in (f"ENABLE {db}", f"RESUME {db}")}
    return {"marker_removed": removed, "fenced": os.path.exists(cfg["marker"]),
            "pgbouncer": pgbouncer}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=["run", "status", "unfence", "unfence-redis",
                                            "may-start", "redis-gate", "sentinel-gate",
                                            "agent-stopped", "check"])
    parser.add_argument("--config", default="/etc/baton/agent.json")
    args = parser.parse_args(argv)
    cfg = load_config(args.config)
    if args.command == "check":  # the code imports, the configuration and its TLS files load
        Client.from_mapping(cfg.get("client")).ssl_context()
        Client.from_mapping(cfg.get("dcs_client")).ssl_context()
        return 0
    if args.command == "run":
        Agent(cfg).run()
        return 0
    if args.command == "status":
        print(json.dumps(status(cfg), indent=2, sort_keys=True))
        return 0
    if args.command == "may-start":
        allowed, why = may_start(cfg)
        print(f"baton-agent {cfg['node']}: Patroni {'may' if allowed else 'may NOT'} start: {why}",
              file=sys.stderr)
        return 0 if allowed else 1
    if args.command in ("redis-gate", "sentinel-gate"):
        return gate(cfg, args.command.split("-")[0],
                    lambda message: print(f"baton-agent {cfg['node']}: {message}",
                                          file=sys.stderr))
    if args.command == "agent-stopped":
        agent_stopped(cfg, lambda message: print(f"baton-agent {cfg['node']}: {message}",
                                                 file=sys.stderr))
        return 0
    if args.command == "unfence-redis":
        lifted = unfence_redis(cfg)
        print(json.dumps(lifted, sort_keys=True))
        if lifted.get("error"):
            print(f"baton-agent {cfg['node']}: {lifted['error']}", file=sys.stderr)
            return 1
        return 0
    result = unfence(cfg, lambda message: print(f"baton-agent {cfg['node']}: {message}",
                                                file=sys.stderr))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0 if not result["fenced"] else 1


if __name__ == "__main__":
    sys.exit(main())

"""The lifecycle harness: live clients and per-region write probes that run beside a playbook,
and a verifier that says what they saw.

- `Workload` starts, in threads:
  - a PostgreSQL client that writes numbered rows through `db.<zone>`:6432 (database `app`),
    resolving the name at the lab's name servers on every (re)connect, psycopg 3 with its
    default settings (it prepares statements at protocol level after 5 executions);
  - a second one, asyncpg with its default settings (every query with parameters is a named
    prepared statement from its statement cache), writing numbered rows into its own table;
  - a Redis client that writes numbered fields through `redis.<zone>`:6379, resolved the same way;
  - for every database node, a probe that tries a write on that node's own PostgreSQL (port
    5432, direct) and its own Redis every `probe_interval` seconds over a connection it keeps,
    as an application inside that region would: these samples say which regions accepted writes,
    at every moment, whatever the playbooks believe.
  Every acknowledged write and every error is logged with its wall-clock time.
- `Workload.stop()` returns a `Measurement`; `Measurement.verify(holder_node)` reads back, at
  the node that holds the baton, which acknowledged writes survived, and `summary()` gives the
  figures: acknowledged writes lost (per tier), client errors, the longest gap between two
  acknowledged writes, and every interval in which two regions accepted writes (per tier).

The harness only observes: it never repairs the lab and it never decides a test's outcome.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import dns.exception
import dns.resolver
import psycopg
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

# Lab throwaway credentials (inventories/lab/group_vars/all/secrets.yml).
APP_USER, APP_PASSWORD = "app", "lab-app-not-secret"
# The application's Redis ACL user (role redis: no administrative command); lab throwaway.
REDIS_APP_USER, REDIS_APP_PASSWORD = "app", "lab-app-not-secret"
# The lab's Baton CA (.lab/pki, made by site.yml) and the etcd users' passwords, derived from
# the lab's throwaway etcd_auth_secret.
PKI_DIR = Path(__file__).resolve().parents[2] / ".lab/pki"
# Redis and Sentinel speak TLS only: redis-py's options for them (the lab's CA, the address
# checked against the server's certificate).
REDIS_TLS = {"ssl": True, "ssl_ca_certs": str(PKI_DIR / "ca.crt"), "ssl_check_hostname": True}
CA_PASSPHRASE, ETCD_AUTH_SECRET = "lab-ca-not-secret", "lab-etcd-not-secret"
TABLE = "baton_lifecycle"
TABLE_ASYNCPG = "baton_lifecycle_asyncpg"
PROBE_TABLE = "baton_lifecycle_probe"


@dataclass
class Event:
    at: float          # wall clock (time.time()), comparable with the reports' timestamps
    ok: bool
    seq: int | None = None
    target: str | None = None   # the address that took (or refused) it
    error: str | None = None
    sent: float | None = None   # probes: when the write was sent (it took effect in sent..at)


@dataclass
class Stream:
    """One writer's log."""

    name: str
    events: list[Event] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, event: Event) -> None:
        with self.lock:
            self.events.append(event)

    def snapshot(self) -> Stream:
        """A copy of the log as it is now (a writer stuck in a call may append later)."""
        with self.lock:
            return Stream(self.name, list(self.events))

    def acked(self) -> list[Event]:
        return [e for e in self.events if e.ok]

    def errors(self) -> list[Event]:
        return [e for e in self.events if not e.ok]

    def longest_gap(self, start: float, end: float) -> float:
        marks = [start, *(e.at for e in self.acked()), end]
        return max((b - a for a, b in itertools.pairwise(marks)), default=0.0)


def etcd_client(user: str = "baton-controller", cluster: str = "baton-witness",
                password: str | None = None) -> dict[str, str]:
    """How the tests reach one of the lab's etcd clusters: TLS with the controller's
    certificate, logged in as `user` of `cluster` (its derived password unless given)."""
    from baton_pki import baton_etcd_password

    return {"ca_file": str(PKI_DIR / "ca.crt"), "cert_file": str(PKI_DIR / "controller.crt"),
            "key_file": str(PKI_DIR / "controller.key"), "key_password": CA_PASSPHRASE,
            "username": user,
            "password": baton_etcd_password(ETCD_AUTH_SECRET, cluster, user)
            if password is None else password}


def patroni_url(address: str, path: str, port: int = 8008) -> str:
    """Patroni's REST API (HTTPS only, the node's certificate of the Baton CA)."""
    return f"https://{address}:{port}{path}"


def open_tls(target: Any, timeout: float) -> Any:
    """urlopen that trusts the lab's Baton CA (for https:// targets) and no proxy."""
    import ssl
    import urllib.request

    context = ssl.create_default_context(cafile=str(PKI_DIR / "ca.crt"))
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    return opener.open(target, timeout=timeout)


def resolve(name: str, servers: list[str]) -> str:
    """The first A record of name, asking the servers in order (as a stub resolver with several
    `nameserver` lines does); raises dns.exception.DNSException when none answers."""
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = servers
    resolver.timeout = 1.0
    resolver.lifetime = 2.0 * len(servers)
    resolver.cache = None
    return resolver.resolve(name, "A")[0].to_text()


def redis_at(address: str, timeout: float, reply_timeout: float | None = None) -> redis.Redis:
    """A Redis client that tries once: redis-py's default retries (with back-off) would hide
    an outage in one late error and keep a client on a dead address for tens of seconds.
    reply_timeout (default: timeout) bounds the wait for a reply once connected."""
    return redis.Redis(host=address, port=6379, username=REDIS_APP_USER,
                       password=REDIS_APP_PASSWORD, socket_timeout=reply_timeout or timeout,
                       socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 0), **REDIS_TLS)


# The application client waits this long for a reply: longer than a planned move holds its
# writes (the handover's CLIENT PAUSE WRITE, until redis.<zone> names the target: 2-3.5 s
# measured on a busy 2-core machine), as an application's client must to pause rather than
# fail (redis-py's own default is no limit at all).
REDIS_REPLY_TIMEOUT = 6


def short(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return f"{type(exc).__name__}: {text[:160]}"


class Workload:
    """Clients and probes over the lab while a lifecycle step runs: `with Workload(...) as w:`."""

    def __init__(self, *, zone: str, name_servers: list[str], nodes: dict[str, tuple[str, str]],
                 scenario: str, interval: float = 0.05, probe_interval: float = 0.2):
        """nodes: node name -> (region, address) of every database node."""
        self.zone, self.name_servers, self.nodes = zone, name_servers, nodes
        self.scenario, self.interval, self.probe_interval = scenario, interval, probe_interval
        self.pg = Stream("postgres client via db")
        self.pg_asyncpg = Stream("postgres client via db (asyncpg)")
        self.redis = Stream("redis client via redis")
        self.probes: dict[tuple[str, str], Stream] = {}
        for node in nodes:
            for tier in ("postgres", "redis"):
                self.probes[(tier, node)] = Stream(f"{tier} probe on {node}")
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self.stuck: list[str] = []  # writers still inside a call 15 s after the stop
        self._seq = {"pg": 0, "asyncpg": 0, "redis": 0}
        self.started = self.ended = 0.0
        self._prepare()

    # --------------------------------------------------------------------- set-up
    def _prepare(self) -> None:
        """The clients' tables; numbering continues from what an earlier step wrote."""
        address = resolve(f"db.{self.zone}", self.name_servers)
        with psycopg.connect(host=address, port=6432, dbname="app", user=APP_USER,
                             password=APP_PASSWORD, connect_timeout=3, autocommit=True) as conn:
            for table in (TABLE, TABLE_ASYNCPG):
                conn.execute(f"CREATE TABLE IF NOT EXISTS {table} (scenario text, seq bigint, "
                             "at timestamptz DEFAULT clock_timestamp(), "
                             "PRIMARY KEY (scenario, seq))")
            conn.execute(f"CREATE TABLE IF NOT EXISTS {PROBE_TABLE} (node text, "
                         "at timestamptz DEFAULT clock_timestamp())")
            for key, table in (("pg", TABLE), ("asyncpg", TABLE_ASYNCPG)):
                self._seq[key] = conn.execute(
                    f"SELECT coalesce(max(seq), 0) FROM {table} WHERE scenario = %s",
                    (self.scenario,)).fetchone()[0]
        # Redis numbering goes on from the PostgreSQL one's order of magnitude: unique per run.
        self._seq["redis"] = int(time.time() * 1000) * 1000

    # --------------------------------------------------------------------- writers
    def _pg_client(self) -> None:
        conn, target = None, None
        while not self._stop.is_set():
            self._seq["pg"] += 1
            seq = self._seq["pg"]  # an id that got no acknowledgement is never reused
            try:
                if conn is None:
                    target = resolve(f"db.{self.zone}", self.name_servers)
                    # psycopg 3's defaults (prepare_threshold 5), as an application has them.
                    conn = psycopg.connect(host=target, port=6432, dbname="app", user=APP_USER,
                                           password=APP_PASSWORD, connect_timeout=3,
                                           autocommit=True, tcp_user_timeout=5000)
                conn.execute(f"INSERT INTO {TABLE} (scenario, seq) VALUES (%s, %s)",
                             (self.scenario, seq))
                self.pg.add(Event(time.time(), True, seq, target))
            except (psycopg.Error, dns.exception.DNSException, OSError) as exc:
                self.pg.add(Event(time.time(), False, seq, target, short(exc)))
                if conn is not None:
                    conn.close()
                conn = None
                self._stop.wait(0.2)
            self._stop.wait(self.interval)
        if conn is not None:
            conn.close()

    def _pg_asyncpg_client(self) -> None:
        asyncio.run(self._pg_asyncpg_writes())

    async def _pg_asyncpg_writes(self) -> None:
        conn, target = None, None
        sql = f"INSERT INTO {TABLE_ASYNCPG} (scenario, seq) VALUES ($1, $2)"
        while not self._stop.is_set():
            self._seq["asyncpg"] += 1
            seq = self._seq["asyncpg"]
            try:
                if conn is None:
                    target = resolve(f"db.{self.zone}", self.name_servers)
                    # asyncpg's defaults (statement_cache_size 100: it prepares every query),
                    # but a bound on each call: a connection to a lost region never answers.
                    conn = await asyncpg.connect(host=target, port=6432, database="app",
                                                 user=APP_USER, password=APP_PASSWORD,
                                                 timeout=3, command_timeout=60)
                await conn.execute(sql, self.scenario, seq)
                self.pg_asyncpg.add(Event(time.time(), True, seq, target))
            except Exception as exc:  # every failure is a client error, logged
                self.pg_asyncpg.add(Event(time.time(), False, seq, target, short(exc)))
                if conn is not None:
                    conn.terminate()
                conn = None
                await asyncio.sleep(0.2)
            await asyncio.sleep(self.interval)
        if conn is not None:
            conn.terminate()

    def _redis_client(self) -> None:
        client, target = None, None
        key = f"baton:lifecycle:{self.scenario}"
        while not self._stop.is_set():
            self._seq["redis"] += 1
            seq = self._seq["redis"]
            try:
                if client is None:
                    target = resolve(f"redis.{self.zone}", self.name_servers)
                    client = redis_at(target, 3, REDIS_REPLY_TIMEOUT)
                client.hset(key, str(seq), f"{time.time():.3f}")
                self.redis.add(Event(time.time(), True, seq, target))
            except (redis.RedisError, dns.exception.DNSException, OSError) as exc:
                self.redis.add(Event(time.time(), False, seq, target, short(exc)))
                if client is not None:
                    client.close()
                client = None
                self._stop.wait(0.2)
            self._stop.wait(self.interval)
        if client is not None:
            client.close()

    def _pg_probe(self, node: str, address: str) -> None:
        stream, conn = self.probes[("postgres", node)], None
        while not self._stop.is_set():
            sent = time.time()
            try:
                if conn is None:
                    conn = psycopg.connect(host=address, port=5432, dbname="app", user=APP_USER,
                                           password=APP_PASSWORD, connect_timeout=1,
                                           autocommit=True, prepare_threshold=None,
                                           tcp_user_timeout=2000)
                conn.execute(f"INSERT INTO {PROBE_TABLE} (node) VALUES (%s)", (node,))
                stream.add(Event(time.time(), True, target=address, sent=sent))
            except (psycopg.Error, OSError) as exc:
                stream.add(Event(time.time(), False, target=address, error=short(exc), sent=sent))
                if conn is not None and (conn.closed or conn.broken):
                    conn = None
            self._stop.wait(self.probe_interval)
        if conn is not None:
            conn.close()

    def _redis_probe(self, node: str, address: str) -> None:
        stream = self.probes[("redis", node)]
        client = redis_at(address, 1)
        while not self._stop.is_set():
            sent = time.time()
            try:
                client.set(f"baton:probe:{node}", f"{time.time():.3f}")
                stream.add(Event(time.time(), True, target=address, sent=sent))
            except (redis.RedisError, OSError) as exc:
                stream.add(Event(time.time(), False, target=address, error=short(exc), sent=sent))
            self._stop.wait(self.probe_interval)
        client.close()

    # --------------------------------------------------------------------- control
    def __enter__(self) -> Workload:
        self.started = time.time()
        targets = [(self._pg_client, ()), (self._pg_asyncpg_client, ()),
                   (self._redis_client, ())]
        for node, (_region, address) in self.nodes.items():
            targets += [(self._pg_probe, (node, address)), (self._redis_probe, (node, address))]
        for fn, args in targets:
            thread = threading.Thread(target=fn, args=args, daemon=True,
                                      name=f"{fn.__name__}{args[:1]}")
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: Any) -> None:
        self.stop()

    def stop(self) -> Measurement:
        if not self._stop.is_set():
            self.ended = time.time()
            self._stop.set()
            for thread in self._threads:
                thread.join(15)
            self.stuck = [t.name for t in self._threads if t.is_alive()]
        return Measurement(self)

    def wait_acked(self, count: int = 5, timeout: float = 30,
                   tiers: tuple[str, ...] = ("postgres", "redis")) -> None:
        """Until the clients of `tiers` have `count` acknowledged writes more than now."""
        streams = [s for tier, tier_streams in (("postgres", (self.pg, self.pg_asyncpg)),
                                                ("redis", (self.redis,)))
                   if tier in tiers for s in tier_streams]
        before = {s.name: len(s.acked()) for s in streams}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(len(s.acked()) >= before[s.name] + count for s in streams):
                return
            time.sleep(0.1)
        raise AssertionError(
            f"the workload got no {count} acknowledged writes in {timeout} s: " + ", ".join(
                f"{s.name} {len(s.acked()) - before[s.name]} (last error "
                f"{self._last_error(s)})" for s in streams))

    @staticmethod
    def _last_error(stream: Stream) -> str | None:
        errors = stream.errors()
        return errors[-1].error if errors else None


def possible_intervals(stream: Stream, start: float, end: float) -> list[tuple[float, float]]:
    """Each run of acknowledged probe writes, from the refused sample before it (or the start)
    to the send time of the refused sample after it (or the end)."""
    spans: list[tuple[float, float]] = []
    before, opened = start, None
    for event in stream.events:
        if event.ok and opened is None:
            opened = before
        elif not event.ok:
            if opened is not None:
                spans.append((opened, event.sent or event.at))
                opened = None
            before = event.at
    if opened is not None:
        spans.append((opened, end))
    return spans


def writable_intervals(stream: Stream) -> list[tuple[float, float]]:
    """Spans of consecutive acknowledged probe writes: [first ok, last ok] of each run; one
    refused sample ends a run. Two regions' spans that overlap are a two-writer interval."""
    spans: list[tuple[float, float]] = []
    start = last = None
    for event in stream.events:
        if event.ok:
            start = event.at if start is None else start
            last = event.at
        elif start is not None:
            spans.append((start, last))
            start = last = None
    if start is not None:
        spans.append((start, last))
    return spans


class Measurement:
    """What the workload saw, and (after verify) what survived at the holder."""

    def __init__(self, workload: Workload):
        self.w = workload
        # Frozen at the stop: what a writer stuck past it logs later is not counted.
        self.pg, self.redis = workload.pg.snapshot(), workload.redis.snapshot()
        self.pg_asyncpg = workload.pg_asyncpg.snapshot()
        self.probes = {key: stream.snapshot() for key, stream in workload.probes.items()}
        self.stuck = list(workload.stuck)
        self.lost_pg: list[int] | None = None
        self.lost_pg_asyncpg: list[int] | None = None
        self.lost_redis: list[int] | None = None

    # --------------------------------------------------------------------- read back
    def verify(self, holder_address: str) -> Measurement:
        """Which acknowledged writes the holder has (it must accept connections)."""
        with psycopg.connect(host=holder_address, port=5432, dbname="app", user=APP_USER,
                             password=APP_PASSWORD, connect_timeout=3, autocommit=True) as conn:
            stored = {r[0] for r in conn.execute(
                f"SELECT seq FROM {TABLE} WHERE scenario = %s", (self.w.scenario,))}
            stored_asyncpg = {r[0] for r in conn.execute(
                f"SELECT seq FROM {TABLE_ASYNCPG} WHERE scenario = %s", (self.w.scenario,))}
        self.lost_pg = [e.seq for e in self.pg.acked() if e.seq not in stored]
        self.lost_pg_asyncpg = [e.seq for e in self.pg_asyncpg.acked()
                                if e.seq not in stored_asyncpg]
        client = redis_at(holder_address, 3)
        try:
            fields = {f.decode() for f in client.hkeys(f"baton:lifecycle:{self.w.scenario}")}
        finally:
            client.close()
        self.lost_redis = [e.seq for e in self.redis.acked() if str(e.seq) not in fields]
        return self

    # --------------------------------------------------------------------- figures
    def two_writer_intervals(self, tier: str, possible: bool = False) -> list[dict[str, Any]]:
        """Every interval in which nodes of two different regions accepted writes in `tier`:
        between acknowledgements (certain), or, with possible=True, each run of acknowledged
        samples widened to the neighbouring refused samples (a write may have been taken
        anywhere in that time: an upper bound, for the report)."""
        spans = []
        for (t, node), stream in self.probes.items():
            if t == tier:
                region = self.w.nodes[node][0]
                runs = (possible_intervals(stream, self.w.started, self.w.ended) if possible
                        else writable_intervals(stream))
                spans += [(region, node, a, b) for a, b in runs]
        found = []
        for i, (ra, na, a0, a1) in enumerate(spans):
            for rb, nb, b0, b1 in spans[i + 1:]:
                if ra != rb and max(a0, b0) <= min(a1, b1):
                    found.append({"tier": tier, "nodes": [na, nb], "from": max(a0, b0),
                                  "to": min(a1, b1),
                                  "seconds": round(min(a1, b1) - max(a0, b0), 3)})
        return found

    def writable_regions_at_end(self, tier: str, window: float = 1.5) -> list[str]:
        """Regions whose probes acknowledged a write in the last `window` seconds."""
        regions = set()
        for (t, node), stream in self.probes.items():
            if t == tier and any(e.ok and e.at >= self.w.ended - window for e in stream.events):
                regions.add(self.w.nodes[node][0])
        return sorted(regions)

    def last_write_by_region(self, tier: str) -> dict[str, float | None]:
        last: dict[str, float | None] = {}
        for (t, node), stream in self.probes.items():
            if t == tier:
                region = self.w.nodes[node][0]
                oks = [e.at for e in stream.events if e.ok]
                if oks:
                    last[region] = max([*oks, last.get(region) or 0.0])
                else:
                    last.setdefault(region, None)
        return last

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"seconds": round(self.w.ended - self.w.started, 1),
                               "stuck_writers": self.stuck}
        for tier, stream, lost in (("postgres", self.pg, self.lost_pg),
                                   ("redis", self.redis, self.lost_redis)):
            out[tier] = {
                **self._client_figures(stream, lost),
                "two_writer_intervals": self.two_writer_intervals(tier),
                "possible_two_writer_seconds": round(sum(
                    i["seconds"] for i in self.two_writer_intervals(tier, possible=True)), 2),
            }
        out["postgres_asyncpg"] = self._client_figures(self.pg_asyncpg, self.lost_pg_asyncpg)
        return out

    def _client_figures(self, stream: Stream, lost: list[int] | None) -> dict[str, Any]:
        errors = stream.errors()
        kinds: dict[str, int] = {}
        for e in errors:
            kind = (e.error or "").split(":", 1)[0]
            kinds[kind] = kinds.get(kind, 0) + 1
        return {"acked": len(stream.acked()), "errors": len(errors), "error_kinds": kinds,
                "first_errors": [e.error for e in errors[:3]],
                "longest_gap": round(stream.longest_gap(self.w.started, self.w.ended), 2),
                "lost": None if lost is None else len(lost)}

    def line(self, step: str) -> str:
        """One line per step for the test log (and the issue note)."""
        s = self.summary()
        parts = [f"{step}:"]
        for tier in ("postgres", "redis"):
            t = s[tier]
            parts.append(f"{tier} acked {t['acked']} lost {t['lost']} errors {t['errors']} "
                         f"gap {t['longest_gap']} s two-writer {len(t['two_writer_intervals'])}")
            if tier == "postgres":
                a = s["postgres_asyncpg"]
                parts.append(f"asyncpg acked {a['acked']} lost {a['lost']} errors {a['errors']} "
                             f"gap {a['longest_gap']} s")
        return " | ".join(parts)

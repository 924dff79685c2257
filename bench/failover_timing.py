#!/usr/bin/env python3
"""Cross-region moves of the baton, measured on the lab that is up (deployed with site.yml,
us-east holding the baton); `make bench` brings up the bench lab (three nodes in us-east and
us-west) for it:

    make lab-up LAB=bench IMAGE=packages && make site  # once
    .venv/bin/python bench/failover_timing.py [--runs 3] [--only switchover|region-loss]
        [--profiles DIR]

Clients write the way applications do: through db.<zone>, resolved on the lab's name servers
at every (re)connection, one INSERT every 20 ms. Per run, in this order:
- switchover.yml us-east -> us-west under that writer: the longest gap between two
  acknowledged writes, client errors, acknowledged writes the new primary does not hold (must
  be 0), the write pause the report states, the run's wall time; its profile (the first run's,
  BATON_PROFILE) is printed once;
- the same switchover again, which must change nothing: its wall time;
- switchover.yml back to us-east (same measures);
- unplanned: health.yml (a recent position), then every us-east container stopped and
  failover.yml -e target=us-west started at once: the first write accepted through db.<zone>
  after the stop began, the writer's longest gap, the report's RTO and write pause (a range),
  the wall time; the re-run (changes
  nothing); then us-east started again, failback.yml, switchover.yml home;
- where us-east has two nodes or more, Patroni's in-region `patronictl switchover` under the
  same writer, for comparison.
Prints each run, the medians, and the ratio the hot path is held to (switchover gap / Patroni's
in-region switchover gap).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import dns.resolver
import psycopg

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"),
           ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}:{os.environ['PATH']}")
APP = {"user": "app", "password": "lab-app-not-secret", "connect_timeout": 2}  # lab throwaway
ZONE = "baton.internal"


def run(*cmd: str, timeout: float = 900, env: dict | None = None) -> tuple[int, str, float]:
    started = time.monotonic()
    with open(os.devnull) as devnull:
        proc = subprocess.run(list(cmd), cwd=ROOT, env=env or ENV, stdin=devnull, text=True,
                              capture_output=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


REFUSED: list[str] = []
PROFILES: dict[str, str] = {}  # --profiles DIR: "dir", and the latest profile of each run's name
PROFILED = itertools.count(1)


def playbook(*args: str, profile: str | None = None, retry: bool = True) -> tuple[str, float]:
    """Runs a playbook; exits on failure. A move its gate refused (nothing changed: on this
    2-core bench lab, right after a move, an assessment probe can time out) is run again once
    health.yml passes, unless retry is off (a timed region loss), and counted."""
    if profile is None and PROFILES.get("dir"):
        name = "-".join(a.split("=")[-1].removesuffix(".yml") for a in args if a != "-e")
        profile = os.path.join(PROFILES["dir"], f"{next(PROFILED):02d}-{name}.json")
        PROFILES[name] = profile  # the latest run of that name
    env = dict(ENV, BATON_PROFILE=profile) if profile else ENV
    code, out, took = run(str(BIN / "ansible-playbook"), *args, env=env)
    if code != 0 and retry and "TASK [Refuse what is unsafe]" in out and "failed=1" in out:
        reason = re.findall(r"^\[ERROR\]: Task failed: Action failed: (.*)$", out, re.M)
        REFUSED.append(f"{' '.join(args)}: {reason[-1][:300] if reason else '?'}")
        print(f"bench: refused, run again once health.yml passes: {REFUSED[-1]}", flush=True)
        settle()
        code, out, took = run(str(BIN / "ansible-playbook"), *args, env=env)
    if code != 0:
        sys.exit(f"bench: ansible-playbook {' '.join(args)} failed:\n{out[-3000:]}")
    return out, took


def changed_nothing(out: str) -> bool:
    """Whether every host of the run's recap says changed=0."""
    counts = re.findall(r"^\S+\s+: ok=\d+\s+changed=(\d+)", out, re.M)
    return bool(counts) and all(c == "0" for c in counts)


def resolve(name: str, servers: list[str]) -> str:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers, resolver.timeout, resolver.lifetime = servers, 1.0, 2.0 * len(servers)
    resolver.cache = None
    return resolver.resolve(name, "A")[0].to_text()


class Writer:
    """Writes numbered rows through db.<zone> (or one fixed address); remembers the
    acknowledged ids with their times, the errors, the longest gap."""

    def __init__(self, name_servers: list[str], address: str | None = None):
        self.name_servers, self.address = name_servers, address
        self.acked: list[tuple[float, int]] = []
        self.errors = 0
        self.stop = threading.Event()
        with psycopg.connect(host=self.target(), port=6432, dbname="app", autocommit=True,
                             **APP) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS baton_bench_writer (id bigint PRIMARY KEY)")
            self.next = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM baton_bench_writer"
                                     ).fetchone()[0]
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def target(self) -> str:
        return self.address or resolve(f"db.{ZONE}", self.name_servers)

    def loop(self) -> None:
        conn = None
        while not self.stop.is_set():
            try:
                conn = conn or psycopg.connect(host=self.target(), port=6432, dbname="app",
                                               autocommit=True, tcp_user_timeout=3000, **APP)
                conn.execute("INSERT INTO baton_bench_writer VALUES (%s)", (self.next,))
                self.acked.append((time.time(), self.next))
            except (psycopg.Error, dns.exception.DNSException, OSError):
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            self.next += 1
            time.sleep(0.02)

    @property
    def gap(self) -> float:
        times = [t for t, _ in self.acked]
        return max((b - a for a, b in itertools.pairwise(times)), default=0.0)

    def first_after(self, moment: float) -> float | None:
        return next((t - moment for t, _ in self.acked if t > moment), None)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def lost(self) -> int:
        with psycopg.connect(host=self.target(), port=6432, dbname="app", autocommit=True,
                             **APP) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM baton_bench_writer")}
        return sum(1 for _t, i in self.acked if i not in stored)


def inventory() -> dict[str, list[str]]:
    """Site -> its hosts' addresses, as the lab tool reports them."""
    code, out, _ = run(sys.executable, str(ROOT / "lab/labctl.py"), "status", "--json")
    if code != 0:
        sys.exit(f"bench: the lab does not answer: {out[-500:]}")
    sites: dict[str, list[str]] = {}
    for host in json.loads(out)["hosts"]:
        sites.setdefault(host["site"], []).append(host["address"])
    return sites


def report(kind: str) -> dict:
    return json.loads((ROOT / f"reports/{kind}-latest.json").read_text())


def switchover(target: str, servers: list[str], profile: str | None) -> dict[str, float]:
    with Writer(servers) as writer:
        time.sleep(1)
        _out, took = playbook("switchover.yml", "-e", f"target={target}", profile=profile)
        time.sleep(1)
    pause = (report("switchover").get("write_pause") or {}).get("seconds")
    return {"gap": writer.gap, "errors": writer.errors, "lost": writer.lost(), "wall": took,
            "pause": pause}


def patroni_switchover(region_nodes: list[str], servers: list[str]) -> dict[str, float] | None:
    if len(region_nodes) < 2:
        return None
    with Writer(servers) as writer:
        time.sleep(1)
        code, out, took = run("podman", "exec", "baton-us-east-1", "patronictl", "-c",
                              "/etc/patroni/patroni.yml", "switchover", "--force")
        time.sleep(8)
    if code != 0:
        sys.exit(f"bench: patronictl switchover failed: {out[-1000:]}")
    return {"gap": writer.gap, "errors": writer.errors, "wall": took}


def print_profile(path: str, what: str = "the first switchover") -> None:
    data = json.loads(Path(path).read_text())
    print(f"\nprofile of {what} ({data['seconds']:.1f} s; tasks over 0.1 s):")
    for row in data["tasks"]:
        if row.get("seconds", 0) >= 0.1:
            print(f"  {row['at']:7.2f} {row['seconds']:6.2f}  {row['task']}")


def settle(limit: float = 300) -> None:
    """Waits until health.yml passes: right after a deploy, this 2-core machine is still busy
    (load 7 and more), and the probes of a move's assessment time out."""
    until = time.monotonic() + limit
    while True:
        code, out, _took = run(str(BIN / "ansible-playbook"), "health.yml")
        if code == 0:
            return
        if time.monotonic() > until:
            sys.exit(f"bench: the lab is not healthy after {limit:g} s:\n{out[-3000:]}")
        time.sleep(10)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--only", choices=["switchover", "region-loss"],
                        help="measure one kind of move (with its re-run) instead of all")
    parser.add_argument("--profiles", metavar="DIR",
                        help="keep every playbook run's profile (JSON) in DIR, and print the "
                             "last region loss's failover and failback profiles")
    args = parser.parse_args()
    if args.profiles:
        os.makedirs(args.profiles, exist_ok=True)
        PROFILES["dir"] = args.profiles
    planned, unplanned = args.only != "region-loss", args.only != "switchover"
    sites = inventory()
    servers = [sites["global"][0]] + [sites[r][0] for r in ("us-east", "us-west", "eu-west")]
    rows: dict[str, list[float]] = {}
    profile = os.path.join(tempfile.mkdtemp(prefix="baton-bench-"), "switchover.json")

    def keep(name: str, value: float | None) -> None:
        if value is not None:
            rows.setdefault(name, []).append(round(float(value), 3))

    settle()
    playbook("switchover.yml", "-e", "target=us-east")  # the starting point: us-east holds it
    for n in range(1, args.runs + 1):
        if planned:
            there = switchover("us-west", servers, profile if n == 1 else None)
            out, rerun = playbook("switchover.yml", "-e", "target=us-west")
            keep("switchover re-run: changed nothing (1 = yes)", int(changed_nothing(out)))
            keep("switchover re-run: wall s", rerun)
            back = switchover("us-east", servers, None)
            for name, m in (("switchover", there), ("switchover back", back)):
                keep(f"{name}: longest client gap s", m["gap"])
                keep(f"{name}: write pause in the report s", m["pause"])
                keep(f"{name}: client errors", m["errors"])
                keep(f"{name}: acknowledged writes lost", m["lost"])
                keep(f"{name}: wall s", m["wall"])
        if unplanned:
            region_loss(servers, sites, keep)
        inregion = patroni_switchover(sites["us-east"], servers) if planned else None
        if inregion:
            keep("patronictl switchover (in-region): longest client gap s", inregion["gap"])
            keep("patronictl switchover (in-region): client errors", inregion["errors"])
        print(f"run {n}: " + ", ".join(f"{k} {v[-1]}" for k, v in rows.items()), flush=True)
        if n == 1 and planned:
            print_profile(profile)
    for name, what in (("region loss", "the last region loss's failover"),
                       ("failback", "the last failback")):
        if name in PROFILES and os.path.exists(PROFILES[name]):
            print_profile(PROFILES[name], what)
    print("\nmedians of", args.runs, "runs:")
    for name, values in rows.items():
        print(f"  {name:58s} {statistics.median(values):9.3f}   {values}")
    inregion_gaps = rows.get("patronictl switchover (in-region): longest client gap s")
    if inregion_gaps:
        ratio = statistics.median(rows["switchover: longest client gap s"]) / statistics.median(
            inregion_gaps)
        print(f"  switchover gap / Patroni's in-region switchover gap: {ratio:.2f} (held to 2.0)")
    elif planned:
        print("  patronictl switchover (in-region): n/a (one node in us-east); use the bench lab")
    print(f"  moves refused by a gate and run again: {len(REFUSED)}")
    for line in REFUSED:
        print(f"    {line}")
    return 0


def region_loss(servers: list[str], sites: dict[str, list[str]], keep) -> None:
    """us-east stopped under the writer, failover.yml to us-west at once, its re-run; then
    us-east back, failback.yml, switchover.yml home."""
    # A recent position for the report's data-loss estimate. Right after the switchover back
    # the machine is still busy (load 6-7: the demoted region restarting, the other one
    # repointed), and a single health.yml's probes have timed out: wait until one passes.
    settle()
    alive = [s for s in servers if s not in sites["us-east"]]
    with Writer(alive) as writer:
        time.sleep(1)
        stopping = time.time()  # the stop of us-east's containers begins
        run(sys.executable, str(ROOT / "lab/labctl.py"), "stop-region", "us-east")
        stopped = time.time()  # every container is down: the failover starts
        _out, took = playbook("failover.yml", "-e", "target=us-west", retry=False)
        time.sleep(1)
    if "failover-us-west" in PROFILES:  # before its re-run's profile takes the name
        PROFILES["region loss"] = PROFILES["failover-us-west"]
    done = report("failover")
    pause = done.get("write_pause") or {}
    first = writer.first_after(stopped)
    keep("region loss: first write through db after the stop began s",
         None if first is None else first + stopped - stopping)
    keep("region loss: longest client gap s", writer.gap)
    keep("region loss: write pause in the report, lower s", pause.get("at_least_seconds"))
    keep("region loss: write pause in the report, upper s", pause.get("seconds"))
    keep("region loss: RTO in the report s", done["rto_seconds"])
    keep("region loss: wall s", took)
    out, rerun = playbook("failover.yml", "-e", "target=us-west")
    keep("failover re-run: changed nothing (1 = yes)", int(changed_nothing(out)))
    keep("failover re-run: wall s", rerun)
    run(sys.executable, str(ROOT / "lab/labctl.py"), "start-region", "us-east")
    time.sleep(10)
    _out, took = playbook("failback.yml")
    keep("failback: wall s", took)
    playbook("switchover.yml", "-e", "target=us-east")


if __name__ == "__main__":
    sys.exit(main())

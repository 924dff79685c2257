#!/usr/bin/env python3
"""In-region recovery time of the primary region: a fault on the leader -> first successful
write through PgBouncer, with Patroni's default timing and with Baton's.

    make lab-up LAB=bench IMAGE=packages && make site  # once: three nodes in us-east (or LAB=full)
    .venv/bin/python bench/inregion_failover.py [--runs 3] [--fault node|postgres|both]

Faults: `node` kills the leader's container (PostgreSQL and Patroni die together, as in a
crash, so the leader key must expire in etcd and another member is elected); `postgres` kills
only the leader's PostgreSQL processes with SIGKILL (Patroni notices on its next loop and
starts it again in place; no election, the data is intact).

For each timing profile the script sets ttl/loop_wait/retry_timeout on the us-east cluster
(patronictl edit-config), then per run: injects the fault, writes through PgBouncer on a
surviving us-east node every 0.2 s, records the time to the first successful write, repairs
(starts the container) and waits until the cluster has a leader and two streaming replicas.
Prints each run and the median per fault and profile. Restores Baton's timing.
"""

from __future__ import annotations

import argparse
import json
import os
import ssl
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"))
APP = {"user": "app", "password": "lab-app-not-secret", "connect_timeout": 2}  # lab throwaway
NODES = {f"us-east-{i}": f"10.231.1.{10 + i}" for i in (1, 2, 3)}
# Patroni's REST API speaks HTTPS with certificates of the lab's Baton CA (.lab/pki).
TLS = urllib.request.build_opener(urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(
    context=ssl.create_default_context(cafile=str(ROOT / ".lab/pki/ca.crt"))))
PROFILES = {  # name: (ttl, loop_wait, retry_timeout)
    "patroni-default": (30, 10, 10),
    "baton": (20, 5, 5),
}


def roles() -> dict[str, tuple[str, str]]:
    for addr in NODES.values():
        try:
            with TLS.open(f"https://{addr}:8008/cluster", timeout=2) as resp:
                return {m["name"]: (m["role"], m["state"])
                        for m in json.loads(resp.read())["members"]}
        except OSError:
            continue
    return {}


def podman(*args: str) -> None:
    subprocess.run(["podman", *args], check=True, capture_output=True, env=ENV)


def set_timing(ttl: int, loop_wait: int, retry: int) -> None:
    node = next(n for n, (r, _s) in roles().items() if r == "leader")
    podman("exec", f"baton-{node}", "patronictl", "-c", "/etc/patroni/patroni.yml",
           "edit-config", "--force", "-s", f"ttl={ttl}", "-s", f"loop_wait={loop_wait}",
           "-s", f"retry_timeout={retry}")
    time.sleep(loop_wait + 2)  # every member picks it up on its next loop


def wait_all_streaming(timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        states = sorted(roles().values())
        if states == [("leader", "running"), ("replica", "streaming"), ("replica", "streaming")]:
            return
        time.sleep(1)
    sys.exit(f"bench: us-east did not return to a leader and two streaming replicas: {roles()}")


def one_run(fault: str) -> float:
    wait_all_streaming()
    leader = next(n for n, (r, _s) in roles().items() if r == "leader")
    survivor = next(n for n in NODES if n != leader)
    killed = time.monotonic()
    if fault == "node":
        podman("kill", f"baton-{leader}")
    else:
        podman("exec", f"baton-{leader}", "pkill", "-KILL", "-u", "postgres", "-x", "postgres")
    try:
        while time.monotonic() - killed < 120:
            try:
                with psycopg.connect(host=NODES[survivor], port=6432, dbname="app",
                                     autocommit=True, **APP) as conn:
                    conn.execute("INSERT INTO baton_bench VALUES (now())")
                return time.monotonic() - killed
            except psycopg.Error:
                time.sleep(0.2)
        sys.exit("bench: no write within 120 s")
    finally:
        if fault == "node":
            podman("start", f"baton-{leader}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--fault", choices=["node", "postgres", "both"], default="both")
    args = parser.parse_args()
    faults = ["node", "postgres"] if args.fault == "both" else [args.fault]
    if not roles():
        sys.exit("bench: no Patroni answers in us-east: run 'make lab-up LAB=full && make site'")
    wait_all_streaming()
    leader = next(n for n, (r, _s) in roles().items() if r == "leader")
    with psycopg.connect(host=NODES[leader], port=6432, dbname="app", autocommit=True,
                         **APP) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS baton_bench (at timestamptz)")
    medians = {}
    try:
        for name, timing in PROFILES.items():
            set_timing(*timing)
            for fault in faults:
                runs = []
                for i in range(args.runs):
                    seconds = one_run(fault)
                    runs.append(seconds)
                    print(f"{name:16} ttl/loop_wait/retry={'/'.join(map(str, timing)):9} "
                          f"{fault:8} run {i + 1}: {seconds:5.1f} s", flush=True)
                medians[(fault, name)] = statistics.median(runs)
    finally:
        wait_all_streaming()
        set_timing(*PROFILES["baton"])
    what = {"node": "leader node killed", "postgres": "leader's PostgreSQL killed"}
    for (fault, name), median in sorted(medians.items()):
        print(f"median {name:16} {median:5.1f} s  ({what[fault]} -> first write through "
              "PgBouncer)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""In-region Redis failover time of the primary region: the master's Redis stopped -> first
successful write by a client that finds the master through Sentinel, with Redis's default
Sentinel timing and with Baton's.

    make lab-up LAB=bench IMAGE=packages && make site  # once: three nodes in us-east (or LAB=full)
    .venv/bin/python bench/sentinel_failover.py [--runs 3]

For each timing profile the script sets down-after-milliseconds and failover-timeout on the
three us-east Sentinels (SENTINEL SET), then per run: stops redis-server on the master's node
(systemctl stop), asks the Sentinels for the master and writes to it every 0.2 s, records the
time to the first write accepted by another node, starts the old master again and waits until
Sentinel has made it a replica with its link up. Prints each run and the median per profile.
Restores Baton's timing.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import redis

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"))
REDIS_PASSWORD = "lab-redis-not-secret"  # lab throwaway (inventories/lab secrets.yml)
SENTINEL_PASSWORD = "lab-sentinel-not-secret"  # lab throwaway
# Redis and Sentinel speak TLS only, with the lab's CA.
TLS = {"ssl": True, "ssl_ca_certs": str(ROOT / ".lab/pki/ca.crt")}
NODES = {f"10.231.1.{10 + i}": f"us-east-{i}" for i in (1, 2, 3)}
PROFILES = {  # name: (down-after-milliseconds, failover-timeout)
    "redis-default": (30000, 180000),
    "baton": (5000, 60000),
}


def sentinel(address: str) -> redis.Redis:
    return redis.Redis(host=address, port=26379, password=SENTINEL_PASSWORD, socket_timeout=1,
                       socket_connect_timeout=1, decode_responses=True, **TLS)


def server(address: str) -> redis.Redis:
    return redis.Redis(host=address, port=6379, password=REDIS_PASSWORD, socket_timeout=1,
                       socket_connect_timeout=1, decode_responses=True, **TLS)


def master_address() -> str | None:
    """What the Sentinels say; the first that answers wins (as a client library does)."""
    for address in NODES:
        try:
            reply = sentinel(address).execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME",
                                                      "baton")
            if reply:
                return str(reply[0])
        except redis.RedisError:
            continue
    return None


def systemctl(address: str, action: str) -> None:
    subprocess.run(["podman", "exec", f"baton-{NODES[address]}", "systemctl", action,
                    "redis-server"], check=True, capture_output=True, env=ENV)


def set_timing(down_after: int, failover_timeout: int) -> None:
    for address in NODES:
        sentinel(address).execute_command("SENTINEL", "SET", "baton", "down-after-milliseconds",
                                          str(down_after), "failover-timeout",
                                          str(failover_timeout))


def wait_settled(timeout: float = 240) -> str:
    """Until one master has two replicas with their link up; returns the master."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        master = master_address()
        try:
            if master:
                info = server(master).info("replication")
                local = [info[k] for k in info if k.startswith("slave") and isinstance(
                    info[k], dict) and info[k].get("ip") in NODES]
                if info.get("role") == "master" and len(local) == 2 and all(
                        s.get("state") == "online" for s in local):
                    return master
        except redis.RedisError:
            pass
        time.sleep(1)
    sys.exit("bench: us-east's Redis did not settle on one master and two replicas")


def one_run() -> float:
    old = wait_settled()
    stopped = time.monotonic()
    systemctl(old, "stop")
    try:
        while time.monotonic() - stopped < 300:
            master = master_address()
            if master and master != old:
                try:
                    server(master).set("baton:bench", str(time.time()))
                    return time.monotonic() - stopped
                except redis.RedisError:
                    pass
            time.sleep(0.2)
        sys.exit("bench: no write through Sentinel discovery within 300 s")
    finally:
        systemctl(old, "start")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if master_address() is None:
        sys.exit("bench: no us-east Sentinel names a master: run 'make lab-up LAB=full && "
                 "make site'")
    medians = {}
    try:
        for name, timing in PROFILES.items():
            set_timing(*timing)
            runs = []
            for i in range(args.runs):
                seconds = one_run()
                runs.append(seconds)
                print(f"{name:14} down-after/failover-timeout={timing[0]}/{timing[1]} ms "
                      f"run {i + 1}: {seconds:5.1f} s", flush=True)
            medians[name] = statistics.median(runs)
    finally:
        wait_settled()
        set_timing(*PROFILES["baton"])
    for name, median in medians.items():
        print(f"median {name:14} {median:5.1f} s  (master's Redis stopped -> first write "
              "through Sentinel discovery)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

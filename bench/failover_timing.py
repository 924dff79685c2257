#!/usr/bin/env python3
"""Cross-region moves of the baton, measured on the lab that is up (mini or full, deployed
with site.yml, us-east holding the baton):

    make lab-up && make site                    # once
    .venv/bin/python bench/failover_timing.py [--runs 3]

Per run, in this order:
- switchover.yml us-east -> us-west under a continuous writer (one client writing through
  us-west's PgBouncer every 20 ms): its longest gap between two acknowledged writes, its client
  errors, and writes it was told succeeded but that the new primary does not hold (must be 0);
- the re-run of that switchover (changed=0): wall time;
- switchover.yml back to us-east (same measures);
- unplanned: every us-east container stopped, failover.yml -e target=us-west: the RTO the
  report states (start of the run to the first write accepted through db.baton.internal) and
  the run's wall time; then us-east started again, failback.yml, switchover.yml home;
- where the primary region has two nodes or more (the full lab), Patroni's in-region
  `patronictl switchover` under the same writer, for comparison.
Prints each run and the medians.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"),
           ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}:{os.environ['PATH']}")
APP = {"user": "app", "password": "lab-app-not-secret", "connect_timeout": 2}  # lab throwaway


def run(*cmd: str, timeout: float = 900) -> tuple[int, str, float]:
    started = time.monotonic()
    with open(os.devnull) as devnull:
        proc = subprocess.run(list(cmd), cwd=ROOT, env=ENV, stdin=devnull, text=True,
                              capture_output=True, timeout=timeout, check=False)
    return proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started


def playbook(*args: str) -> tuple[str, float]:
    code, out, took = run(str(BIN / "ansible-playbook"), *args)
    if code != 0:
        sys.exit(f"bench: ansible-playbook {' '.join(args)} failed:\n{out[-3000:]}")
    return out, took


class Writer:
    """Writes numbered rows through one PgBouncer; remembers acknowledged ids, errors, gaps."""

    def __init__(self, address: str):
        self.address, self.acked, self.errors, self.gap = address, [], 0, 0.0
        self.stop = threading.Event()
        with psycopg.connect(host=address, port=6432, dbname="app", autocommit=True,
                             **APP) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS baton_bench_writer (id bigint PRIMARY KEY)")
            self.next = conn.execute("SELECT coalesce(max(id), 0) + 1 FROM baton_bench_writer"
                                     ).fetchone()[0]
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def loop(self) -> None:
        conn, last = None, time.monotonic()
        while not self.stop.is_set():
            try:
                conn = conn or psycopg.connect(host=self.address, port=6432, dbname="app",
                                               autocommit=True, **APP)
                conn.execute("INSERT INTO baton_bench_writer VALUES (%s)", (self.next,))
                self.acked.append(self.next)
                now = time.monotonic()
                self.gap, last = max(self.gap, now - last), now
            except psycopg.Error:
                self.errors += 1
                if conn is not None:
                    conn.close()
                conn = None
            self.next += 1
            time.sleep(0.02)

    def __enter__(self) -> Writer:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join(30)

    def lost(self, primary: str) -> int:
        with psycopg.connect(host=primary, port=6432, dbname="app", autocommit=True,
                             **APP) as conn:
            stored = {r[0] for r in conn.execute("SELECT id FROM baton_bench_writer")}
        return sum(1 for i in self.acked if i not in stored)


def inventory() -> dict[str, list[str]]:
    """Region -> its hosts' addresses, as the lab tool reports them."""
    code, out, _ = run(sys.executable, str(ROOT / "lab/labctl.py"), "status", "--json")
    if code != 0:
        sys.exit(f"bench: the lab does not answer: {out[-500:]}")
    regions: dict[str, list[str]] = {}
    for host in json.loads(out)["hosts"]:
        if host["region"]:
            regions.setdefault(host["site"], []).append(host["address"])
    return regions


def switchover(target: str, writer_at: str, primary_after: str) -> dict[str, float]:
    with Writer(writer_at) as writer:
        time.sleep(1)
        _out, took = playbook("switchover.yml", "-e", f"target={target}")
        time.sleep(1)
    return {"gap": writer.gap, "errors": writer.errors, "lost": writer.lost(primary_after),
            "wall": took}


def patroni_switchover(region_nodes: list[str]) -> dict[str, float] | None:
    if len(region_nodes) < 2:
        return None
    with Writer(region_nodes[0]) as writer:
        time.sleep(1)
        code, out, took = run("podman", "exec", "baton-us-east-1", "patronictl", "-c",
                              "/etc/patroni/patroni.yml", "switchover", "--force")
        time.sleep(8)
    if code != 0:
        sys.exit(f"bench: patronictl switchover failed: {out[-1000:]}")
    return {"gap": writer.gap, "errors": writer.errors, "wall": took}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    regions = inventory()
    east, west = regions["us-east"][0], regions["us-west"][0]
    rows: dict[str, list[float]] = {}

    def keep(name: str, value: float | None) -> None:
        if value is not None:
            rows.setdefault(name, []).append(round(float(value), 3))

    for n in range(1, args.runs + 1):
        there = switchover("us-west", west, west)
        _out, rerun = playbook("switchover.yml", "-e", "target=us-west")
        back = switchover("us-east", west, east)
        for name, m in (("switchover", there), ("switchover back", back)):
            keep(f"{name}: longest gap s", m["gap"])
            keep(f"{name}: client errors", m["errors"])
            keep(f"{name}: acknowledged writes lost", m["lost"])
            keep(f"{name}: wall s", m["wall"])
        keep("switchover re-run (changed=0): wall s", rerun)
        run(sys.executable, str(ROOT / "lab/labctl.py"), "stop-region", "us-east")
        _out, took = playbook("failover.yml", "-e", "target=us-west")
        report = json.loads((ROOT / "reports/failover-latest.json").read_text())
        keep("unplanned failover: RTO s (report)", report["rto_seconds"])
        keep("unplanned failover: wall s", took)
        keep("unplanned failover: data lost bytes", report["data_lost_bytes"])
        _out, rerun = playbook("failover.yml", "-e", "target=us-west")
        keep("failover re-run (changed=0): wall s", rerun)
        run(sys.executable, str(ROOT / "lab/labctl.py"), "start-region", "us-east")
        time.sleep(10)
        _out, took = playbook("failback.yml")
        keep("failback: wall s", took)
        playbook("switchover.yml", "-e", "target=us-east")
        inregion = patroni_switchover(regions["us-east"])
        if inregion:
            keep("patronictl switchover (in-region): longest gap s", inregion["gap"])
            keep("patronictl switchover (in-region): client errors", inregion["errors"])
        print(f"run {n}: " + ", ".join(f"{k} {v[-1]}" for k, v in rows.items()), flush=True)
    print("\nmedians of", args.runs, "runs:")
    for name, values in rows.items():
        print(f"  {name:55s} {statistics.median(values):10.3f}   {values}")
    if not regions["us-east"][1:]:
        print("  patronictl switchover (in-region): n/a on the mini lab (one node per region); "
              "run on the full lab for it")
    return 0


if __name__ == "__main__":
    sys.exit(main())

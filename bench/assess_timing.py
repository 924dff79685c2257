#!/usr/bin/env python3
"""baton_assess wall time on the lab that is up: every region healthy, then with one region
partitioned (the lab's partition tool), as medians of several runs.

    make lab-up && ansible-playbook site.yml      # once (mini or full)
    .venv/bin/python bench/assess_timing.py [--runs 5] [--region eu-west]

Each run is `ansible localhost -m baton_assess` with the inputs health.yml gives it; the
figure is the module's own `elapsed` (probes and verdicts), and the whole ad-hoc command's
wall time is printed beside it (Ansible's start-up included). Heals the partition at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"),
           ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), ANSIBLE_LOAD_CALLBACK_PLUGINS="1",
           ANSIBLE_STDOUT_CALLBACK="json")
# What health.yml passes, from the lab inventory (its throwaway secrets).
ARGS = ("regions={{ groups | baton_assess_regions(hostvars) }} "
        "monitoring_password={{ hostvars[groups.all[0]].baton_monitoring_password }} "
        "redis_password={{ hostvars[groups.all[0]].redis_password }} "
        "sentinel_password={{ hostvars[groups.all[0]].redis_sentinel_password }} "
        "dns_servers={{ groups | baton_hosts(hostvars) | map('extract', hostvars, "
        "'baton_address') | list }} timeout=2 "
        # Patroni's REST API is HTTPS only, with the lab's CA (.lab/pki).
        "restapi_ca_file={{ hostvars[groups.all[0]].baton_pki_dir }}/ca.crt "
        # Redis and Sentinel are TLS only, with the same CA.
        "tls_ca_file={{ hostvars[groups.all[0]].baton_pki_dir }}/ca.crt")


def assess_once() -> tuple[float, float, dict]:
    started = time.monotonic()
    proc = subprocess.run([str(BIN / "ansible"), "localhost", "-m", "baton_assess", "-a", ARGS,
                           "-e", f"ansible_python_interpreter={sys.executable}"],
                          capture_output=True, text=True, env=ENV, cwd=ROOT, check=False)
    wall = time.monotonic() - started
    result = json.loads(proc.stdout)["plays"][0]["tasks"][0]["hosts"]["localhost"]
    if result.get("failed"):
        sys.exit(f"baton_assess failed: {result.get('msg')}")
    return result["elapsed"], wall, result


def series(label: str, runs: int) -> None:
    elapsed, walls = [], []
    for index in range(runs):
        took, wall, result = assess_once()
        verdicts = {r: e["verdict"] for r, e in result["regions"].items()}
        print(f"  {label} run {index + 1}: baton_assess {took:.2f} s (ansible {wall:.2f} s) "
              f"{verdicts}")
        elapsed.append(took)
        walls.append(wall)
    print(f"{label}: median baton_assess {statistics.median(elapsed):.2f} s, "
          f"median with ansible {statistics.median(walls):.2f} s ({runs} runs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--region", default="eu-west",
                        help="the region to partition (not the one holding the baton: its "
                             "fence agents would fence it)")
    args = parser.parse_args()
    labctl = [sys.executable, str(ROOT / "lab/labctl.py")]
    series("healthy", args.runs)
    subprocess.run([*labctl, "partition", args.region], check=True, env=ENV)
    try:
        series(f"{args.region} partitioned", args.runs)
    finally:
        subprocess.run([*labctl, "heal", args.region], check=True, env=ENV)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Lab timings: base image build (cold and cached), lab up, site.yml (cold and re-run), down.

    .venv/bin/python bench/lab_timings.py [--size mini|full] [--keep-image]

Replaces any lab that is up. "Cold" image build removes the image first; the host's apt
cache (apt-cacher-ng) stays, so a first build on a new machine also pays the downloads.
Prints one line per step and the changed count of the site.yml re-run (should be 0).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
ENV = dict(os.environ, CONTAINERS_CONF=str(ROOT / "lab/containers.conf"),
           ANSIBLE_CONFIG=str(ROOT / "ansible.cfg"), PATH=f"{BIN}:{os.environ['PATH']}")
LABCTL = [sys.executable, str(ROOT / "lab/labctl.py")]


def timed(label: str, cmd: list[str]) -> tuple[float, str]:
    started = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=ENV, cwd=ROOT)
    elapsed = time.monotonic() - started
    if proc.returncode != 0:
        sys.exit(f"bench: {label} failed (exit {proc.returncode}):\n{proc.stdout[-2000:]}"
                 f"{proc.stderr[-2000:]}")
    print(f"{label:34} {elapsed:7.1f} s", flush=True)
    return elapsed, proc.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", default="mini", choices=["mini", "full"])
    parser.add_argument("--keep-image", action="store_true",
                        help="skip the cold image build (measure only the cached one)")
    args = parser.parse_args()
    print(f"lab timings, size {args.size}, {os.cpu_count()} cores")
    subprocess.run([*LABCTL, "down"], capture_output=True, env=ENV, check=True)
    ref = subprocess.run([*LABCTL, "image-ref"], capture_output=True, text=True, env=ENV,
                         check=True).stdout.strip()
    if not args.keep_image:
        subprocess.run(["podman", "rmi", "-f", ref, "localhost/baton-debian13:current"],
                       capture_output=True, env=ENV)
        timed("image build (cold, apt cache warm)", [*LABCTL, "image"])
    timed("image build (cached)", [*LABCTL, "image"])
    timed(f"lab up ({args.size}, from down)", [*LABCTL, "up", "--size", args.size])
    timed("site.yml (cold)", [str(BIN / "ansible-playbook"), "site.yml"])
    _, out = timed("site.yml (re-run)", [str(BIN / "ansible-playbook"), "site.yml"])
    changed = sum(int(n) for n in re.findall(r"changed=(\d+)", out))
    print(f"{'site.yml re-run: changed tasks':34} {changed:7d}")
    timed("lab down", [*LABCTL, "down"])
    return 0 if changed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

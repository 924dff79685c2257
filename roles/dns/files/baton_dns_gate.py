#!/usr/bin/python3
"""Baton's name-server gate: a name server configured as the failover zone's primary serves
only while the witness agrees that it is the primary.

When the global site is lost, a failover makes a surviving region's name server the zone's
primary and records that on the witness (/baton/dns_primary). The returning global site's
name server still has its older copy configured as primary: left alone it would answer
db.<zone> with the fenced region. This gate keeps it out of service until failback.yml makes
it a secondary of the recorded primary (or moves the primary home):

    baton_dns_gate.py start   systemd ExecStartPre of named: exit 1 (named does not start)
                              when this node is configured primary and the witness names
                              another host
    baton_dns_gate.py check   from a timer: the same test on a running named; stops it

A secondary always passes (it follows whichever primary it is configured with and refreshes
before serving a zone that expired). When no witness member answers, the gate lets named start
as configured (the witness being unreachable says nothing about which copy is newer), and says
so in the journal.

Configuration: /etc/bind/baton-gate.json {"host", "home", "endpoints", "conf"}, written by the
dns role. baton_witness.py (Baton's witness client) sits next to this file.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baton_witness import (
    DNS_PRIMARY,
    Witness,
    WitnessError,
    parse_dns_primary,
)

CONFIG = Path("/etc/bind/baton-gate.json")
_PRIMARY = re.compile(r"^\s*type\s+(primary|master)\s*;", re.MULTILINE)


def configured_primary(conf: str) -> bool:
    """Whether the named configuration file declares a primary zone."""
    try:
        return bool(_PRIMARY.search(Path(conf).read_text()))
    except OSError:
        return False


def verdict(cfg: dict) -> tuple[bool, str]:
    """(may serve, why)."""
    if not configured_primary(cfg.get("conf", "/etc/bind/named.conf.local")):
        return True, "a secondary copy"
    if not cfg.get("endpoints"):
        return True, "no witness configured"
    try:
        entry = Witness(cfg["endpoints"], timeout=1.5, budget=5.0).get(DNS_PRIMARY)
        record = parse_dns_primary(entry.value if entry else None, cfg["home"])
    except (WitnessError, ValueError) as exc:
        return True, (f"the witness cannot say which copy is the primary ({exc}); serving as "
                      "configured")
    if record["host"] == cfg["host"]:
        return True, "the witness names this node as the zone's primary"
    since = f" since {record['since']}" if record.get("since") else ""
    return False, (f"this node's copy is configured as the zone's primary, but the witness names "
                   f"{record['host']}{since}, whose copy is newer: not serving the older one; "
                   "failback.yml makes this node follow it")


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "start"
    try:
        cfg = json.loads(CONFIG.read_text())
    except (OSError, ValueError) as exc:
        print(f"baton-dns-gate: no readable {CONFIG} ({exc}); named starts as configured")
        return 0
    ok, why = verdict(cfg)
    if mode == "start":
        print(f"baton-dns-gate: {why}")
        return 0 if ok else 1
    if not ok:
        active = subprocess.run(["systemctl", "is-active", "--quiet", "named"], check=False)
        if active.returncode == 0:
            print(f"baton-dns-gate: {why}; stopping named")
            subprocess.run(["systemctl", "stop", "named"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

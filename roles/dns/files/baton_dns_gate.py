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
    baton_dns_gate.py check   from a timer: the same test on what a running named serves
                              (rndc zonestatus); stops it
    baton_dns_gate.py convert ZONE
                              this node's secondary copy (its journal folded in, after rndc
                              sync) becomes the primary's zone file, checked to hold the serial
                              named serves; prints {"serial": N} (used when the zone's primary
                              moves to this node: the serial goes on from there)

A secondary always passes (it follows whichever primary it is configured with and refreshes
before serving a zone that expired). When no witness member answers, the gate lets named start
as configured (the witness being unreachable says nothing about which copy is newer), and says
so in the journal.

Configuration: /etc/bind/baton-gate.json {"host", "home", "endpoints", "conf", "zone"}, written
by the dns role. baton_witness.py (Baton's witness client) sits next to this file.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from baton_witness import (
    DNS_PRIMARY,
    Witness,
    WitnessError,
    WitnessUnavailable,
    parse_dns_primary,
)

CONFIG = Path("/etc/bind/baton-gate.json")
_PRIMARY = re.compile(r"^\s*type\s+(primary|master)\s*;", re.MULTILINE)
_SERIAL = re.compile(r"loaded serial (\d+)")


def configured_primary(conf: str) -> bool:
    """Whether the named configuration file declares a primary zone."""
    try:
        return bool(_PRIMARY.search(Path(conf).read_text()))
    except OSError:
        return False


def zone_status(zone: str) -> dict[str, str]:
    """What the running named says of the zone (rndc zonestatus: 'type', 'serial', ...); empty
    when named does not run or does not serve it."""
    done = subprocess.run(["rndc", "zonestatus", zone], capture_output=True, text=True,
                          check=False, timeout=15)
    if done.returncode != 0:
        return {}
    return {k.strip(): v.strip() for k, _, v in
            (line.partition(":") for line in done.stdout.splitlines()) if v}


def verdict(cfg: dict, serves_primary: bool | None = None) -> tuple[bool, str]:
    """(may serve, why). serves_primary: what the running named serves (None: read the
    configuration, as before a start)."""
    primary = (configured_primary(cfg.get("conf", "/etc/bind/named.conf.local"))
               if serves_primary is None else serves_primary)
    if not primary:
        return True, "a secondary copy"
    if not cfg.get("endpoints"):
        return True, "no witness configured"
    try:
        entry = Witness(cfg["endpoints"], timeout=1.5, budget=5.0,
                        client=cfg.get("client")).get(DNS_PRIMARY)
        record = parse_dns_primary(entry.value if entry else None, cfg["home"])
    except WitnessUnavailable as exc:
        return True, (f"the witness cannot say which copy is the primary ({exc}); serving as "
                      "configured")
    except (WitnessError, ValueError, OSError) as exc:
        # A refused login, a permission or a TLS file of this node: a fault of this node's
        # configuration, not a lost witness. Still served (a name server that cannot start
        # is worse than a stale one, which the health check reports), but said as what it is.
        return True, (f"CONFIGURATION FAULT: the witness refused this node's gate or its TLS "
                      f"files do not load ({exc}); serving as configured until it is fixed "
                      "(site.yml)")
    if record["host"] == cfg["host"]:
        return True, "the witness names this node as the zone's primary"
    since = f" since {record['since']}" if record.get("since") else ""
    return False, (f"this node's copy is configured as the zone's primary, but the witness names "
                   f"{record['host']}{since}, whose copy is newer: not serving the older one; "
                   "failback.yml makes this node follow it")


def convert(zone: str) -> dict:
    """The secondary copy becomes the primary's zone file (see the module's docstring)."""
    source = Path(f"/var/cache/bind/db.{zone}")
    target = Path(f"/var/lib/bind/db.{zone}")
    status = zone_status(zone)
    if status:  # the zone in memory goes to its file (and the journal into it)
        subprocess.run(["rndc", "sync", zone], capture_output=True, check=False, timeout=15)
    if not source.exists():
        raise SystemExit(f"baton-dns-gate: no secondary copy of {zone} here ({source}): this "
                         "name server never transferred the zone; choose another one")
    served = status.get("serial")
    for _attempt in range(10):
        new = target.with_name(target.name + ".new")
        done = subprocess.run(["named-compilezone", "-j", "-f", "text", "-F", "text", "-o",
                               str(new), zone, str(source)], capture_output=True, text=True,
                              check=False, timeout=60)
        found = _SERIAL.search(done.stdout)
        if done.returncode == 0 and found and (served is None or found.group(1) == served):
            break
        new.unlink(missing_ok=True)
        time.sleep(1)  # named still writing the file of a transfer it just took
    else:
        raise SystemExit(f"baton-dns-gate: the secondary copy {source} does not hold the serial "
                         f"named serves ({served}): {done.stdout.strip()} {done.stderr.strip()}; "
                         "re-run once named has written it (rndc sync)")
    shutil.chown(new, "bind", "bind")
    new.chmod(0o644)
    Path(f"{target}.jnl").unlink(missing_ok=True)
    new.replace(target)
    return {"serial": int(found.group(1)), "file": str(target)}


def main(argv: list[str]) -> int:
    mode = argv[1] if len(argv) > 1 else "start"
    if mode == "convert":
        print(json.dumps(convert(argv[2])))
        return 0
    try:
        cfg = json.loads(CONFIG.read_text())
    except (OSError, ValueError) as exc:
        print(f"baton-dns-gate: no readable {CONFIG} ({exc}); named starts as configured")
        return 0
    if mode == "start":
        ok, why = verdict(cfg)
        print(f"baton-dns-gate: {why}")
        return 0 if ok else 1
    status = zone_status(cfg.get("zone", "baton.internal"))
    if status.get("type") != "primary":
        return 0  # named is down, or serves a secondary copy
    ok, why = verdict(cfg, serves_primary=True)
    if not ok:
        print(f"baton-dns-gate: {why}; stopping named")
        subprocess.run(["systemctl", "stop", "named"], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))

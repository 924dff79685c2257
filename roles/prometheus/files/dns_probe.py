#!/usr/bin/python3
"""Baton DNS probe: asks every name server of the failover zone where its names point.

    dns_probe.py CONFIG.json [--once]

CONFIG: {"zone", "names", "servers", "regions": {address: region}, "output", "interval"}.
Writes, atomically, a file for node_exporter's textfile collector:

    baton_dns_probe_success{server}                   1 when the server answered every name
    baton_dns_answer{name, server, answer_region}     1 per region an answer's addresses are in
    baton_dns_soa_serial{server}                      the zone's serial on that server
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time

import dns.exception
import dns.message
import dns.query
import dns.rdatatype

TIMEOUT = 2.0


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"')


def ask(server: str, qname: str, rdtype: str) -> list[str]:
    """The answer's values, [] for NXDOMAIN/no data; raises on no answer or a refusal."""
    query = dns.message.make_query(qname, rdtype)
    response = dns.query.udp(query, server, timeout=TIMEOUT)
    if response.rcode() not in (0, 3):  # NOERROR, NXDOMAIN
        raise dns.exception.DNSException(f"rcode {response.rcode()}")
    return [item.to_text() for rrset in response.answer
            if rrset.rdtype == dns.rdatatype.from_text(rdtype) for item in rrset]


def probe(config: dict) -> list[str]:
    lines = [
        "# HELP baton_dns_probe_success 1 when the name server answered every failover name.",
        "# TYPE baton_dns_probe_success gauge",
    ]
    answers: list[str] = []
    serials: list[str] = []
    regions: dict[str, str] = config["regions"]
    for server in config["servers"]:
        ok = 1
        try:
            soa = ask(server, config["zone"], "SOA")
            if soa:
                serials.append(f'baton_dns_soa_serial{{server="{_label(server)}"}} '
                               f"{soa[0].split()[2]}")
            for name in config["names"]:
                fqdn = f"{name}.{config['zone']}"
                found = sorted({regions.get(a, "unknown") for a in ask(server, fqdn, "A")})
                for region in found:
                    answers.append(f'baton_dns_answer{{name="{_label(name)}",'
                                   f'server="{_label(server)}",'
                                   f'answer_region="{_label(region)}"}} 1')
        except (dns.exception.DNSException, OSError):
            ok = 0
        lines.append(f'baton_dns_probe_success{{server="{_label(server)}"}} {ok}')
    lines += ["# HELP baton_dns_answer 1 for each region that a failover name's answer points at.",
              "# TYPE baton_dns_answer gauge", *answers,
              "# HELP baton_dns_soa_serial The failover zone's SOA serial on each name server.",
              "# TYPE baton_dns_soa_serial gauge", *serials]
    return lines


def write(path: str, lines: list[str]) -> None:
    directory = os.path.dirname(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".baton_dns.")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write("\n".join(lines) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def main() -> int:
    if len(sys.argv) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    with open(sys.argv[1], encoding="utf-8") as handle:
        config = json.load(handle)
    while True:
        write(config["output"], probe(config))
        if "--once" in sys.argv:
            return 0
        time.sleep(config.get("interval", 15))


if __name__ == "__main__":
    sys.exit(main())

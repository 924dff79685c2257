#!/usr/bin/python
"""Ansible module: which name server holds the failover zone's primary copy (the witness's
record), whether it answers, and moving that record."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_dns_primary
short_description: Read or move the record of the failover zone's primary name server
description:
  - The zone's primary lives on the global site (O(home)). When the global site is lost, a
    failover makes a surviving region's name server the primary for the time being, and
    records that on the witness (key C(/baton/dns_primary)), so that every later run,
    C(site.yml) included, writes the same configuration and a returning global site does not
    serve its older copy (its name server refuses to start while the record names another
    host). C(failback.yml) moves the primary home and deletes the key.
  - C(state=read) returns the record (O(home) when there is none) and whether that server
    answers for the zone now, with its SOA serial.
  - C(state=present) records O(host) as the primary (deletes the key when O(host) is
    O(home)); C(ok) when it is recorded already. The change is a compare-and-swap on the
    key, so a concurrent change fails the task.
  - Runs on the controller. Check mode reads and reports the change without making it.
options:
  endpoints:
    description: The witness members' client endpoints (address:port).
    type: list
    elements: str
    required: true
  home:
    description: The inventory's primary name server (the global site's first host).
    type: str
    required: true
  addresses:
    description: Address of every name server by inventory host name.
    type: dict
    required: true
  zone:
    description: The failover zone.
    type: str
    default: baton.internal
  state:
    description: C(read) or C(present).
    type: str
    choices: [read, present]
    default: read
  host:
    description: The name server to record as the primary (C(state=present)).
    type: str
  why:
    description: Why the primary moves (kept in the record, shown by health.yml).
    type: str
    default: ""
  by:
    description: The run that moves it.
    type: str
    default: ""
  candidates:
    description: With C(state=read), name servers (inventory host names, in order of
      preference) that could take the primary's place when it does not answer; RV(best) is the
      one that answers with the highest serial (the first of them on a tie).
    type: list
    elements: str
    default: []
  wait_followers:
    description: With C(state=read), wait until each of these name servers (inventory host
      names) serves the primary's serial, or fail naming the ones behind.
    type: list
    elements: str
    default: []
  lock_run_id:
    description: When set, first checks that the failover lock is still this run's (a
      failover's last steps, before DNS and Redis move) and fails, naming who holds it, when
      it is not.
    type: str
    default: ""
  wait_timeout:
    description: Seconds to wait for O(wait_followers).
    type: float
    default: 30
  timeout:
    description: Seconds for each witness call and for the SOA query.
    type: float
    default: 2.0
extends_documentation_fragment: [baton_witness_client]
author: Baton
"""

EXAMPLES = r"""
- name: Which name server takes the zone's updates now
  baton_dns_primary:
    endpoints: [10.231.1.11:2391, 10.231.2.11:2391, 10.231.3.11:2391]
    home: global-1
    addresses: {global-1: 10.231.0.11, us-west-1: 10.231.2.11}
  register: dns_primary
"""

RETURN = r"""
host:
  description: The primary name server's inventory name (after the task).
  returned: always
  type: str
address:
  description: Its address.
  returned: always
  type: str
away:
  description: Whether the primary is away from O(home).
  returned: always
  type: bool
record:
  description: The witness's record (empty when the primary is at home).
  returned: always
  type: dict
answers:
  description: Whether the primary answered an SOA query for the zone (C(state=read)).
  returned: always
  type: bool
serial:
  description: Its SOA serial (C(state=read), when it answered).
  returned: always
  type: int
error:
  description: Why it did not answer (C(state=read)).
  returned: always
  type: str
best:
  description: Of O(candidates), the one that answers with the highest serial (C(state=read));
    empty when none answers.
  returned: always
  type: str
"""

import json  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_dns import DnsError, parse_server, serial  # noqa: E402
from ansible.module_utils.baton_witness import (  # noqa: E402
    CLIENT_SPEC,
    DNS_PRIMARY,
    BatonStop,
    Witness,
    WitnessError,
    lock_still_held,
    parse_dns_primary,
    utc_iso,
)

try:
    import dns.exception
    import dns.name
except ImportError:  # pragma: no cover - the venv has dnspython
    dns = None


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "endpoints": {"type": "list", "elements": "str", "required": True},
            "home": {"type": "str", "required": True},
            "addresses": {"type": "dict", "required": True},
            "zone": {"type": "str", "default": "baton.internal"},
            "state": {"type": "str", "choices": ["read", "present"], "default": "read"},
            "host": {"type": "str"},
            "why": {"type": "str", "default": ""},
            "by": {"type": "str", "default": ""},
            "candidates": {"type": "list", "elements": "str", "default": []},
            "wait_followers": {"type": "list", "elements": "str", "default": []},
            "lock_run_id": {"type": "str", "default": ""},
            "wait_timeout": {"type": "float", "default": 30.0},
            "timeout": {"type": "float", "default": 2.0},
            "client": CLIENT_SPEC,
        },
        required_if=[("state", "present", ("host",))],
        supports_check_mode=True,
    )
    p = module.params
    if dns is None:
        module.fail_json(msg="baton_dns_primary needs dnspython on the controller (the venv)")
    addresses = {str(k): str(v) for k, v in p["addresses"].items()}
    witness = Witness(p["endpoints"], p["timeout"], client=p["client"])
    try:
        if p["lock_run_id"]:
            try:
                lock_still_held(witness, p["lock_run_id"], "moves DNS and Redis")
            except BatonStop as exc:
                module.fail_json(msg=str(exc))
        entry = witness.get(DNS_PRIMARY)
        try:
            current = parse_dns_primary(entry.value if entry else None, p["home"])
        except ValueError as exc:
            module.fail_json(msg=f"{exc}: delete the key (etcdctl del {DNS_PRIMARY}) if the "
                                 f"zone's primary is {p['home']}, or write the host that is")
        result = {"changed": False, "answers": False, "serial": None, "error": "", "best": ""}
        if p["state"] == "present":
            wanted = p["host"]
            if wanted not in addresses:
                module.fail_json(msg=f"{wanted} is not a name server of this inventory: choose "
                                     f"one of {', '.join(sorted(addresses))}")
            if wanted != current["host"]:
                result["changed"] = True
                if not module.check_mode:
                    if wanted == p["home"]:
                        done = witness.delete(DNS_PRIMARY, entry.mod_revision if entry else None)
                    else:
                        value = json.dumps({"host": wanted, "address": addresses[wanted],
                                            "since": utc_iso(time.time()), "by": p["by"],
                                            "why": p["why"],
                                            "from": current["host"]}, sort_keys=True)
                        done = (witness.swap(DNS_PRIMARY, value, entry.mod_revision) if entry
                                else witness.create(DNS_PRIMARY, value))
                    if not done:
                        module.fail_json(msg=f"{DNS_PRIMARY} changed on the witness while this "
                                             "run was deciding (another run?): run health.yml "
                                             "and decide again")
                    entry = witness.get(DNS_PRIMARY)
                    current = parse_dns_primary(entry.value if entry else None, p["home"])
                else:
                    current = {"host": wanted, "home": p["home"], "away": wanted != p["home"]}
    except WitnessError as exc:
        module.fail_json(msg=f"the witness does not answer ({exc}): it holds the failover lock "
                             "and the record of which name "
                             "server holds the zone's primary copy; check the witness members "
                             "(systemctl status baton-witness)")
    host = current["host"]
    if host not in addresses:
        module.fail_json(msg=f"the witness names {host} as the zone's primary name server, "
                             "which this inventory does not have: add it back, or record one "
                             "it has (failback.yml moves the primary home)")
    result.update(host=host, address=addresses[host], away=bool(current["away"]),
                  record={k: v for k, v in current.items() if k not in ("home", "away")}
                  if current["away"] else {})
    if p["state"] == "read":
        zone = dns.name.from_text(p["zone"])
        found, error = _serial(addresses[host], zone, p["timeout"])
        result.update(answers=found is not None, serial=found, error=error)
        unknown = [c for c in p["candidates"] if c not in addresses]
        if unknown:
            module.fail_json(msg=f"{', '.join(unknown)}: not name servers of this inventory")
        ranked = []
        for index, name in enumerate(p["candidates"] if found is None else []):
            theirs, _why = _serial(addresses[name], zone, p["timeout"], attempts=1)
            if theirs is not None:
                ranked.append((theirs, -index, name))
        result["best"] = max(ranked)[2] if ranked else ""
        followers = [f for f in p["wait_followers"] if f != host]
        unknown = [f for f in followers if f not in addresses]
        if unknown:
            module.fail_json(msg=f"{', '.join(unknown)}: not name servers of this inventory")
        if followers and found is None:
            module.fail_json(msg=f"the zone's primary {host} does not answer ({error}), so "
                                 f"{', '.join(followers)} cannot catch up with it", **result)
        deadline = time.monotonic() + p["wait_timeout"]
        while followers:
            behind = {}
            for name in followers:
                theirs, why = _serial(addresses[name], zone, p["timeout"])
                if theirs != found:
                    behind[name] = f"serial {theirs}" if theirs is not None else why
            if not behind:
                break
            if time.monotonic() >= deadline:
                module.fail_json(msg=f"{'; '.join(f'{k}: {v}' for k, v in behind.items())} - "
                                     f"not the primary {host}'s serial {found} after "
                                     f"{p['wait_timeout']:g} s: check `journalctl -u named` "
                                     "there, then re-run", **result)
            time.sleep(0.5)
    module.exit_json(**result)


def _serial(address: str, zone, timeout: float, attempts: int = 2) -> tuple[int | None, str]:
    """(the zone's SOA serial on the server or None, why none). A server is asked `attempts`
    times (one lost datagram must not move the zone's primary)."""
    why = ""
    for _ in range(attempts):
        try:
            found = serial(parse_server(address), zone, timeout)
        except (DnsError, dns.exception.DNSException, OSError) as exc:
            why = str(exc) or type(exc).__name__
            continue
        if found is not None:
            return found, ""
        why = "no SOA for the zone"
    return None, why


if __name__ == "__main__":
    main()

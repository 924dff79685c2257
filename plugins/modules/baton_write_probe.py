#!/usr/bin/python
"""Ansible module: wait until a write is accepted through the failover name, as a client."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_write_probe
short_description: Wait until the database takes a write through its failover name, as clients do
description:
  - Runs on the controller. Resolves O(name) at the authoritative O(dns_servers) (the first
    that answers), connects to each address on O(port) (PgBouncer) as the application user,
    and runs C(SELECT txid_current()), which only a writable primary accepts. Repeats until
    it succeeds or O(timeout) passes.
  - Read-only for the stack (no table is written; a transaction id is used); never reports
    C(changed). In check mode it probes once and does not wait.
options:
  name:
    description: The failover name, absolute.
    type: str
    default: db.baton.internal
  dns_servers:
    description: Authoritative servers to resolve O(name) at (addresses).
    type: list
    elements: str
    required: true
  port:
    description: PgBouncer's port.
    type: int
    default: 6432
  database:
    description: The database.
    type: str
    default: app
  user:
    description: The application user.
    type: str
    default: app
  password:
    description: Its password.
    type: str
    required: true
  timeout:
    description: Seconds to keep trying.
    type: float
    default: 60
author: Baton
"""

EXAMPLES = r"""
- name: Wait until clients can write through db.baton.internal
  baton_write_probe:
    dns_servers: [10.231.0.11, 10.231.2.11]
    password: "{{ baton_app_password }}"
  delegate_to: localhost
"""

RETURN = r"""
accepted:
  description: Whether a write was accepted.
  returned: always
  type: bool
address:
  description: The address (from the name) that accepted it.
  returned: when accepted
  type: str
at:
  description: Unix time of the first accepted write.
  returned: when accepted
  type: float
elapsed:
  description: Seconds the module waited.
  returned: always
  type: float
last_error:
  description: The last failure seen.
  returned: when not accepted
  type: str
"""

import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import dns.resolver
    import psycopg
except ImportError:
    HAS_LIBS = False
else:
    HAS_LIBS = True


def resolve(name: str, servers: list[str]) -> list[str]:
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = servers
    resolver.lifetime = 2
    resolver.timeout = 1
    return sorted(r.address for r in resolver.resolve(name, "A"))


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "default": "db.baton.internal"},
            "dns_servers": {"type": "list", "elements": "str", "required": True},
            "port": {"type": "int", "default": 6432},
            "database": {"type": "str", "default": "app"},
            "user": {"type": "str", "default": "app"},
            "password": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "float", "default": 60.0},
        },
        supports_check_mode=True,
    )
    if not HAS_LIBS:
        module.fail_json(msg=missing_required_lib("dnspython and psycopg"))
    p = module.params
    started = time.monotonic()
    last_error = "no attempt"
    while True:
        try:
            addresses = resolve(p["name"], p["dns_servers"])
        except Exception as exc:
            addresses, last_error = [], f"{p['name']} did not resolve: {exc}"
        for address in addresses:
            try:
                with psycopg.connect(host=address, port=p["port"], dbname=p["database"],
                                     user=p["user"], password=p["password"], connect_timeout=2,
                                     prepare_threshold=None, autocommit=True) as conn:
                    conn.execute("SELECT txid_current()")
                module.exit_json(changed=False, accepted=True, address=address, at=time.time(),
                                 elapsed=round(time.monotonic() - started, 3))
            except psycopg.Error as exc:
                last_error = f"{address}:{p['port']}: {str(exc).strip().splitlines()[0]}"
        if module.check_mode or time.monotonic() - started >= p["timeout"]:
            module.exit_json(changed=False, accepted=False, last_error=last_error,
                             elapsed=round(time.monotonic() - started, 3))
        time.sleep(0.25)


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: pause, repoint and resume one PgBouncer database through its admin console."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_pgbouncer
short_description: Pause, repoint and resume a PgBouncer database, clients wait instead of failing
description:
  - Runs on the PgBouncer host. Reads C(SHOW DATABASES) on the admin console first and acts only
    where the database differs from what is asked, so a re-run changes nothing.
  - With O(hosts), repoints the database - PAUSE, rewrite the C(host=) of its line in
    O(config), RELOAD, check C(SHOW DATABASES) - and leaves it as O(state) says. Only the
    C(host=) value of that line is rewritten, the rest of the line and the file stay as the
    C(pgbouncer) role wrote them, so the role's next run agrees with the module.
  - C(state=paused) holds new queries (clients wait, up to PgBouncer's C(query_wait_timeout));
    C(state=resumed) lets them through. A PAUSE that does not finish within O(pause_timeout)
    (a transaction still running on a server that is gone) is followed by C(KILL), which drops
    the database's connections and leaves it paused.
  - Check mode and diff mode support.
  - The same code runs on the node as C(baton-pgbouncer), which role C(pgbouncer) installs;
    failover.yml holds and releases every PgBouncer with it through C(raw), a Python start and
    one console login instead of a module's transfer and imports.
  - Needs python3-psycopg2 on the host (role C(pgbouncer) installs it).
options:
  database:
    description: The PgBouncer database.
    type: str
    default: app
  hosts:
    description: The addresses the database must point at (its C(host=), in this order).
    type: list
    elements: str
  state:
    description: Whether queries wait (C(paused)) or flow (C(resumed)) when the task ends.
    type: str
    choices: [paused, resumed]
    default: resumed
  config:
    description: PgBouncer's configuration file.
    type: path
    default: /etc/pgbouncer/pgbouncer.ini
  admin_user:
    description: An admin user of the console.
    type: str
    default: baton_pgbouncer
  admin_password:
    description: Its password.
    type: str
    required: true
  port:
    description: PgBouncer's port (the console is reached on 127.0.0.1).
    type: int
    default: 6432
  pause_timeout:
    description: Seconds a PAUSE may take before the database's connections are killed.
    type: float
    default: 15
author: Baton
"""

EXAMPLES = r"""
- name: Hold the application's queries during the failover
  baton_pgbouncer:
    state: paused
    admin_password: "{{ pgbouncer_admin_password }}"

- name: Point app at us-west and let the queries through
  baton_pgbouncer:
    hosts: [10.231.2.11]
    state: resumed
    admin_password: "{{ pgbouncer_admin_password }}"
"""

RETURN = r"""
before:
  description: The database before the task (host, paused, disabled).
  returned: always
  type: dict
  sample: {host: 10.231.1.11, paused: false, disabled: false}
after:
  description: The database after the task (or as it would be, in check mode).
  returned: always
  type: dict
commands:
  description: The admin console commands sent (or that would be sent).
  returned: always
  type: list
  elements: str
  sample: [PAUSE app, RELOAD, RESUME app]
killed:
  description: Whether a PAUSE had to be followed by KILL.
  returned: always
  type: bool
paused_at:
  description: Unix time at which PAUSE was sent (from then on the database's clients wait).
  returned: when the task sent PAUSE
  type: float
resumed_at:
  description: Unix time at which RESUME had been applied (the clients' queries flow again).
  returned: when the task sent RESUME
  type: float
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_pgbouncer import (  # noqa: E402
    DEFAULTS,
    PgBouncerFailure,
    converge,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "database": {"type": "str", "default": DEFAULTS["database"]},
            "hosts": {"type": "list", "elements": "str"},
            "state": {"type": "str", "choices": ["paused", "resumed"], "default": "resumed"},
            "config": {"type": "path", "default": DEFAULTS["config"]},
            "admin_user": {"type": "str", "default": DEFAULTS["admin_user"]},
            "admin_password": {"type": "str", "required": True, "no_log": True},
            "port": {"type": "int", "default": DEFAULTS["port"]},
            "pause_timeout": {"type": "float", "default": DEFAULTS["pause_timeout"]},
        },
        supports_check_mode=True,
    )
    try:
        module.exit_json(**converge(module.params, check_mode=module.check_mode))
    except PgBouncerFailure as exc:
        module.fail_json(msg=exc.msg, **exc.result)


if __name__ == "__main__":
    main()

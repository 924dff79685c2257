#!/usr/bin/python
"""Ansible module: make a region's Patroni cluster a primary cluster or a standby cluster."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_cluster
short_description: Promote, demote or repoint a region's Patroni cluster, and wait for the outcome
description:
  - Runs on the controller and talks to the Patroni REST API of the region's members.
  - Reads the cluster (C(GET /cluster), C(GET /config)) first and decides; sends
    C(PATCH /config) only when the cluster is not yet what O(state) asks, so a re-run changes
    nothing.
  - C(state=primary) removes C(standby_cluster) from the dynamic configuration (Patroni's
    standby cluster promotion); with O(wait_for_lsn) it first waits until the standby leader
    has received that WAL position (a planned switchover's zero-loss condition).
  - C(state=standby) makes the cluster follow O(source_hosts) through the replication slot
    O(slot). A primary cluster is demoted (its leader restarts as a standby leader), a standby
    cluster that follows another source is repointed.
  - Then waits until the members show the outcome (a running leader, or a running or
    streaming standby leader), up to O(wait_timeout) seconds; also when nothing had to be
    sent but the outcome is not there yet (a re-run after a killed one).
  - Check mode reads and returns the decision without sending anything.
options:
  region:
    description: The region's name (for messages).
    type: str
    required: true
  members:
    description: Addresses of the region's Patroni members.
    type: list
    elements: str
    required: true
  state:
    description: What the cluster must be.
    type: str
    choices: [primary, standby]
    required: true
  source_hosts:
    description: With C(state=standby), the addresses of the primary region's read-write
      endpoints to follow.
    type: list
    elements: str
    default: []
  source_port:
    description: Port of the read-write endpoints.
    type: int
    default: 5000
  slot:
    description: With C(state=standby), the permanent slot on the source that this region
      streams through (C(baton_<region>)).
    type: str
  replica_methods:
    description: With C(state=standby), how Patroni creates the region's standby leader when it
      has none (the section's C(create_replica_methods)), in turn; C(pgbackrest) restores a
      backup (role patroni's replica method), C(basebackup) copies from the source.
    type: list
    elements: str
    default: [basebackup]
  wait_for_lsn:
    description: With C(state=primary), a WAL position (C(0/3000060)) the standby leader must
      have received before it is promoted.
    type: str
  restapi_username:
    description: Patroni REST API user (for PATCH).
    type: str
    default: patroni
  restapi_password:
    description: Its password.
    type: str
    required: true
  port:
    description: Patroni REST API port.
    type: int
    default: 8008
  timeout:
    description: Seconds each REST call may take.
    type: float
    default: 3
  streaming:
    description: With C(state=standby), wait until the standby leader streams from its source
      (not only runs), as a reprotected region must; a Patroni that does not answer yet (just
      started) is waited for too.
    type: bool
    default: false
  wait_timeout:
    description: Seconds to wait for the outcome (and for O(wait_for_lsn)).
    type: float
    default: 120
  wal_source:
    description:
      - With O(streaming), the source region's PostgreSQL (C(hosts), C(port), C(user),
        C(password); the monitoring user is enough). Every 2 s of the wait, its primary commits
        an empty transaction that holds a transaction ID (C(SELECT pg_current_xact_id())), which
        writes and flushes a commit record.
      - A standby rewound by pg_rewind is consistent, and Patroni lets it run, only once it has
        replayed past the position pg_rewind read from the source. An idle source may write
        nothing there for minutes (measured on the bench lab after a WAL segment switch, 122 s,
        then the region was cloned afresh); this makes it write.
    type: dict
requirements: [psycopg (the controller's venv), for wal_source]
extends_documentation_fragment: [baton_patroni_rest]
author: Baton
"""

EXAMPLES = r"""
- name: Promote us-west's standby cluster
  baton_cluster:
    region: us-west
    members: [10.231.2.11]
    state: primary
    restapi_password: "{{ patroni_restapi_password }}"
  delegate_to: localhost

- name: Make eu-west follow us-west
  baton_cluster:
    region: eu-west
    members: [10.231.3.11]
    state: standby
    source_hosts: [10.231.2.11]
    slot: baton_eu_west
    restapi_password: "{{ patroni_restapi_password }}"
  delegate_to: localhost
"""

RETURN = r"""
action:
  description: What was decided (C(none), C(promote), C(demote), C(repoint)) and why.
  returned: always
  type: dict
  sample: {action: promote, reason: "promote: remove standby_cluster (it followed 10.231.1.11)"}
before:
  description: The cluster before the task, its role (C(primary), C(standby) or null), the
    standby_cluster section and the members.
  returned: always
  type: dict
after:
  description: The cluster after the task (not in check mode).
  returned: when changed and not in check mode
  type: dict
leader_position:
  description: The leader's WAL position when the task ended (its location as a primary, its
    received or replayed position as a standby leader), e.g. the final position of a demoted
    primary.
  returned: when not in check mode
  type: str
  sample: 0/5000148
position_before:
  description: The leader's WAL position before the task acted (a promoted standby's received
    position, what data loss is measured against).
  returned: always
  type: str
elapsed:
  description: Seconds spent waiting for the outcome.
  returned: when changed
  type: float
"""

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible.module_utils.baton_patroni import (  # noqa: E402
    ClusterStop,
    converge_cluster,
    use_ca,
)

try:
    import psycopg
except ImportError:  # said by the module when wal_source needs it, not a traceback
    psycopg = None


def wal_writer(source: dict, timeout: float):
    """What wal_source asks for: one empty transaction with a transaction ID on the source's
    primary (the first of its hosts that takes writes), best effort: a failure is for the wait
    to outlast (the source restarting), not a reason to stop it."""
    def write() -> None:
        try:
            with psycopg.connect(host=",".join(source["hosts"]), port=source["port"],
                                 user=source["user"], password=source["password"],
                                 dbname="postgres", autocommit=True,
                                 target_session_attrs="read-write",
                                 connect_timeout=max(2, round(timeout))) as conn:
                conn.execute("SELECT pg_current_xact_id()")
        except psycopg.Error:
            pass
    return write


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "region": {"type": "str", "required": True},
            "members": {"type": "list", "elements": "str", "required": True},
            "state": {"type": "str", "choices": ["primary", "standby"], "required": True},
            "source_hosts": {"type": "list", "elements": "str", "default": []},
            "source_port": {"type": "int", "default": 5000},
            "slot": {"type": "str"},
            "replica_methods": {"type": "list", "elements": "str", "default": ["basebackup"]},
            "wait_for_lsn": {"type": "str"},
            "restapi_username": {"type": "str", "default": "patroni"},
            "restapi_password": {"type": "str", "required": True, "no_log": True},
            "port": {"type": "int", "default": 8008},
            "timeout": {"type": "float", "default": 3.0},
            "restapi_ca_file": {"type": "str", "default": ""},
            "streaming": {"type": "bool", "default": False},
            "wait_timeout": {"type": "float", "default": 120.0},
            "wal_source": {"type": "dict", "options": {
                "hosts": {"type": "list", "elements": "str", "required": True},
                "port": {"type": "int", "default": 5432},
                "user": {"type": "str", "required": True},
                "password": {"type": "str", "required": True, "no_log": True}}},
        },
        required_if=[("state", "standby", ("source_hosts", "slot"))],
        supports_check_mode=True,
    )
    p = module.params
    if p["wal_source"] and psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg") + " (for wal_source): install "
                             "requirements.txt into the controller's Python")
    use_ca(p["restapi_ca_file"])
    try:
        result = converge_cluster(
            p["region"], p["members"], p["state"], port=p["port"], timeout=p["timeout"],
            auth=(p["restapi_username"], p["restapi_password"]),
            source_hosts=p["source_hosts"], source_port=p["source_port"], slot=p["slot"],
            replica_methods=p["replica_methods"], wait_for_lsn=p["wait_for_lsn"],
            streaming=p["streaming"], wait_timeout=p["wait_timeout"],
            keep_wal_coming=wal_writer(p["wal_source"], p["timeout"])
            if p["wal_source"] and p["streaming"] else None,
            check_mode=module.check_mode)
    except ClusterStop as exc:
        module.fail_json(msg=str(exc), **exc.result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: turn what a returning region's nodes held past the fork into the failover
report's reconciled loss."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_reconcile
short_description: Reconcile an unplanned failover's loss from the old timeline, amend its report
description:
  - Runs on the controller, in C(failback.yml), after M(baton_diverged) has counted and kept, on
    each node of the returning region, what its data holds past the holder's fork point.
  - Takes the node that holds the most (the old primary), names the tables its transactions
    wrote (relfilenodes read from the holder's catalog as the monitoring user, on the first
    holder node that answers), and returns the reconciliation.
  - Finds the failover report in O(report_dir) whose promotion began the timeline the holder
    forked into from the region's data (its C(promoted_timeline)), that moved the baton away
    from the region and carries no reconciliation yet, and returns it amended (and
    C(failover-latest.json) when that is the same run) for the play to write - only when every
    node was read (status C(counted) or C(nothing)). A re-run amends nothing.
  - Never reports C(changed), as it reads the stack and writes nothing.
requirements: [psycopg (the controller's venv)]
attributes:
  check_mode:
    description: Can run in check mode and return the same result without changing anything.
    support: full
options:
  region:
    description: The returning region.
    type: str
    required: true
  holder:
    description: The region that holds the baton.
    type: str
    required: true
  nodes:
    description: The region's M(baton_diverged) results (state=kept), one per node.
    type: list
    elements: dict
    required: true
  hosts:
    description: Addresses of the holder's database nodes (any, a replica too, names the tables).
    type: list
    elements: str
    required: true
  port:
    description: PostgreSQL's port.
    type: int
    default: 5432
  user:
    description: The monitoring user.
    type: str
    default: baton_monitor
  password:
    description: Its password.
    type: str
    required: true
  timeout:
    description: Seconds per connection.
    type: float
    default: 5
  report_dir:
    description: The controller's report directory.
    type: path
    required: true
author: Baton
"""

EXAMPLES = r"""
- name: Reconcile us-east's loss and amend the failover report
  baton_reconcile:
    region: us-east
    holder: us-west
    nodes: "{{ kept.results }}"
    hosts: [10.231.2.11]
    password: "{{ baton_monitoring_password }}"
    report_dir: reports
  register: reconciled
"""

RETURN = r"""
reconciliation:
  description: >-
    status (counted, nothing, partial, following, unknown), node, kept, fork_lsn,
    fork_timeline, end_lsn, bytes,
    transactions, aborted, first_commit, last_commit, by_table (committed transactions per
    database.schema.table), problems.
  returned: always
  type: dict
amended:
  description: The reports to rewrite, each {path, report}.
  returned: always
  type: list
"""

import glob  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402
from ansible.module_utils.baton_wal import amend, reconcile, report_to_amend  # noqa: E402

try:
    import psycopg
except ImportError:  # said by the module, not a traceback
    psycopg = None

STAMP = re.compile(r"\d{8}T\d{6}Z")
CATALOG_QUERY = (
    "SELECT pg_relation_filenode(c.oid)::text, n.nspname, c.relname, o.relname, onsp.nspname"
    " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
    " LEFT JOIN pg_class o ON o.reltoastrelid = c.oid"
    " LEFT JOIN pg_namespace onsp ON onsp.oid = o.relnamespace"
    " WHERE pg_relation_filenode(c.oid) = ANY(%s::oid[])")


def relations_of(nodes: list[dict]) -> set[str]:
    return {rel for n in nodes if n.get("status") == "diverged"
            for entry in n["count"]["relation_sets"] for rel in entry["relations"]}


def table_names(relations: set[str], p: dict) -> tuple[dict[str, str], str | None]:
    """'tablespace/database/relfilenode' -> 'database.schema.table' (a TOAST table as its
    owner, a system catalog as the database's catalog), read on the first holder node that
    answers; the error when none does."""
    by_db: dict[int, set[int]] = {}
    names: dict[str, str] = {}
    for rel in relations:
        _spc, db, node = rel.split("/")
        if db == "0":
            names[rel] = "(shared catalogs: roles, databases)"
        else:
            by_db.setdefault(int(db), set()).add(int(node))
    if not by_db:
        return names, None
    error = None
    for host in p["hosts"]:
        def connect(dbname: str, host: str = host):
            return psycopg.connect(host=host, port=p["port"], user=p["user"],
                                   password=p["password"], dbname=dbname, autocommit=True,
                                   connect_timeout=max(2, round(p["timeout"])))
        try:
            with connect("postgres") as conn:
                databases = dict(conn.execute("SELECT oid::int, datname FROM pg_database "
                                              "WHERE oid = ANY(%s::oid[])",
                                              (sorted(by_db),)).fetchall())
            for db, filenodes in by_db.items():
                if db not in databases:
                    continue
                with connect(databases[db]) as conn:
                    for filenode, nsp, rel, owner, owner_nsp in conn.execute(
                            CATALOG_QUERY, (sorted(filenodes),)).fetchall():
                        keys = [r for r in relations if r.endswith(f"/{db}/{filenode}")]
                        if owner:
                            name = f"{databases[db]}.{owner_nsp}.{owner}"
                        elif nsp == "pg_catalog":
                            name = f"{databases[db]}: (system catalogs - DDL, ANALYZE)"
                        else:
                            name = f"{databases[db]}.{nsp}.{rel}"
                        names.update(dict.fromkeys(keys, name))
            return names, None
        except psycopg.Error as exc:
            error = f"{host}:{p['port']}: {str(exc).strip().splitlines()[0] if str(exc) else exc}"
    return names, error


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "region": {"type": "str", "required": True},
            "holder": {"type": "str", "required": True},
            "nodes": {"type": "list", "elements": "dict", "required": True},
            "hosts": {"type": "list", "elements": "str", "required": True},
            "port": {"type": "int", "default": 5432},
            "user": {"type": "str", "default": "baton_monitor"},
            "password": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "float", "default": 5.0},
            "report_dir": {"type": "path", "required": True},
        },
        supports_check_mode=True,
    )
    if psycopg is None:
        module.fail_json(msg=missing_required_lib("psycopg") + ": install requirements.txt "
                         "into the controller's venv")
    p = module.params
    nodes = [n for n in p["nodes"] if isinstance(n, dict) and n.get("status")]
    names, error = table_names(relations_of(nodes), p)
    reconciliation = reconcile(p["region"], p["holder"], nodes, names, time.time())
    if error:
        reconciliation["problems"].append(f"table names not read on {p['holder']} ({error})")
    amended = []
    if reconciliation["status"] in ("counted", "nothing"):
        reports = []
        for path in glob.glob(os.path.join(p["report_dir"], "failover-*.json")):
            stamp = STAMP.search(os.path.basename(path))
            if path.endswith("-latest.json") or not stamp:
                continue
            try:
                with open(path) as handle:
                    reports.append((f"{stamp.group(0)} {path}", json.load(handle)))
            except (OSError, ValueError):
                continue
        chosen = report_to_amend(sorted(reports), p["region"], reconciliation["fork_timeline"])
        if chosen:
            path = chosen.split(" ", 1)[1]
            report = dict(reports)[chosen]
            amended.append({"path": path, "report": amend(report, reconciliation)})
            latest = os.path.join(p["report_dir"], "failover-latest.json")
            try:
                with open(latest) as handle:
                    current = json.load(handle)
            except (OSError, ValueError):
                current = None
            if current and current.get("run_id") and current.get("run_id") == report.get("run_id"):
                amended.append({"path": latest, "report": amend(current, reconciliation)})
    module.exit_json(changed=False, reconciliation=reconciliation, amended=amended)


if __name__ == "__main__":
    main()

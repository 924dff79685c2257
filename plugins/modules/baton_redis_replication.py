#!/usr/bin/python
"""Ansible module: make Redis servers masters or replicas of a given master, at run time."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_redis_replication
short_description: Promote a Redis server or chain it to a master, and set its replica priority
description:
  - Runs on the controller (redis-py). For each server of O(servers), reads C(ROLE) and
    C(CONFIG GET replica-priority) first, then sends only what is missing - C(REPLICAOF NO ONE),
    C(REPLICAOF host port), C(CONFIG SET replica-priority) - and C(CONFIG REWRITE) so a restart
    keeps it. A re-run changes nothing.
  - Servers are handled in the order given, so put the new master first.
  - A server marked C(optional) that does not answer (a region that is down or cut off) is
    skipped and listed in RV(skipped); any other that does not answer fails the task.
  - Check mode support.
options:
  servers:
    description:
      - Each C({address, port, replicaof, priority, optional}); C(replicaof) is C(host:port)
        of the master to follow, or empty for a master; C(priority) is the
        C(replica-priority) (0 means Sentinel never promotes it).
    type: list
    elements: dict
    required: true
  password:
    description: Redis's C(requirepass) (also its C(masterauth)).
    type: str
    required: true
  timeout:
    description: Seconds each command may take.
    type: float
    default: 3
author: Baton
"""

EXAMPLES = r"""
- name: us-west's first node takes writes, the other regions follow it
  baton_redis_replication:
    servers:
      - {address: 10.231.2.11, replicaof: "", priority: 100}
      - {address: 10.231.3.11, replicaof: "10.231.2.11:6379", priority: 0}
      - {address: 10.231.1.11, replicaof: "10.231.2.11:6379", priority: 0, optional: true}
    password: "{{ redis_password }}"
  delegate_to: localhost
"""

RETURN = r"""
servers:
  description: Per server address, its role before and after and the commands sent.
  returned: always
  type: dict
  sample: {"10.231.2.11:6379": {before: "replica of 10.231.1.11:6379", after: master,
           commands: [REPLICAOF NO ONE, CONFIG SET replica-priority 100, CONFIG REWRITE]}}
skipped:
  description: Optional servers that did not answer.
  returned: always
  type: list
  elements: str
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_redis import (  # noqa: E402
    RedisProblem,
    client,
    parse_role,
    plan_server,
)


def describe(role: dict) -> str:
    return "master" if role["role"] == "master" else f"replica of {role['master']}"


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "servers": {"type": "list", "elements": "dict", "required": True},
            "password": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "float", "default": 3.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    out, skipped, changed = {}, [], False
    for entry in p["servers"]:
        if not entry.get("address"):
            module.fail_json(msg=f"servers: {entry} has no address: give each server "
                                 "{address, port, replicaof, priority}")
        address = f"{entry['address']}:{entry.get('port') or 6379}"
        want_master = str(entry.get("replicaof") or "")
        want_priority = entry.get("priority")
        try:
            redis = client(str(entry["address"]), int(entry.get("port") or 6379), p["password"],
                           p["timeout"], once=True)
            role = parse_role(redis.execute_command("ROLE"))
            priority = redis.config_get("replica-priority").get("replica-priority")
        except RedisProblem as exc:
            module.fail_json(msg=str(exc))
        except Exception as exc:
            if str(entry.get("optional", False)).lower() in ("true", "yes", "1"):
                skipped.append(address)
                continue
            module.fail_json(msg=f"Redis at {address} did not answer ({type(exc).__name__}: "
                                 f"{exc}): check that it runs and redis_password, then re-run",
                             servers=out, skipped=skipped)
        commands = plan_server(role, priority, want_master, want_priority)
        out[address] = {"before": describe(role), "commands": [" ".join(c) for c in commands]}
        if commands and not module.check_mode:
            for command in commands:
                try:
                    redis.execute_command(*command)
                except Exception as exc:
                    module.fail_json(msg=f"Redis at {address} refused '{' '.join(command)}' "
                                         f"({exc}): re-run once fixed", servers=out,
                                     skipped=skipped)
            role = parse_role(redis.execute_command("ROLE"))
        out[address]["after"] = (("master" if not want_master else f"replica of {want_master}")
                                 if module.check_mode else describe(role))
        changed = changed or bool(commands)
    module.exit_json(changed=changed, servers=out, skipped=skipped)


if __name__ == "__main__":
    main()

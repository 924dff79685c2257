#!/usr/bin/python
"""Ansible module: which region's Redis takes writes, from the live servers."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_redis_region
short_description: Find the region whose Redis takes writes, from the live servers
description:
  - Asks every Redis server of every region for its C(ROLE), all in parallel, and decides which
    region's Redis takes writes, so that a re-run of C(site.yml) keeps the live master (after a
    Sentinel failover, or a promotion) instead of the inventory's first choice.
  - The writable region is the one with a server that reports itself master. When no server
    reports master (a first deploy, or the region's servers are all down) it is
    O(database_primary), PostgreSQL's primary region.
  - Fails, changing nothing, when a server refuses the password, when masters exist in two
    regions, or when Redis takes writes in another region than PostgreSQL.
  - Read-only; runs on the controller (redis-py); full check mode support.
options:
  regions:
    description: Region name to the addresses of its Redis servers.
    type: dict
    required: true
  database_primary:
    description: PostgreSQL's primary region (from M(baton_primary_region)).
    type: str
    required: true
  port:
    description: Redis port.
    type: int
    default: 6379
  password:
    description: The servers' password (C(requirepass)).
    type: str
    required: true
  timeout:
    description: Seconds to wait for each server.
    type: float
    default: 2
requirements: [redis (redis-py)]
extends_documentation_fragment: [baton_redis_tls]
author: Baton
"""

EXAMPLES = r"""
- name: Find the region whose Redis takes writes
  baton_redis_region:
    regions:
      us-east: [10.231.1.11, 10.231.1.12, 10.231.1.13]
      us-west: [10.231.2.11, 10.231.2.12, 10.231.2.13]
    database_primary: us-east
    password: "{{ redis_password }}"
    tls_ca_file: "{{ baton_pki_dir }}/ca.crt"
  register: __redis_region
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
writable_region:
  description: The region whose Redis takes writes.
  returned: success
  type: str
  sample: us-east
reason:
  description: Why that region, in one sentence.
  returned: always
  type: str
first_deploy:
  description: True when no Redis server answered anywhere.
  returned: success
  type: bool
masters:
  description: Region to host:port of the server that reports itself master (null for none).
  returned: success
  type: dict
  sample: {us-east: "10.231.1.12:6379", us-west: null}
regions:
  description: Per region, what each server said (role, its master, link, offset, error).
  returned: always
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_redis import (  # noqa: E402
    RedisProblem,
    decide_writable_region,
    read_regions,
    region_master,
    use_tls,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "regions": {"type": "dict", "required": True},
            "database_primary": {"type": "str", "required": True},
            "port": {"type": "int", "default": 6379},
            "password": {"type": "str", "required": True, "no_log": True},
            "timeout": {"type": "float", "default": 2.0},
            "tls_ca_file": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    params = module.params
    use_tls(params["tls_ca_file"])
    regions = {str(r): [str(a) for a in addrs] for r, addrs in params["regions"].items()}
    try:
        states = read_regions(regions, params["port"], params["password"], params["timeout"])
        region, reason = decide_writable_region(states, params["database_primary"])
    except RedisProblem as exc:
        module.fail_json(msg=str(exc), reason=str(exc))
    first = not any(n["answered"] for nodes in states.values() for n in nodes)
    module.exit_json(changed=False, writable_region=region, reason=reason, first_deploy=first,
                     masters={r: region_master(n) for r, n in states.items()}, regions=states)


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: which region holds the writable PostgreSQL primary, from the live clusters."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_primary_region
short_description: Find the region that holds the writable primary, from the live Patroni clusters
description:
  - Reads C(GET /cluster) from the Patroni REST API of every region in parallel (the first
    member of a region that answers speaks for it) and decides which region holds the writable
    primary, so that a re-run of C(site.yml) keeps the live primary instead of the region the
    inventory named first.
  - When no Patroni cluster exists anywhere (a first deploy), the answer is O(initial_primary).
  - Fails, changing nothing, when two regions have a writable leader (split brain), or when
    clusters exist but none is writable.
  - Read-only; runs on the controller; full check mode support.
options:
  regions:
    description: Region name to the REST API addresses of its Patroni members.
    type: dict
    required: true
  initial_primary:
    description: The region to use when no cluster exists yet.
    type: str
    required: true
  port:
    description: Patroni REST API port.
    type: int
    default: 8008
  timeout:
    description: Seconds to wait for each member.
    type: float
    default: 3
extends_documentation_fragment: [baton_patroni_rest]
author: Baton
"""

EXAMPLES = r"""
- name: Find the live primary region
  baton_primary_region:
    regions:
      us-east: [10.231.1.11]
      us-west: [10.231.2.11]
    initial_primary: us-east
  register: __primary
  delegate_to: localhost
  run_once: true
"""

RETURN = r"""
primary_region:
  description: The region that holds the writable primary.
  returned: success
  type: str
  sample: us-east
reason:
  description: Why that region, in one sentence.
  returned: always
  type: str
first_deploy:
  description: True when no Patroni cluster answered anywhere.
  returned: success
  type: bool
regions:
  description: Per region, whether its REST API answered, which address answered, and the
    role of each member.
  returned: always
  type: dict
  sample:
    us-east: {reachable: true, answered_by: 10.231.1.11, members: {us-east-1: leader},
              roles: [leader]}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_patroni import (  # noqa: E402
    PrimaryUndecided,
    decide_primary,
    read_regions,
    use_ca,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "regions": {"type": "dict", "required": True},
            "initial_primary": {"type": "str", "required": True},
            "port": {"type": "int", "default": 8008},
            "timeout": {"type": "float", "default": 3.0},
            "restapi_ca_file": {"type": "str", "default": ""},
        },
        supports_check_mode=True,
    )
    regions = {str(r): [str(a) for a in addrs] for r, addrs in module.params["regions"].items()}
    use_ca(module.params["restapi_ca_file"])
    states = read_regions(regions, module.params["port"], module.params["timeout"])
    try:
        primary, reason = decide_primary(states, module.params["initial_primary"])
    except PrimaryUndecided as exc:
        module.fail_json(msg=str(exc), regions=states, reason=str(exc))
    first = not any(s["members"] for s in states.values())
    module.exit_json(changed=False, primary_region=primary, reason=reason, first_deploy=first,
                     regions=states)


if __name__ == "__main__":
    main()

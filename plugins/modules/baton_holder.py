#!/usr/bin/python
"""Ansible module: who holds the baton on the global witness, and handing it over."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_holder
short_description: Read or move the baton (the region allowed to take writes) on the global witness
description:
  - Runs on the controller. The baton is the witness key C(/baton/holder) - the region and its
    epoch. Moving it is the commit point of a failover. It is a compare-and-swap (an etcd
    transaction on the key's revision), so two runs cannot both move it, and it bumps the
    epoch, which tells the fence agents of every other region to stop taking writes.
  - With O(wait_released), then waits until every liveness key of that region (the old
    primary) has gone from the witness, at most O(wait_timeout) seconds. Its fence agents see
    the new holder and fence their nodes before they release their leases; agents that are
    cut off fence themselves when they cannot renew, before their leases expire. Only then may
    the target be promoted. Keys still there at the end fail the task (re-run it to wait again).
  - C(state=read) only reads. A baton already held by O(region) is left as it is.
  - Check mode reads, and reports whether the baton would move (it does not wait).
options:
  endpoints:
    description: The witness's client endpoints, C(address:port).
    type: list
    elements: str
    required: true
  state:
    description:
      - C(present) gives the baton to O(region); C(read) only reads it.
      - C(initial) writes O(region) with epoch 1 only if the witness has no holder yet (the
        first deploy) and returns the holder it found in RV(before) otherwise.
    type: str
    choices: [present, read, initial]
    default: present
  region:
    description: The region that must hold the baton.
    type: str
  expect_region:
    description: The region that must hold it now for the move to happen (the old primary).
    type: str
  wait_released:
    description: A region whose liveness keys must have expired before the baton moves.
    type: str
  wait_timeout:
    description: Seconds to wait for O(wait_released) (the promotion wait, at least the lease TTL).
    type: float
    default: 15
  settle:
    description: With O(wait_released), seconds to wait after moving the baton before the
      liveness keys count, unless every key found was written by an agent that writes one only
      while the holder key is unchanged (Baton's agents; one of an older release could write a
      key just after the move, unseen). Two agent loops.
    type: float
    default: 2
  lock_run_id:
    description:
      - The run that must hold the failover lock (C(/baton/lock)) for the baton to move. The
        move is then one transaction that also compares the lock key's revision with the one
        read, so a run whose lock expired or was broken in between cannot move the baton.
      - Empty - no lock is required.
    type: str
    default: ""
  by:
    description: Who moves it (written into the key, e.g. the run's id).
    type: str
    default: ""
  timeout:
    description: Seconds each witness request may take.
    type: float
    default: 3
extends_documentation_fragment: [baton_witness_client]
author: Baton
"""

EXAMPLES = r"""
- name: Give the baton to us-west, then wait until us-east has fenced itself
  baton_holder:
    endpoints: [10.231.1.11:2391, 10.231.2.11:2391, 10.231.3.11:2391]
    region: us-west
    expect_region: us-east
    wait_released: us-east
    wait_timeout: 15
  delegate_to: localhost
"""

RETURN = r"""
before:
  description: The holder record before the task (null when the key does not exist).
  returned: always
  type: dict
  sample: {region: us-west, epoch: 2, since: "2026-11-27T23:00:00+00:00",
           by: failover-us-west-20261127T230000Z-4242, from: us-east}
after:
  description: The holder record after the task (or as it would be, in check mode).
  returned: always
  type: dict
alive:
  description: The liveness keys of O(wait_released) still present when the wait ended.
  returned: when O(wait_released) is given
  type: list
  elements: str
waited:
  description: Seconds spent waiting for O(wait_released) (after the move).
  returned: when O(wait_released) is given
  type: float
"""

import json  # noqa: E402
from datetime import UTC, datetime  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_witness import (  # noqa: E402
    CLIENT_SPEC,
    HOLDER,
    BatonStop,
    Witness,
    WitnessError,
    move_holder,
    wait_released,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "endpoints": {"type": "list", "elements": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "read", "initial"],
                      "default": "present"},
            "region": {"type": "str"},
            "expect_region": {"type": "str"},
            "wait_released": {"type": "str"},
            "wait_timeout": {"type": "float", "default": 15.0},
            "settle": {"type": "float", "default": 2.0},
            "by": {"type": "str", "default": ""},
            "lock_run_id": {"type": "str", "default": ""},
            "timeout": {"type": "float", "default": 3.0},
            "client": CLIENT_SPEC,
        },
        required_if=[("state", "present", ("region",)), ("state", "initial", ("region",))],
        supports_check_mode=True,
    )
    p = module.params
    witness = Witness(p["endpoints"], p["timeout"], client=p["client"])
    try:
        entry = witness.get(HOLDER)
        try:
            before = json.loads(entry.value) if entry else None
            int(before.get("epoch", 0)) if before else 0
        except (ValueError, TypeError, AttributeError):
            module.fail_json(msg=f"the witness's {HOLDER} holds '{entry.value}', not a baton "
                                 "record: restore it (etcdctl put, JSON with region and epoch) "
                                 "from the last report before moving the baton")
        result = {"changed": False, "before": before, "after": before}
        if p["state"] == "read":
            module.exit_json(**result)
        if p["state"] == "initial":
            if before is None:
                after = {"region": p["region"], "epoch": 1,
                         "since": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                         "by": p["by"]}
                created = module.check_mode or witness.create(
                    HOLDER, json.dumps(after, sort_keys=True))
                now = None if created else witness.get(HOLDER)
                result.update(changed=created, after=after if created else
                              (json.loads(now.value) if now else None))
            module.exit_json(**result)
        try:
            result = move_holder(witness, p["region"], expect_region=p["expect_region"],
                                 lock_run_id=p["lock_run_id"], by=p["by"],
                                 check_mode=module.check_mode)
            if p["wait_released"] and p["wait_released"] != p["region"]:
                result.update(wait_released(witness, p["wait_released"], p["region"],
                                            p["wait_timeout"], moved=result["changed"],
                                            check_mode=module.check_mode,
                                            settle_unless_marked=p["settle"]))
        except BatonStop as exc:
            module.fail_json(msg=str(exc), **{**result, **exc.result})
    except WitnessError as exc:
        module.fail_json(msg=f"the witness does not answer ({exc}): without a quorum of its "
                             "members the baton cannot move safely; check the witness members "
                             "(systemctl status baton-witness)")
    module.exit_json(**result)


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: the critical section of a move - demote, hand the baton over, promote."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_handover
short_description: Demote the old primary region, give the baton to the target, promote it
description:
  - Runs on the controller. The steps of a move during which no region may take writes (the
    application's queries are held by PgBouncer meanwhile), one after the other in one
    process, without a task's start-up between them.
  - With O(demote), the old region's cluster becomes a standby cluster of the target's
    read-write endpoints (as M(baton_cluster) C(state=standby)); its leader's final WAL
    position is kept.
  - The baton goes to O(target) on the witness (as M(baton_holder)), by a compare-and-swap that
    bumps the epoch, in the same transaction as "this run still holds the failover lock". Then
    it waits until every liveness key of O(old) has gone. Its fence agents saw the new holder
    and let go (their PostgreSQL is a standby, or they fenced it), or, cut off, fenced
    themselves before their leases expired.
  - The target's cluster becomes the primary cluster (as M(baton_cluster) C(state=primary));
    with O(kind=switchover) only once its standby leader has received the demoted leader's
    final position (zero data loss).
  - Each step reads before it acts, so a re-run finds the steps done and changes nothing; a
    step that fails stops the module, naming the step, and a re-run finishes the move.
  - In check mode it does nothing (the playbooks evaluate the plan before).
options:
  kind:
    description: A planned switchover (waits for the demoted leader's final position before
      the promotion) or a failover.
    type: str
    choices: [switchover, failover]
    required: true
  target:
    description: The region that takes the baton.
    type: str
    required: true
  target_members:
    description: Addresses of the target's Patroni members (its read-write endpoints too).
    type: list
    elements: str
    required: true
  old:
    description: The region that held the baton (empty when none did).
    type: str
    default: ""
  old_members:
    description: Addresses of the old region's Patroni members.
    type: list
    elements: str
    default: []
  demote:
    description: Demote the old region first (it answers, and the move is not done yet).
    type: bool
    default: false
  source_port:
    description: Port of the target's read-write endpoints the demoted region follows.
    type: int
    default: 5000
  slot:
    description: The permanent slot on the target the demoted region streams through.
    type: str
    default: ""
  replica_methods:
    description: How Patroni creates the demoted region's standby leader when it has none (as
      M(baton_cluster)'s O(replica_methods)).
    type: list
    elements: str
    default: [basebackup]
  restapi_username:
    description: Patroni REST API user (for PATCH).
    type: str
    default: patroni
  restapi_password:
    description: Its password.
    type: str
    required: true
  port:
    description: Patroni's REST API port.
    type: int
    default: 8008
  timeout:
    description: Seconds each REST or witness request may take.
    type: float
    default: 3
  wait_timeout:
    description: Seconds to wait for each cluster's outcome.
    type: float
    default: 120
  endpoints:
    description: The witness's client endpoints, C(address:port).
    type: list
    elements: str
    required: true
  promotion_wait:
    description: Seconds to wait for the old region's liveness keys to go (at least the lease
      TTL).
    type: float
    default: 15
  lock_run_id:
    description: The run that must hold the failover lock for the baton to move, and still
      hold it before the promotion and after it (else the module stops there).
    type: str
    required: true
  settle:
    description: Seconds to wait after the move before the old region's liveness keys count,
      unless every key found was written by an agent that writes one only while the holder key
      is unchanged (an agent of an older release could write one just after the move). Two
      agent loops.
    type: float
    default: 2
  by:
    description: Who moves the baton (recorded in the holder key).
    type: str
    default: ""
extends_documentation_fragment: [baton_patroni_rest, baton_witness_client]
author: Baton
"""

EXAMPLES = r"""
- name: Demote us-east, hand the baton to us-west, promote us-west
  baton_handover:
    kind: switchover
    target: us-west
    target_members: [10.231.2.11, 10.231.2.12, 10.231.2.13]
    old: us-east
    old_members: [10.231.1.11, 10.231.1.12, 10.231.1.13]
    demote: true
    slot: baton_us_east
    restapi_password: "{{ patroni_restapi_password }}"
    restapi_ca_file: "{{ baton_pki_dir }}/ca.crt"
    endpoints: [10.231.2.11:2391, 10.231.1.11:2391, 10.231.3.11:2391]
    client: "{{ witness_controller_client }}"
    lock_run_id: "{{ run_id }}"
  delegate_to: localhost
"""

RETURN = r"""
demote:
  description: The old region's demotion, as M(baton_cluster) returns it (C(leader_position)
    is the demoted leader's final position); C(changed) false and nothing else when there was
    none.
  returned: always
  type: dict
moved:
  description: The baton's move, as M(baton_holder) returns it (C(before), C(after) with the
    new epoch, C(alive), C(waited)).
  returned: always
  type: dict
promote:
  description: The target's promotion, as M(baton_cluster) returns it (C(position_before) is
    what the promoted leader had received).
  returned: always
  type: dict
marks:
  description: Unix times at which the old region was known fenced (the baton moved) and the
    target took writes.
  returned: always
  type: dict
"""

import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_patroni import (  # noqa: E402
    ClusterStop,
    converge_cluster,
    use_ca,
)
from ansible.module_utils.baton_witness import (  # noqa: E402
    CLIENT_SPEC,
    BatonStop,
    Witness,
    WitnessError,
    lock_still_held,
    move_holder,
    wait_released,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "kind": {"type": "str", "choices": ["switchover", "failover"], "required": True},
            "target": {"type": "str", "required": True},
            "target_members": {"type": "list", "elements": "str", "required": True},
            "old": {"type": "str", "default": ""},
            "old_members": {"type": "list", "elements": "str", "default": []},
            "demote": {"type": "bool", "default": False},
            "source_port": {"type": "int", "default": 5000},
            "slot": {"type": "str", "default": ""},
            "replica_methods": {"type": "list", "elements": "str", "default": ["basebackup"]},
            "restapi_username": {"type": "str", "default": "patroni"},
            "restapi_password": {"type": "str", "required": True, "no_log": True},
            "restapi_ca_file": {"type": "str", "default": ""},
            "port": {"type": "int", "default": 8008},
            "timeout": {"type": "float", "default": 3.0},
            "wait_timeout": {"type": "float", "default": 120.0},
            "endpoints": {"type": "list", "elements": "str", "required": True},
            "client": CLIENT_SPEC,
            "promotion_wait": {"type": "float", "default": 15.0},
            "lock_run_id": {"type": "str", "required": True},
            "settle": {"type": "float", "default": 2.0},
            "by": {"type": "str", "default": ""},
        },
        required_if=[("demote", True, ("old", "old_members", "slot"))],
        supports_check_mode=True,
    )
    p = module.params
    result: dict = {"changed": False, "demote": {"changed": False}, "moved": {"changed": False},
                    "promote": {"changed": False}, "marks": {}}
    if module.check_mode:
        module.exit_json(**result)
    use_ca(p["restapi_ca_file"])
    auth = (p["restapi_username"], p["restapi_password"])
    common = {"port": p["port"], "timeout": p["timeout"], "auth": auth,
              "wait_timeout": p["wait_timeout"]}
    step = "demote"
    try:
        if p["demote"]:
            result["demote"] = converge_cluster(
                p["old"], p["old_members"], "standby", source_hosts=p["target_members"],
                source_port=p["source_port"], slot=p["slot"],
                replica_methods=p["replica_methods"], **common)
        step = "baton"
        witness = Witness(p["endpoints"], p["timeout"], client=p["client"])
        result["moved"] = move_holder(witness, p["target"], expect_region=p["old"] or None,
                                      lock_run_id=p["lock_run_id"], by=p["by"])
        if p["old"] and p["old"] != p["target"]:
            result["moved"].update(wait_released(
                witness, p["old"], p["target"], p["promotion_wait"],
                moved=result["moved"]["changed"], settle_unless_marked=p["settle"]))
        result["marks"]["old region fenced, baton moved"] = time.time()
        step = "promote"
        # The wait above may be long: a run that lost its lock meanwhile promotes nothing.
        lock_still_held(witness, p["lock_run_id"], f"promotes {p['target']}")
        final = result["demote"].get("leader_position") if p["kind"] == "switchover" else None
        result["promote"] = converge_cluster(p["target"], p["target_members"], "primary",
                                             wait_for_lsn=final or None, **common)
        result["marks"]["target promoted"] = time.time()
        # And none repoints the PgBouncers (the next play) after losing it.
        lock_still_held(witness, p["lock_run_id"], "points the PgBouncers at "
                        f"{p['target']}")
    except (ClusterStop, BatonStop) as exc:
        result[{"demote": "demote", "baton": "moved", "promote": "promote"}[step]].update(
            exc.result)
        # A step that stopped half-way may have sent its change: counted as changed.
        result["changed"] = any(result[k].get("changed") for k in ("demote", "moved", "promote"))
        module.fail_json(msg=f"{step}: {exc}", **result)
    except WitnessError as exc:
        result["changed"] = any(result[k].get("changed") for k in ("demote", "moved", "promote"))
        module.fail_json(msg=f"{step}: the witness does not answer ({exc}): without a quorum of "
                             "its members the move cannot go on safely; check the witness "
                             "members (systemctl status baton-witness), then re-run (it goes on "
                             "from where this one stopped)", **result)
    result["changed"] = any(result[k].get("changed") for k in ("demote", "moved", "promote"))
    module.exit_json(**result)


if __name__ == "__main__":
    main()

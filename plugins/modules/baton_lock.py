#!/usr/bin/python
"""Ansible module: the failover lock on the global witness."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_lock
short_description: Take or release the failover lock on the global witness (etcd)
description:
  - Runs on the controller. One failover, switchover or failback at a time. The lock is a key
    on the witness, created only if absent (an etcd transaction), attached to a lease of
    O(ttl) seconds so that a lock whose run died on another machine expires by itself.
  - A second run is refused at once, and the message names the run that holds the lock (kind,
    target, user and host, start time).
  - A lock left by a run on this controller that is no longer alive (Ctrl-C, a crash, its
    ansible-playbook process is gone) is taken over, so re-running a killed run finishes it.
    O(break_lock) takes any lock over (when you know its run is dead).
  - The lock is a fencing token that lives as long as its run. Once taken, a keeper process
    (detached, on the controller) renews its lease every third of O(ttl) while the run's
    ansible-playbook process lives and the lock is still this run's. A run that dies loses it
    within O(ttl); a run that stalls longer than O(ttl) (a suspended controller, cut off from the
    witness) loses it too.
  - C(state=held) checks that this run still holds the lock and fails, naming the run that
    holds it now, when it does not. The playbooks check it before every step that moves
    something, so a run whose lock was broken or expired stops instead of racing the run that
    took over.
  - C(state=absent) releases the lock only if this run holds it.
  - Check mode evaluates the lock for real (a held lock fails the task) and takes nothing.
options:
  endpoints:
    description: The witness's client endpoints, C(address:port).
    type: list
    elements: str
    required: true
  state:
    description: Take (C(present)), check (C(held)) or release (C(absent)) the lock.
    type: str
    choices: [present, held, absent]
    default: present
  run_id:
    description: This run's identity (one per ansible-playbook run).
    type: str
    required: true
  kind:
    description: What the run does.
    type: str
    choices: [failover, switchover, failback, restore]
    default: failover
  target:
    description: The region the run moves the baton to (or reprotects).
    type: str
    default: ""
  ttl:
    description: >-
      Seconds the lock lives after its run died or stalled (its keeper renews it every third
      of that while the run lives).
    type: int
    default: 30
  break_lock:
    description: Take the lock even from a live run or another host.
    type: bool
    default: false
  timeout:
    description: Seconds each witness request may take.
    type: float
    default: 3
extends_documentation_fragment: [baton_witness_client]
author: Baton
"""

EXAMPLES = r"""
- name: Take the failover lock
  baton_lock:
    endpoints: [10.231.1.11:2391, 10.231.2.11:2391, 10.231.3.11:2391]
    run_id: "{{ baton_run_id }}"
    kind: failover
    target: us-west
  delegate_to: localhost
"""

RETURN = r"""
decision:
  description: C(acquire), C(already_mine), C(take_over), C(refuse) or C(release) / C(not_mine).
  returned: always
  type: str
message:
  description: Why, in one sentence.
  returned: always
  type: str
holder:
  description: The lock record after the task (or the one that refused us).
  returned: always
  type: dict
baton:
  description: Who holds the baton (the witness's holder record, C(region) and C(epoch) among
    its keys; null when there is none yet), read once the lock is this run's, so that a run
    need not ask again (nobody moves the baton without the lock).
  returned: when O(state=present) and the lock is this run's
  type: dict
  sample: {region: us-east, epoch: 3}
dns_primary:
  description: The witness's record of the failover zone's primary name server when a failover
    moved it away from the global site (see baton_dns_primary); a dict with the key C(malformed)
    when the key holds something else; null when there is none (the primary is at home). Read with
    RV(baton), so that a re-run can tell that DNS needs nothing.
  returned: when O(state=present), the lock is this run's (or check mode) and the witness names
    O(target) as the holder
  type: dict
"""

import getpass  # noqa: E402
import inspect  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from datetime import UTC, datetime  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_witness import (  # noqa: E402
    CLIENT_SPEC,
    DNS_PRIMARY,
    HOLDER,
    LOCK,
    Witness,
    WitnessError,
    decode_record,
    lock_decision,
    parse_holder,
    proc_stat,
    process_alive,
)


def read_baton(module: AnsibleModule, witness: Witness) -> dict[str, Any] | None:
    """The baton's holder record; fails the task, in one sentence, when it is not one."""
    entry = witness.get(HOLDER)
    try:
        return parse_holder(entry.value if entry else None)
    except ValueError as exc:
        module.fail_json(msg=f"{exc}: restore it (etcdctl put, JSON with region and epoch) from "
                             "the last report before moving the baton")
    return None


def read_dns_primary(witness: Witness) -> dict[str, Any] | None:
    """The record of the zone's primary name server when it is away from home, else None."""
    entry = witness.get(DNS_PRIMARY)
    if entry is None:
        return None
    record = decode_record(entry.value)
    return record if isinstance(record, dict) else {"malformed": entry.value}


def baton_and_dns(module: AnsibleModule, witness: Witness, target: str | None) -> dict[str, Any]:
    """{"baton": the holder record} and, when it names `target` (a re-run), {"dns_primary": its
    record or None}; left out otherwise, which a re-run's DNS check takes as unknown."""
    found: dict[str, Any] = {"baton": read_baton(module, witness)}
    if target and (found["baton"] or {}).get("region") == target:
        found["dns_primary"] = read_dns_primary(witness)
    return found


def _stat(pid: int) -> tuple[int, str, int] | None:
    """(parent pid, command line, start time in clock ticks) of a process, None if gone."""
    stat = proc_stat(pid)
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            cmdline = handle.read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return None
    return None if stat is None else (stat[0], cmdline, stat[1])


def playbook_process() -> tuple[int, int]:
    """(pid, start time) of the ansible-playbook process this module runs under: the highest
    ancestor whose command line names ansible-playbook (or this process when none does)."""
    found = (os.getpid(), (_stat(os.getpid()) or (0, "", 0))[2])
    pid = os.getppid()
    while pid > 1:
        info = _stat(pid)
        if info is None:
            break
        parent, cmdline, start = info
        if "ansible-playbook" in cmdline:
            found = (pid, start)
        pid = parent
    return found


def start_keeper(endpoints: list[str], lease: int, run_id: str, pid: int, pid_start: int,
                 ttl: int, timeout: float, client: dict[str, Any]) -> None:
    """Starts the detached process that keeps the lock's lease alive (baton_witness.keep_lock)
    from the source of baton_witness itself: nothing of this module's temporary files is
    needed once it runs. Its arguments (the witness login among them) go through a pipe, not
    its command line, which every user of the controller can read."""
    source = inspect.getsource(sys.modules[lock_decision.__module__])
    code = (source + "\n\nimport sys as _sys\nkeep_lock_main(json.loads(_sys.stdin.readline()))\n")
    args = {"endpoints": endpoints, "lease": lease, "run_id": run_id, "pid": pid,
            "pid_start": pid_start, "interval": max(1.0, ttl / 3), "timeout": timeout,
            "client": client}
    # Its command line names the run and the playbook's process (nothing secret), so that
    # `ps` tells whose keeper it is.
    label = f"baton-lock-keeper run={run_id} playbook-pid={pid}"
    keeper = subprocess.Popen([sys.executable, "-c", code, label], start_new_session=True,
                              stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, close_fds=True)
    assert keeper.stdin is not None
    keeper.stdin.write((json.dumps(args) + "\n").encode())
    keeper.stdin.close()


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "endpoints": {"type": "list", "elements": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "held", "absent"],
                      "default": "present"},
            "run_id": {"type": "str", "required": True},
            "kind": {"type": "str", "choices": ["failover", "switchover", "failback", "restore"],
                     "default": "failover"},
            "target": {"type": "str", "default": ""},
            "ttl": {"type": "int", "default": 30},
            "break_lock": {"type": "bool", "default": False},
            "timeout": {"type": "float", "default": 3.0},
            "client": CLIENT_SPEC,
        },
        supports_check_mode=True,
    )
    p = module.params
    witness = Witness(p["endpoints"], p["timeout"], client=p["client"])
    try:
        entry = witness.get(LOCK)
        try:
            existing = json.loads(entry.value) if entry else None
            dict(existing or {})
        except (ValueError, TypeError):
            if p["break_lock"]:
                existing = {"run_id": "(unreadable record)"}
            else:
                module.fail_json(msg=f"the witness's {LOCK} holds '{entry.value}', not a lock "
                                     "record: if no run is moving the baton, re-run with -e "
                                     "break_lock=true")
        if p["state"] == "held":
            if existing is not None and existing.get("run_id") == p["run_id"]:
                module.exit_json(changed=False, decision="held",
                                 message="this run holds the lock", holder=existing)
            taken = (f"taken by {existing.get('kind')} to {existing.get('target')} of "
                     f"{existing.get('user')}@{existing.get('host')} "
                     f"(run {existing.get('run_id')}, since {existing.get('started')})"
                     if existing else "gone (expired)")
            module.fail_json(msg=f"this run's failover lock is {taken}: the run stops here, "
                                 "before its next step, so as not to race another run; see what "
                                 "that run did (its report, health.yml), then re-run",
                             decision="lost", holder=existing or {})
        if p["state"] == "absent":
            mine = existing is not None and existing.get("run_id") == p["run_id"]
            if mine and not module.check_mode:
                witness.delete(LOCK, expect_mod_revision=entry.mod_revision)
            module.exit_json(changed=mine, decision="release" if mine else "not_mine",
                             message="released" if mine else "this run does not hold the lock",
                             holder=existing if not mine else {})
        pid, start = playbook_process()
        me = {"run_id": p["run_id"], "target": p["target"], "kind": p["kind"],
              "user": getpass.getuser(), "host": socket.gethostname(), "pid": pid,
              "pid_start": start, "started": datetime.now(UTC).isoformat()}
        decision, message = lock_decision(existing, me, time.time(), process_alive,
                                          socket.gethostname())
        if decision == "refuse" and p["break_lock"]:
            decision, message = "take_over", f"break_lock: {message}"
        if decision == "refuse":
            module.fail_json(msg=message, decision=decision, holder=existing)
        if decision == "already_mine" or module.check_mode:
            module.exit_json(changed=decision != "already_mine", decision=decision,
                             message=message, holder=existing if existing else me,
                             **baton_and_dns(module, witness, p["target"]))
        # No ansible-playbook above this module (run some other way): nothing the keeper could
        # watch, so no keeper and the lease of old, an hour.
        kept = pid != os.getpid()
        lease = witness.grant(p["ttl"] if kept else max(p["ttl"], 3600))
        if entry is None:
            won = witness.create(LOCK, json.dumps(me), lease=lease)
        else:
            won = witness.swap(LOCK, json.dumps(me), entry.mod_revision, lease=lease)
        if won and kept:
            start_keeper(p["endpoints"], lease, p["run_id"], pid, start, p["ttl"], p["timeout"],
                         p["client"])
        if not won:
            witness.revoke(lease)
            now = witness.get(LOCK)
            module.fail_json(msg="another run took the failover lock at the same moment: "
                                 f"{now.value if now else 'it is gone again'}; re-run to see "
                                 "who holds it", decision="refuse")
    except WitnessError as exc:
        module.fail_json(msg=f"the witness does not answer ({exc}): the failover lock cannot be "
                             "taken; check the witness members (systemctl status baton-witness) "
                             "or run site.yml to deploy it")
    try:
        found = baton_and_dns(module, witness, p["target"])
    except WitnessError as exc:
        module.fail_json(msg=f"the witness does not answer ({exc}) right after this run took the "
                             "failover lock: check the witness members, then re-run")
    module.exit_json(changed=True, decision=decision, message=message, holder=me, **found)


if __name__ == "__main__":
    main()

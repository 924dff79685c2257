#!/usr/bin/python
"""Ansible module: one Sentinel's monitor of a Redis master, managed at run time."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_sentinel_monitor
short_description: Make a Redis Sentinel watch (or stop watching) a master, at run time
description:
  - Sentinel owns its configuration file once it runs, and rewrites it with what it learns
    (replicas, other Sentinels, failovers, epochs). This module therefore never touches the
    file. It reads C(SENTINEL MASTERS) first and sends only the C(SENTINEL MONITOR),
    C(SENTINEL SET) or C(SENTINEL REMOVE) commands that are missing, so a re-run never
    restarts Sentinel, never wipes what it learned and never undoes a failover.
  - The master's address is used only to add a missing monitor. An existing monitor keeps the
    address Sentinel tracks (after a failover, the promoted replica), and is not moved.
  - Before adding a monitor it checks that the address reports itself master (C(ROLE)), since
    Sentinel would mark a replica down and fail it over.
  - Full check mode and diff mode support.
options:
  name:
    description: The master's name that clients ask Sentinel for.
    type: str
    required: true
  state:
    description: C(present) watches the master, C(absent) forgets it.
    type: str
    choices: [present, absent]
    default: present
  master_host:
    description: Address of the master, to add a missing monitor. Required with C(present).
    type: str
  master_port:
    description: Port of the master.
    type: int
    default: 6379
  auth_pass:
    description: Password Sentinel uses with the master and its replicas. Set when the monitor
      is added (C(SENTINEL MASTERS) never shows it, so it cannot be compared later).
    type: str
  auth_user:
    description: The Redis ACL user Sentinel logs in as with the master and its replicas (its
      C(auth-user)), set with a new monitor as O(auth_pass) is; empty - the default user.
    type: str
    default: ""
  redis_password:
    description: The default user's password of the master (Baton's own), with which the
      module checks that the master is one before it is watched; O(auth_pass) when not given.
    type: str
  quorum:
    description: Sentinels that must agree that the master is down. Required with C(present).
    type: int
  down_after_milliseconds:
    description: Milliseconds without a valid reply before this Sentinel thinks the master is
      down. Left as is when omitted.
    type: int
  failover_timeout:
    description: Failover timeout in milliseconds. Left as is when omitted.
    type: int
  parallel_syncs:
    description: Replicas reconfigured at once after a failover. Left as is when omitted.
    type: int
  sentinel_host:
    description: Address of the Sentinel to manage.
    type: str
    default: 127.0.0.1
  sentinel_hosts:
    description: Several Sentinels (C(address) or C(address:port)) to bring to the same state
      at once, in parallel, instead of O(sentinel_host). Their results are in RV(sentinels);
      one that fails fails the task, naming it, after the others were done.
    type: list
    elements: str
  sentinel_port:
    description: Port of the Sentinel.
    type: int
    default: 26379
  sentinel_password:
    description: The Sentinel's own password (its C(requirepass)), if any.
    type: str
  timeout:
    description: Seconds to wait for Sentinel and the master.
    type: float
    default: 3
requirements: [redis (redis-py; Debian's python3-redis)]
extends_documentation_fragment: [baton_redis_tls]
author: Baton
"""

EXAMPLES = r"""
- name: Watch the region's master
  baton_sentinel_monitor:
    name: baton
    master_host: 10.231.1.11
    quorum: 2
    down_after_milliseconds: 5000
    auth_pass: "{{ redis_password }}"
    sentinel_password: "{{ redis_sentinel_password }}"
    tls_ca_file: /etc/ssl/baton/ca.crt

- name: A standby region's Sentinel stays idle
  baton_sentinel_monitor:
    name: baton
    state: absent
    sentinel_password: "{{ redis_sentinel_password }}"
    tls_ca_file: /etc/ssl/baton/ca.crt
"""

RETURN = r"""
monitor:
  description: The monitor as SENTINEL MASTERS reports it after the run (null when absent).
  returned: without O(sentinel_hosts)
  type: dict
  sample: {name: baton, ip: 10.231.1.11, port: "6379", quorum: "2", flags: master}
sentinels:
  description: With O(sentinel_hosts), per Sentinel C(address:port) its C(changed),
    C(commands), C(monitor) (and C(failed), C(msg) when it failed).
  returned: with O(sentinel_hosts)
  type: dict
commands:
  description: The Sentinel commands sent (or, in check mode, that would be sent); passwords
    are shown as ********.
  returned: without O(sentinel_hosts)
  type: list
  elements: str
"""

from concurrent.futures import ThreadPoolExecutor  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_redis import (  # noqa: E402
    MONITOR_SETTINGS,
    RedisProblem,
    client,
    masters_by_name,
    monitor_commands,
    node_state,
    use_tls,
)

SHOWN = ("name", "ip", "port", "flags", "num-slaves", "num-other-sentinels", "config-epoch",
         *MONITOR_SETTINGS.values())


def shown(monitor: dict | None) -> dict | None:
    return None if monitor is None else {k: monitor.get(k) for k in SHOWN if k in monitor}


class Refused(Exception):
    """One Sentinel's failure, in one sentence, with the commands sent so far."""

    def __init__(self, msg: str, commands: list[str] | None = None) -> None:
        super().__init__(msg)
        self.commands = commands or []


def converge(p: dict, host: str, port: int, check_mode: bool) -> dict:
    """One Sentinel: reads SENTINEL MASTERS, sends what is missing; its result."""
    where = f"Sentinel at {host}:{port}"
    try:
        sentinel = client(host, port, p["sentinel_password"], p["timeout"])
        before = masters_by_name(sentinel.execute_command("SENTINEL", "MASTERS"))
    except RedisProblem as exc:
        raise Refused(str(exc)) from exc
    except Exception as exc:
        raise Refused(f"{where} did not answer SENTINEL MASTERS ({exc}): check that "
                      "redis-sentinel runs and redis_sentinel_password") from exc
    current = before.get(p["name"])
    if p["state"] == "present" and current is None:
        master = node_state(p["master_host"], p["master_port"],
                            p["redis_password"] or p["auth_pass"], p["timeout"])
        if master["role"] != "master":
            why = (f"reports itself {master['role']} of {master['master']}"
                   if master["answered"] else f"did not answer ({master['error']})")
            raise Refused(
                f"{where}: will not watch {p['master_host']}:{p['master_port']} as master "
                f"{p['name']}: it {why}, and Sentinel would fail it over; check the "
                "region's replication first")
    commands = monitor_commands(
        p["name"], current, p["state"], p["master_host"], p["master_port"], p["auth_pass"],
        {option: p[option] for option in MONITOR_SETTINGS}, auth_user=p["auth_user"])
    secrets = {p["auth_pass"], p["sentinel_password"], p["redis_password"]} - {None, ""}
    shown_commands = [" ".join("********" if w in secrets else w for w in c) for c in commands]
    after = current
    if commands and not check_mode:
        for command, text in zip(commands, shown_commands, strict=True):
            try:
                sentinel.execute_command(*command)
            except Exception as exc:
                raise Refused(f"{where} refused '{text}' ({exc}): the commands before it were "
                              "applied, none after; re-run once fixed", shown_commands) from exc
        after = masters_by_name(sentinel.execute_command("SENTINEL", "MASTERS")).get(p["name"])
    return {"changed": bool(commands), "commands": shown_commands, "monitor": shown(after),
            "before": shown(current)}


def address(text: str, default_port: int) -> tuple[str, int]:
    host, _, port = text.rpartition(":") if ":" in text else (text, "", "")
    return host, int(port) if port else default_port


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "master_host": {"type": "str"},
            "master_port": {"type": "int", "default": 6379},
            "auth_pass": {"type": "str", "no_log": True},
            "auth_user": {"type": "str", "default": ""},
            "redis_password": {"type": "str", "no_log": True},
            "quorum": {"type": "int"},
            "down_after_milliseconds": {"type": "int"},
            "failover_timeout": {"type": "int"},
            "parallel_syncs": {"type": "int"},
            "sentinel_host": {"type": "str", "default": "127.0.0.1"},
            "sentinel_hosts": {"type": "list", "elements": "str"},
            "sentinel_port": {"type": "int", "default": 26379},
            "sentinel_password": {"type": "str", "no_log": True},
            "timeout": {"type": "float", "default": 3.0},
            "tls_ca_file": {"type": "str", "default": ""},
        },
        required_if=[("state", "present", ("master_host", "quorum"))],
        supports_check_mode=True,
    )
    p = module.params
    use_tls(p["tls_ca_file"])
    if p["sentinel_hosts"] is None:
        try:
            one = converge(p, p["sentinel_host"], p["sentinel_port"], module.check_mode)
        except Refused as exc:
            module.fail_json(msg=str(exc), **({"commands": exc.commands} if exc.commands else {}))
        module.exit_json(changed=one["changed"], commands=one["commands"],
                         monitor=one["monitor"],
                         diff={"before": {"monitor": one["before"]},
                               "after": {"monitor": one["monitor"],
                                         "commands": one["commands"]}})
    # Several Sentinels at once, each as above.
    targets = [address(text, p["sentinel_port"]) for text in p["sentinel_hosts"]]
    results: dict[str, dict] = {}
    failures: list[str] = []

    def one_sentinel(target: tuple[str, int]) -> None:
        key = f"{target[0]}:{target[1]}"
        try:
            results[key] = converge(p, target[0], target[1], module.check_mode)
        except Refused as exc:
            failures.append(str(exc))
            results[key] = {"failed": True, "msg": str(exc), "commands": exc.commands}

    with ThreadPoolExecutor(max_workers=max(1, len(targets))) as pool:
        list(pool.map(one_sentinel, targets))
    changed = any(r.get("changed") or r.get("commands") for r in results.values())
    if failures:
        module.fail_json(msg="; ".join(sorted(failures)), changed=changed, sentinels=results)
    module.exit_json(changed=changed, sentinels=results)


if __name__ == "__main__":
    main()

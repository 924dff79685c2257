#!/usr/bin/python
"""Ansible module: DNS record sets, changed by one TSIG-signed RFC 2136 update, verified."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_dns
short_description: Manage a DNS record set with TSIG-signed RFC 2136 updates, compare-and-swap
description:
  - Reads the record set from the zone's primary first and sends nothing when it already
    holds the desired values and TTL (the task is then C(ok)).
  - Otherwise sends one update signed with the TSIG key, replacing (or deleting) the whole
    record set. With O(expected_values) the update carries an RFC 2136 prerequisite that the
    record set still holds exactly those values, so of two racing runs only one can win; the
    other fails, changing nothing.
  - After the update, waits until every server of O(verify_servers) answers the new values
    (NOTIFY and IXFR reach the secondaries), or fails naming the servers that lag and what they
    answer. When nothing needed sending, the O(verify_servers) are still checked the same way
    (a secondary that missed an update while its region was down or cut off fails the task).
  - Runs on the controller (delegated to C(localhost)) with dnspython. Check mode reads,
    decides and reports the change without sending it; diff mode shows the record set before
    and after as zone-file lines.
options:
  zone:
    description: The zone, e.g. C(baton.internal).
    type: str
    required: true
  name:
    description: The record's name, relative to O(zone) (C(db)), absolute with a trailing dot,
      or C(@) for the zone's apex. Give O(name) or O(records).
    type: str
  records:
    description:
      - Several record sets of the same O(type) and O(ttl), changed in one update (all or
        none, one new serial, so one NOTIFY and one transfer for the secondaries), then verified
        together. Each item has C(name), C(values) and optionally C(expected_values), as the
        options of the same names.
      - With O(state=present) only.
    type: list
    elements: dict
  type:
    description: The record type.
    type: str
    choices: [A, AAAA, CNAME, TXT]
    default: A
  values:
    description: The values the record set must hold (all of them; order does not matter).
      Required, and not empty, when O(state=present) (without O(records)).
    type: list
    elements: str
  ttl:
    description: TTL of the record set, in seconds.
    type: int
    default: 60
  state:
    description: C(present) sets the record set to O(values); C(absent) deletes it.
    type: str
    choices: [present, absent]
    default: present
  expected_values:
    description:
      - Compare-and-swap. The values the record set must still hold for the change to be
        made; an empty list means it must not exist. When it holds something else, the
        module fails and sends nothing, and the server checks the same condition again
        when it applies the update.
      - A record set that already holds the desired state is C(ok) whatever this says, so
        re-running a finished change succeeds.
      - Omit it for an unconditional change.
    type: list
    elements: str
  server:
    description: The zone's primary, which takes the update (C(address) or C(address:port)).
    type: str
    required: true
  port:
    description: Port of O(server) and O(verify_servers) when they do not give one.
    type: int
    default: 53
  key_name:
    description: Name of the TSIG key the zone accepts updates with.
    type: str
    required: true
  key_secret:
    description: The TSIG key's secret, base64.
    type: str
    required: true
  key_algorithm:
    description: The TSIG key's algorithm.
    type: str
    default: hmac-sha256
    choices: [hmac-sha256, hmac-sha384, hmac-sha512, hmac-sha224, hmac-sha1, hmac-md5]
  verify_servers:
    description: Every authoritative server that must answer the new values before the task
      succeeds (primary and secondaries). Empty means O(server) only.
    type: list
    elements: str
    default: []
  wait_timeout:
    description: Seconds to wait for every O(verify_servers) to answer the new values.
    type: float
    default: 15
  timeout:
    description: Seconds to wait for each DNS query or update.
    type: float
    default: 3
notes:
  - The zone must allow updates signed with the key (BIND C(update-policy)), on O(server).
  - Errors name the server and the cause; REFUSED, NOTAUTH, BADSIG, BADKEY, BADTIME, a
    server that is not authoritative for the zone and a timeout each have their own message.
author: Baton
"""

EXAMPLES = r"""
- name: Point db at us-west, only if it still points at us-east (compare-and-swap)
  baton_dns:
    zone: baton.internal
    name: db
    type: A
    values: [10.231.2.11]
    expected_values: [10.231.1.11]
    ttl: 10
    server: 10.231.0.11
    key_name: baton-update
    key_secret: "{{ dns_tsig_secret }}"
    verify_servers: [10.231.0.11, 10.231.1.11, 10.231.2.11, 10.231.3.11]
  delegate_to: localhost
  run_once: true

- name: Remove a test record
  baton_dns:
    zone: baton.internal
    name: probe
    type: TXT
    state: absent
    server: 10.231.0.11
    key_name: baton-update
    key_secret: "{{ dns_tsig_secret }}"
  delegate_to: localhost
"""

RETURN = r"""
record:
  description: The record's absolute name.
  returned: always
  type: str
  sample: db.baton.internal.
before:
  description: The values the primary held before (empty when the record did not exist).
  returned: success
  type: list
  elements: str
  sample: [10.231.1.11]
after:
  description: The values the record holds after the task (or would, in check mode).
  returned: success
  type: list
  elements: str
  sample: [10.231.2.11]
action:
  description: What was decided, C(none), C(replace) or C(delete), and why.
  returned: success
  type: dict
  sample: {action: replace, reason: "set db.baton.internal. A to 10.231.2.11 (TTL 10)"}
changes:
  description: With O(records), per record set its absolute name, C(before), C(after) and
    C(action), in the order given.
  returned: with O(records)
  type: list
  elements: dict
update_sent:
  description: Whether an update was sent (never in check mode).
  returned: success
  type: bool
servers:
  description: Per verified server, the values and TTL it answered last (and an error when it
    did not answer) and the zone's serial once it served the new values. With O(records), that
    per record set (by absolute name).
  returned: when an update was sent
  type: dict
  sample: {"10.231.2.11": {values: [10.231.2.11], serial: 2026112503}}
elapsed:
  description: Seconds from the update to the last server serving it.
  returned: when an update was sent
  type: float
"""

import time  # noqa: E402

from ansible.module_utils.basic import AnsibleModule, missing_required_lib  # noqa: E402

try:
    import dns.name
    from ansible.module_utils.baton_dns import (
        ALGORITHMS,
        RDTYPES,
        DnsError,
        Key,
        Record,
        absolute_name,
        canonical,
        decide,
        parse_server,
        read,
        update,
        update_many,
        wait_until_served,
    )
except ImportError:  # dnspython missing on the host that runs the module
    HAS_DNSPYTHON = False
    ALGORITHMS = ("hmac-sha256",)
    RDTYPES = ("A", "AAAA", "CNAME", "TXT")
else:
    HAS_DNSPYTHON = True


RECORD_SPEC = {"name": {"type": "str", "required": True},
               "values": {"type": "list", "elements": "str", "required": True},
               "expected_values": {"type": "list", "elements": "str"}}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "zone": {"type": "str", "required": True},
            "name": {"type": "str"},
            "records": {"type": "list", "elements": "dict", "options": RECORD_SPEC},
            "type": {"type": "str", "choices": list(RDTYPES), "default": "A"},
            "values": {"type": "list", "elements": "str"},
            "ttl": {"type": "int", "default": 60},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            "expected_values": {"type": "list", "elements": "str"},
            "server": {"type": "str", "required": True},
            "port": {"type": "int", "default": 53},
            "key_name": {"type": "str", "required": True},
            "key_secret": {"type": "str", "required": True, "no_log": True},
            "key_algorithm": {"type": "str", "choices": list(ALGORITHMS),
                              "default": "hmac-sha256"},
            "verify_servers": {"type": "list", "elements": "str", "default": []},
            "wait_timeout": {"type": "float", "default": 15.0},
            "timeout": {"type": "float", "default": 3.0},
        },
        required_one_of=[("name", "records")],
        mutually_exclusive=[("name", "records"), ("values", "records"),
                            ("expected_values", "records")],
        required_if=[("state", "present", ("values", "records"), True)],
        supports_check_mode=True,
    )
    if not HAS_DNSPYTHON:
        module.fail_json(msg=missing_required_lib("dnspython"))
    p = module.params
    if p["records"] is not None:
        several(module)
    result: dict = {"changed": False}
    try:
        zone = dns.name.from_text(p["zone"])
        name = absolute_name(p["name"], zone)
        result["record"] = name.to_text()
        primary = parse_server(p["server"], p["port"])
        verify = [parse_server(s, p["port"]) for s in p["verify_servers"]] or [primary]
        if p["state"] == "present" and not p["values"]:
            module.fail_json(msg=f"{p['name']}: values is empty: give the values the record "
                                 "must hold, or state=absent to delete it")
        values = () if p["state"] == "absent" else canonical(p["values"], p["type"], zone)
        desired = Record(name, p["type"], values, p["ttl"])
        expected = (None if p["expected_values"] is None
                    else canonical(p["expected_values"], p["type"], zone))

        current = read(primary, zone, name, p["type"], p["timeout"])
        result["before"] = list(current.values)
        decision = decide(current, desired, p["state"], expected)
        result["action"] = {"action": decision.action, "reason": decision.reason}
        result["after"] = list(desired.values if decision.action != "none" else current.values)
        result["update_sent"] = False
        if decision.action == "none":
            # Nothing to send, but a secondary that missed earlier changes (a region that was
            # down or cut off) must still be seen to answer what the primary holds.
            if p["verify_servers"] and not module.check_mode:
                result["servers"] = wait_until_served(verify, zone, current, p["state"],
                                                      p["wait_timeout"], p["timeout"])
            module.exit_json(**result)
        if module._diff:
            result["diff"] = {"before": current.text(), "after": desired.text(),
                              "before_header": f"{name} {p['type']} on {primary}",
                              "after_header": f"{name} {p['type']} on {primary}"}
        if module.check_mode:
            result["changed"] = True
            module.exit_json(**result)

        update(primary, zone, desired, decision.action, expected,
               Key(p["key_name"], p["key_secret"], p["key_algorithm"]), p["timeout"])
        result.update(changed=True, update_sent=True)
        started = time.monotonic()
        held = read(primary, zone, name, p["type"], p["timeout"])
        if held.values != desired.values:
            module.fail_json(msg=f"{p['name']}: {primary} answered NOERROR but holds "
                                 f"{', '.join(held.values) or 'nothing'}: it ignored the change "
                                 "(RFC 2136 ignores e.g. a CNAME beside other data); check the "
                                 "record's type and the names around it", **result)
        result["servers"] = wait_until_served(verify, zone, desired, p["state"],
                                              p["wait_timeout"], p["timeout"])
        result["elapsed"] = round(time.monotonic() - started, 3)
    except DnsError as exc:  # changed stays False unless the update was applied
        module.fail_json(msg=f"{p['name']}: {exc}", **result)
    module.exit_json(**result)


def several(module: AnsibleModule) -> None:
    """O(records): every record set read, decided, sent in one update, verified."""
    p = module.params
    result: dict = {"changed": False, "update_sent": False}
    if p["state"] != "present":
        module.fail_json(msg="records: state=absent is for one record set (name): delete each "
                             "with its own task")
    try:
        zone = dns.name.from_text(p["zone"])
        primary = parse_server(p["server"], p["port"])
        verify = [parse_server(s, p["port"]) for s in p["verify_servers"]] or [primary]
        changes, wanted = [], []
        result["changes"] = []
        for item in p["records"]:
            if not item["values"]:
                module.fail_json(msg=f"records: {item['name']}: values is empty: give the "
                                     "values the record must hold")
            name = absolute_name(item["name"], zone)
            desired = Record(name, p["type"], canonical(item["values"], p["type"], zone),
                             p["ttl"])
            expected = (None if item["expected_values"] is None
                        else canonical(item["expected_values"], p["type"], zone))
            current = read(primary, zone, name, p["type"], p["timeout"])
            decision = decide(current, desired, "present", expected)
            result["changes"].append({
                "record": name.to_text(), "before": list(current.values),
                "after": list(desired.values if decision.action != "none" else current.values),
                "action": {"action": decision.action, "reason": decision.reason}})
            wanted.append(desired if decision.action != "none" else current)
            if decision.action != "none":
                changes.append((desired, decision.action, expected))
        if changes and module._diff:
            result["diff"] = {"before": "".join(f"{c['record']} {c['before']}\n"
                                                for c in result["changes"]),
                              "after": "".join(f"{c['record']} {c['after']}\n"
                                               for c in result["changes"])}
        if module.check_mode:
            result["changed"] = bool(changes)
            module.exit_json(**result)
        started = time.monotonic()
        if changes:
            update_many(primary, zone, changes, Key(p["key_name"], p["key_secret"],
                                                    p["key_algorithm"]), p["timeout"])
            result.update(changed=True, update_sent=True)
            for desired, _action, _expected in changes:
                held = read(primary, zone, desired.name, p["type"], p["timeout"])
                if held.values != desired.values:
                    module.fail_json(msg=f"{desired.name}: {primary} answered NOERROR but "
                                         f"holds {', '.join(held.values) or 'nothing'}: it "
                                         "ignored the change; check the record's type and the "
                                         "names around it", **result)
        if p["verify_servers"] or changes:
            # One serial carries every change: the secondaries serve all of them at once, so
            # the later waits end at their first query.
            deadline = time.monotonic() + p["wait_timeout"]
            result["servers"] = {}
            for record in wanted:
                left = max(1.0, deadline - time.monotonic())
                result["servers"][record.name.to_text()] = wait_until_served(
                    verify, zone, record, "present", left, p["timeout"])
        result["elapsed"] = round(time.monotonic() - started, 3)
    except DnsError as exc:  # changed stays False unless the update was applied
        module.fail_json(msg=f"records: {exc}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

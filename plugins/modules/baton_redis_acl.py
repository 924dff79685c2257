#!/usr/bin/python
"""Ansible module: a running Redis server's ACL users, applied live and persisted."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_redis_acl
short_description: Keep a Redis server's or a Sentinel's ACL users (ACL SETUSER, then saved)
description:
  - Each user in O(users) gets exactly its password and its rules, applied live with
    C(ACL SETUSER <name> reset on), the SHA-256 of the password and the rules, then written to
    the configuration file with C(CONFIG REWRITE) (Redis writes its C(user) lines there), so
    they survive a restart (also when a user is live but missing from the file). ACL users are
    not replicated, so every server gets them from its own run.
  - With O(server=sentinel), the same on a Sentinel, which saves its file with
    C(SENTINEL FLUSHCONFIG) instead (it has no C(CONFIG REWRITE)).
  - A user is compared as Redis itself normalises it (the rules are applied to a short-lived
    probe user and C(ACL GETUSER) of both is compared), so a re-run that changes nothing sends
    nothing. Users not listed are left as they are (the C(default) user is C(requirepass)).
  - Check mode (the probe user is created and deleted at once) and diff mode support.
options:
  users:
    description: The users, each C(name), C(password) and C(rules) (keys, channels and commands
      in ACL SETUSER syntax, e.g. C(~* &* +@all -@admin -@dangerous); a selector C((...)) is
      one rule).
    type: list
    elements: dict
    required: true
    suboptions:
      name:
        description: The user's name.
        type: str
        required: true
      password:
        description: Its password (only its SHA-256 reaches Redis).
        type: str
        required: true
      rules:
        description: Its keys, channels and commands.
        type: str
        required: true
  server:
    description: What answers on O(host) and O(port) - a Redis server, or a Sentinel.
    type: str
    choices: [redis, sentinel]
    default: redis
  host:
    description: Address of the Redis server.
    type: str
    default: 127.0.0.1
  port:
    description: Port of the Redis server.
    type: int
    default: 6379
  password:
    description: The default user's password (C(requirepass)).
    type: str
  timeout:
    description: Seconds to wait for the server.
    type: float
    default: 3
requirements: [redis (redis-py; Debian's python3-redis)]
extends_documentation_fragment: [baton_redis_tls]
author: Baton
"""

EXAMPLES = r"""
- name: The application's user, without administrative commands
  baton_redis_acl:
    password: "{{ redis_password }}"
    tls_ca_file: /etc/ssl/baton/ca.crt
    users:
      - name: app
        password: "{{ baton_app_password }}"
        rules: "~[^_]* ~_[^_]* &[^_]* &_[^_]* +@all -@admin -@dangerous"
"""

RETURN = r"""
changed_users:
  description: The users created or changed (or that would be, in check mode).
  returned: always
  type: list
  sample: [app]
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_redis import (  # noqa: E402
    SERVER_OPTIONS,
    RedisProblem,
    acl_setuser_args,
    client,
    use_tls,
)

PROBE = "baton-acl-probe"


def saved_users(path: str | None) -> set[str]:
    """The users the configuration file has a `user` line for; every listed user when the file
    cannot be read (nothing to say then)."""
    try:
        with open(str(path), encoding="utf-8") as handle:
            return {line.split()[1] for line in handle
                    if line.startswith("user ") and len(line.split()) > 1}
    except OSError:
        return {"*"}


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "users": {"type": "list", "elements": "dict", "required": True, "options": {
                "name": {"type": "str", "required": True},
                "password": {"type": "str", "required": True, "no_log": True},
                "rules": {"type": "str", "required": True},
            }},
            "server": {"type": "str", "choices": ["redis", "sentinel"], "default": "redis"},
            **SERVER_OPTIONS,
        },
        supports_check_mode=True,
    )
    p = module.params
    use_tls(p["tls_ca_file"])
    sentinel = p["server"] == "sentinel"
    where = f"{'Sentinel' if sentinel else 'Redis'} at {p['host']}:{p['port']}"
    for index, user in enumerate(p["users"]):
        missing = [k for k in ("name", "password", "rules") if not str(user.get(k) or "")]
        if missing:
            module.fail_json(msg=f"redis user #{index + 1} ({user.get('name') or 'no name'}) has "
                                 f"no {', '.join(missing)}: set it in the inventory")
    try:
        redis = client(p["host"], p["port"], p["password"], p["timeout"])
        changed = []
        for user in p["users"]:
            args = acl_setuser_args(str(user["password"]), str(user["rules"]))
            try:
                redis.execute_command("ACL", "SETUSER", PROBE, *args)
            except Exception as exc:
                module.fail_json(msg=f"{where} refused the rules of redis user {user['name']} "
                                     f"({exc}): fix them in the inventory")
            want = redis.acl_getuser(PROBE)
            redis.execute_command("ACL", "DELUSER", PROBE)
            if redis.acl_getuser(user["name"]) != want:
                changed.append(str(user["name"]))
                if not module.check_mode:
                    redis.execute_command("ACL", "SETUSER", user["name"], *args)
        # Users live but not in the file (a rewrite after an earlier change failed): written now.
        file_users = saved_users(redis.info("server").get("config_file"))
        unsaved = [str(u["name"]) for u in p["users"]
                   if str(u["name"]) not in changed
                   and not ({str(u["name"]), "*"} & file_users)]
        if (changed or unsaved) and not module.check_mode:
            if sentinel:
                redis.execute_command("SENTINEL", "FLUSHCONFIG")
            else:
                redis.config_rewrite()
        changed += unsaved
    except RedisProblem as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:
        module.fail_json(msg=f"{where} did not take the ACL users ({exc}): check that "
                             f"{'redis-sentinel' if sentinel else 'redis-server'} runs and "
                             f"{'redis_sentinel_password' if sentinel else 'redis_password'}, "
                             "then re-run")
    module.exit_json(changed=bool(changed), changed_users=changed,
                     diff={"before": "", "after": "".join(f"user {n}\n" for n in changed)})


if __name__ == "__main__":
    main()

#!/usr/bin/python
"""Ansible module: a running Redis server's settings, applied live and persisted."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_redis_config
short_description: Apply Redis settings to a running server (CONFIG SET, CONFIG REWRITE)
description:
  - Once Redis runs, its configuration file is shared with Redis itself and with Sentinel,
    which rewrite it (C(CONFIG REWRITE)) on every failover. Baton therefore writes the file
    once, and applies later changes of the settings it manages with this module. It reads
    each with C(CONFIG GET), sends C(CONFIG SET) only for those that differ, then
    C(CONFIG REWRITE) so that they survive a restart. No restart, and nothing Sentinel wrote
    (C(replicaof), failover state) is lost.
  - Values compare as C(CONFIG GET) prints them (sizes in bytes, booleans as yes/no).
  - Full check mode and diff mode support.
options:
  settings:
    description: Setting name to value; only settings that C(CONFIG SET) accepts.
    type: dict
    required: true
  secret_settings:
    description: More settings, whose values are secrets (masterauth) - never shown in the
      output or the diff.
    type: dict
    default: {}
  host:
    description: Address of the Redis server.
    type: str
    default: 127.0.0.1
  port:
    description: Port of the Redis server.
    type: int
    default: 6379
  password:
    description: The server's password.
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
- name: Keep the cache's memory limit and persistence as the inventory says
  baton_redis_config:
    password: "{{ redis_password }}"
    tls_ca_file: /etc/ssl/baton/ca.crt
    settings:
      maxmemory: 268435456
      maxmemory-policy: allkeys-lru
      appendonly: true
      replica-priority: 100
"""

RETURN = r"""
changed_settings:
  description: Setting name to [old value, new value] for each setting changed (or that would
    be, in check mode).
  returned: always
  type: dict
  sample: {maxmemory: ["0", "268435456"]}
"""

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_redis import (  # noqa: E402
    SERVER_OPTIONS,
    RedisProblem,
    client,
    config_settings_to_set,
    use_tls,
)


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "settings": {"type": "dict", "required": True},
            "secret_settings": {"type": "dict", "default": {}, "no_log": True},
            **SERVER_OPTIONS,
        },
        supports_check_mode=True,
    )
    p = module.params
    use_tls(p["tls_ca_file"])
    where = f"Redis at {p['host']}:{p['port']}"
    secret = set(p["secret_settings"])
    wanted = {**p["settings"], **p["secret_settings"]}
    try:
        redis = client(p["host"], p["port"], p["password"], p["timeout"])
        current = {}
        for name in wanted:
            current.update(redis.config_get(name))
    except RedisProblem as exc:
        module.fail_json(msg=str(exc))
    except Exception as exc:
        module.fail_json(msg=f"{where} did not answer CONFIG GET ({exc}): check that "
                             "redis-server runs and redis_password")
    unknown = sorted(set(wanted) - set(current))
    if unknown:
        module.fail_json(msg=f"{where} does not know the setting(s) {', '.join(unknown)}: "
                             "check their names (redis.conf spelling)")
    changes = config_settings_to_set(current, wanted)
    if changes and not module.check_mode:
        for name, value in changes.items():
            try:
                redis.config_set(name, value)
            except Exception as exc:
                shown = "(secret)" if name in secret else value
                module.fail_json(msg=f"{where} refused CONFIG SET {name} {shown} ({exc}): "
                                     "fix the value in the inventory and re-run")
        try:
            redis.config_rewrite()
        except Exception as exc:
            module.fail_json(msg=f"{where} applied {', '.join(changes)} but could not write "
                                 f"them to its configuration file ({exc}): they are lost at the "
                                 "next restart; check that redis may write /etc/redis")
    def shown(name: str, value: str) -> str:
        return "(secret)" if name in secret else value

    module.exit_json(changed=bool(changes),
                     changed_settings={k: [shown(k, current[k]), shown(k, v)]
                                       for k, v in changes.items()},
                     diff={"before": {k: shown(k, current[k]) for k in changes},
                           "after": {k: shown(k, v) for k, v in changes.items()}})


if __name__ == "__main__":
    main()

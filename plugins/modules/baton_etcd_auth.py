#!/usr/bin/python
"""Ansible module: an etcd cluster's users and roles, and its authentication turned on."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_etcd_auth
short_description: Users, roles and authentication of one of Baton's etcd clusters
description:
  - Runs on one member of the cluster (it talks to the member's own client endpoint, with the
    node's TLS client certificate). Makes the cluster's roles hold exactly the permissions
    given, its users exist with exactly the roles given and with their passwords, a C(root)
    user with the root role, and authentication enabled. Users and roles it is not told
    about are left as they are.
  - Passwords are checked by logging in as each user; a user whose login fails gets its
    password set again.
  - Check mode reads and reports what would change.
options:
  endpoint:
    description: The member's client endpoint, C(address:port).
    type: str
    required: true
  client:
    description:
      - TLS files (C(ca_file), C(cert_file), C(key_file)) of the node's client certificate;
        the login is this module's O(root_password).
    type: dict
    default: {}
    suboptions:
      ca_file:
        description: The Baton CA's certificate (PEM).
        type: str
        default: ""
      cert_file:
        description: The client's certificate (PEM, no CommonName).
        type: str
        default: ""
      key_file:
        description: The client's private key (PEM).
        type: str
        default: ""
      key_password:
        description: The private key's passphrase, when it is encrypted.
        type: str
        default: ""
      username:
        description: Not used (the module logs in as C(root)).
        type: str
        default: ""
      password:
        description: Not used (the module logs in as C(root)).
        type: str
        default: ""
  root_password:
    description: The password of the C(root) user.
    type: str
    required: true
  roles:
    description:
      - Role name -> its permissions, each C({key, prefix, permission}) where C(prefix)
        (a bool) makes the key a prefix and C(permission) is C(read), C(write) or C(readwrite).
    type: dict
    default: {}
  users:
    description: User name -> the list of its roles.
    type: dict
    default: {}
  passwords:
    description: User name -> its password, for every user of O(users).
    type: dict
    default: {}
  timeout:
    description: Seconds each request may take.
    type: float
    default: 5
author: Baton
"""

EXAMPLES = r"""
- name: The witness's users
  baton_etcd_auth:
    endpoint: 127.0.0.1:2391
    client: {ca_file: /etc/ssl/baton/ca.crt, cert_file: /etc/ssl/baton/node.crt,
             key_file: /etc/ssl/baton/node.key}
    root_password: "{{ vault_witness_root_password }}"
    roles:
      baton-controller: [{key: /baton/, prefix: true, permission: readwrite}]
    users:
      baton-controller: [baton-controller]
    passwords:
      baton-controller: "{{ vault_controller_password }}"
"""

RETURN = r"""
changes:
  description: What was changed (or would be, in check mode), one line each; never a password.
  returned: always
  type: list
  elements: str
"""

import base64  # noqa: E402
from typing import Any  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_witness import (  # noqa: E402
    CLIENT_SPEC,
    Client,
    Witness,
    WitnessError,
    prefix_end,
)

PERMISSIONS = {"read": "READ", "write": "WRITE", "readwrite": "READWRITE"}
NOT_ENABLED = "authentication is not enabled"


def _b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode()


def desired_perms(perms: list[dict[str, Any]], role: str) -> set[tuple[str, str, str]]:
    """{(permType, key b64, range_end b64)} of a role's permissions as given; ValueError on a
    bad entry."""
    wanted = set()
    for perm in perms or []:
        if not isinstance(perm, dict) or not perm.get("key"):
            raise ValueError(f"roles.{role}: each permission needs a key")
        kind = PERMISSIONS.get(str(perm.get("permission", "read")).lower())
        if kind is None:
            raise ValueError(f"roles.{role}: permission {perm.get('permission')!r} is not one "
                             "of read, write, readwrite")
        key = str(perm["key"])
        end = _b64(prefix_end(key)) if perm.get("prefix") else ""
        wanted.add((kind, _b64(key), end))
    return wanted


def current_perms(reply: dict[str, Any]) -> set[tuple[str, str, str]]:
    """The same shape, from /v3/auth/role/get (the gateway leaves out READ, the default)."""
    return {(str(p.get("permType") or "READ"), str(p.get("key") or ""),
             str(p.get("range_end") or "")) for p in reply.get("perm") or []}


class Auth:
    """The calls, or only the record of them in check mode."""

    def __init__(self, module: AnsibleModule, etcd: Witness) -> None:
        self.module, self.etcd, self.changes = module, etcd, []

    def read(self, method: str, body: dict[str, Any]) -> dict[str, Any]:
        return self.etcd.call(method, body)

    def change(self, what: str, method: str, body: dict[str, Any]) -> None:
        self.changes.append(what)
        if not self.module.check_mode:
            self.etcd.call(method, body)


def logs_in(etcd: Witness, endpoint: str, user: str, password: str) -> bool | None:
    """Whether the user logs in with the password; None while authentication is off."""
    try:
        etcd.call("auth/authenticate", {"name": user, "password": password})
    except WitnessError as exc:
        if NOT_ENABLED in str(exc):
            return None
        if "invalid user ID or password" in str(exc) or "user name not found" in str(exc):
            return False
        raise
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "endpoint": {"type": "str", "required": True},
            "client": CLIENT_SPEC,
            "root_password": {"type": "str", "required": True, "no_log": True},
            "roles": {"type": "dict", "default": {}},
            "users": {"type": "dict", "default": {}},
            "passwords": {"type": "dict", "default": {}, "no_log": True},
            "timeout": {"type": "float", "default": 5.0},
        },
        supports_check_mode=True,
    )
    p = module.params
    endpoint = p["endpoint"]
    tls = {k: v for k, v in (p["client"] or {}).items() if k not in ("username", "password")}
    plain = Witness([endpoint], p["timeout"], client=Client.from_mapping(tls))
    try:
        for name, roles_of in p["users"].items():
            if not isinstance(roles_of, list):
                module.fail_json(msg=f"users.{name}: give the list of its roles")
            if not p["passwords"].get(name):
                module.fail_json(msg=f"user {name} has no password in passwords")
        wanted = {name: desired_perms(perms, name) for name, perms in p["roles"].items()}
        root_login = logs_in(plain, endpoint, "root", p["root_password"])
        enabled = root_login is not None
        if root_login is False:
            module.fail_json(msg=f"etcd at {endpoint} has authentication on and refuses root's "
                                 "password: the cluster was set up with another etcd_auth_secret; "
                                 "put the one it was set up with back in the vault, or change "
                                 "root's password with etcdctl as root")
        etcd = Witness([endpoint], p["timeout"], client=Client.from_mapping(
            {**tls, "username": "root", "password": p["root_password"]})) if enabled else plain
        auth = Auth(module, etcd)
        roles = set(auth.read("auth/role/list", {}).get("roles") or [])
        users = set(auth.read("auth/user/list", {}).get("users") or [])
        if "root" not in roles:
            auth.change("role root: created", "auth/role/add", {"name": "root"})
        if "root" not in users:
            auth.change("user root: created", "auth/user/add",
                        {"name": "root", "password": p["root_password"]})
            auth.change("user root: granted root", "auth/user/grant",
                        {"user": "root", "role": "root"})
        elif "root" not in (auth.read("auth/user/get", {"name": "root"}).get("roles") or []):
            auth.change("user root: granted root", "auth/user/grant",
                        {"user": "root", "role": "root"})
        for role, perms in wanted.items():
            have: set[tuple[str, str, str]] = set()
            if role not in roles:
                auth.change(f"role {role}: created", "auth/role/add", {"name": role})
            else:
                have = current_perms(auth.read("auth/role/get", {"role": role}))
            for kind, key, end in sorted(have - perms):
                auth.change(f"role {role}: revoked {kind} on {base64.b64decode(key).decode()}",
                            "auth/role/revoke", {"role": role, "key": key, "range_end": end})
            for kind, key, end in sorted(perms - have):
                auth.change(f"role {role}: granted {kind} on {base64.b64decode(key).decode()}"
                            + (" (prefix)" if end else ""), "auth/role/grant",
                            {"name": role, "perm": {"permType": kind, "key": key,
                                                    "range_end": end}})
        for user, roles_of in p["users"].items():
            password = str(p["passwords"][user])
            roles_wanted = set(roles_of)
            have_roles: set[str] = set()
            if user not in users:
                auth.change(f"user {user}: created", "auth/user/add",
                            {"name": user, "password": password})
            else:
                have_roles = set(auth.read("auth/user/get", {"name": user}).get("roles") or [])
                if enabled and logs_in(plain, endpoint, user, password) is False:
                    auth.change(f"user {user}: password set", "auth/user/changepw",
                                {"name": user, "password": password})
            for role in sorted(roles_wanted - have_roles):
                auth.change(f"user {user}: granted {role}", "auth/user/grant",
                            {"user": user, "role": role})
            for role in sorted(have_roles - roles_wanted):
                auth.change(f"user {user}: revoked {role}", "auth/user/revoke",
                            {"name": user, "role": role})
        if not enabled:
            auth.change("authentication enabled", "auth/enable", {})
    except ValueError as exc:
        module.fail_json(msg=str(exc))
    except WitnessError as exc:
        module.fail_json(msg=f"etcd at {endpoint}: {exc}", changes=auth.changes
                         if "auth" in locals() else [])
    module.exit_json(changed=bool(auth.changes), changes=auth.changes)


if __name__ == "__main__":
    main()

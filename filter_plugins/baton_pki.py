"""The Baton CA's place on the controller, and the etcd users' passwords."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
from typing import Any

from ansible.errors import AnsibleFilterError


def baton_inventory_dir(sources: Any) -> str:
    """The folder of the run's first inventory source (ansible_inventory_sources): the
    inventory's own folder on the controller, also in plays on localhost, where Ansible does
    not define inventory_dir."""
    if isinstance(sources, str):
        sources = [sources]
    if not sources:
        raise AnsibleFilterError("baton_inventory_dir: the run has no inventory source")
    first = os.path.abspath(str(next(iter(sources))))
    return first if os.path.isdir(first) else os.path.dirname(first)


def baton_derived_password(secret: Any, scope: str, user: str, what: str = "the secret") -> str:
    """A password derived from a vault secret for one user of one scope (HMAC-SHA256 of
    "<scope>/<user>", URL-safe base64): one secret in the vault, and a holder of one derived
    password learns nothing of the secret or the others'."""
    if not isinstance(secret, str) or len(secret) < 8:
        raise AnsibleFilterError(f"{what} is not set (or shorter than 8 characters): the "
                                 "passwords derived from it cannot be made; set it in the "
                                 "inventory's vault (ansible-vault edit group_vars/all/vault.yml)")
    digest = hmac.new(secret.encode(), f"{scope}/{user}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def baton_etcd_password(secret: Any, cluster: str, user: str) -> str:
    """The password of an etcd user of one of Baton's clusters, derived from etcd_auth_secret
    (HMAC-SHA256 of "<cluster>/<user>"): one secret in the vault, and a node that holds its own
    user's password learns nothing of the others'."""
    return baton_derived_password(secret, cluster, user, "etcd_auth_secret")


def baton_witness_roles(sites: list[str], controller: str) -> dict[str, list[dict[str, Any]]]:
    """The witness's etcd roles: the controller's (every Baton key), and one per site
    (baton-site-<site>) that reads the holder and the zone's primary and keeps its own
    region's liveness keys."""
    roles: dict[str, list[dict[str, Any]]] = {
        controller: [{"key": "/baton/", "prefix": True, "permission": "readwrite"}]}
    for site in sites:
        roles[f"baton-site-{site}"] = [
            {"key": "/baton/holder", "permission": "read"},
            {"key": "/baton/dns_primary", "permission": "read"},
            {"key": f"/baton/alive/{site}/", "prefix": True, "permission": "readwrite"},
        ]
    return roles


def baton_etcd_users(roles: dict[str, Any]) -> dict[str, list[str]]:
    """One user per role, of the role's name."""
    return {name: [name] for name in roles}


def baton_etcd_passwords(users: Any, secret: Any, cluster: str) -> dict[str, str]:
    """Each user's derived password (baton_etcd_password)."""
    return {name: baton_etcd_password(secret, cluster, name) for name in users}


def baton_ca_holders(hosts: list[str], hostvars: Any, fact: str, pem: str | None = None
                     ) -> list[str]:
    """Of hosts, those whose slurped CA certificate (the registered result `fact`) exists
    and, when pem is given, differs from it (whitespace aside)."""
    found = []
    for host in hosts:
        result = hostvars[host].get(fact) or {}
        if not result.get("content"):
            continue
        text = base64.b64decode(result["content"]).decode(errors="replace")
        if pem is None or "".join(text.split()) != "".join(str(pem).split()):
            found.append(host)
    return found


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "baton_inventory_dir": baton_inventory_dir,
            "baton_etcd_password": baton_etcd_password,
            "baton_derived_password": baton_derived_password,
            "baton_ca_holders": baton_ca_holders,
            "baton_witness_roles": baton_witness_roles,
            "baton_etcd_users": baton_etcd_users,
            "baton_etcd_passwords": baton_etcd_passwords,
        }

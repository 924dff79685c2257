"""What each Prometheus server scrapes, computed from the inventory and the exporters' facts;
the password hashes of the monitoring servers' web configuration."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    import bcrypt
except ImportError:  # reported when the filter is used
    bcrypt = None

Hostvars = Mapping[str, Any]

# bcrypt's own base64 alphabet (salts are 22 of these characters).
_BCRYPT_ALPHABET = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def baton_prometheus_servers(regions: Mapping[str, list[str]]) -> dict[str, str]:
    """Region -> the host that runs its regional Prometheus (the region's first host)."""
    return {region: hosts[0] for region, hosts in regions.items() if hosts}


def baton_scrape_targets(hosts: list[str], hostvars: Hostvars) -> dict[str, list[dict[str, Any]]]:
    """Job -> [{host, target, site}] for the hosts given, from each host's `exporters_targets`.

    A host without that fact (the exporters role has not run on it in this play, or it was
    unreachable) is left out: Prometheus only scrapes what is known to be there.
    """
    jobs: dict[str, list[dict[str, Any]]] = {}
    for host in hosts:
        hv = hostvars[host]
        for target in hv.get("exporters_targets") or []:
            jobs.setdefault(str(target["job"]), []).append({
                "host": host,
                "target": f"{hv['baton_address']}:{target['port']}",
                "site": str(hv.get("baton_site", "")),
                "scheme": str(target.get("scheme") or "http"),
            })
    return {job: jobs[job] for job in sorted(jobs)}


def baton_web_password_hash(password: str, seed: str, rounds: int = 10) -> str:
    """The bcrypt hash of PASSWORD for a web configuration's `basic_auth_users` (Prometheus,
    Alertmanager). The salt comes from SEED (the host's name): a re-run writes the same file,
    a new password a new hash. Cost 10: the servers check it on every request they have not
    cached."""
    if bcrypt is None:
        raise AnsibleFilterError("baton_web_password_hash: the controller's Python has no bcrypt "
                                 "module: run `make venv` (requirements.txt pins it)")
    if not isinstance(password, str) or not password:
        raise AnsibleFilterError("baton_web_password_hash: the password is empty: set it in the "
                                 "inventory's vault")
    digest = hashlib.sha256(f"baton-web-salt:{seed}".encode()).digest()
    # 21 free characters, then one whose low 4 bits are zero (22 x 6 bits hold 128 + 4).
    salt = "".join(_BCRYPT_ALPHABET[b % 64] for b in digest[:21])
    salt += _BCRYPT_ALPHABET[(digest[21] % 4) * 16]
    return bcrypt.hashpw(password.encode(), f"$2b${rounds:02d}${salt}".encode()).decode()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "baton_prometheus_servers": baton_prometheus_servers,
            "baton_scrape_targets": baton_scrape_targets,
            "baton_web_password_hash": baton_web_password_hash,
        }

#!/usr/bin/python
"""Ansible module: the health of every region, read in parallel, with verdicts."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_assess
short_description: Assess every region of a Baton deployment in parallel, read-only
description:
  - Runs on the controller. Probes every node of every region at once, each probe with its own
    timeout (O(timeout)), so a dead or black-holed region costs one timeout, not one per check.
  - Per region it reads Patroni (C(/patroni) of each member and C(/cluster)), etcd
    (C(/health) of each member, quorum), PostgreSQL as the monitoring user (in recovery or
    not, current, received and replayed WAL positions, replay delay; a node that accepts
    writes is reported whatever Patroni says), PgBouncer's admin console (where C(app) points,
    paused), both HAProxy endpoints end to end, Redis (C(INFO replication)), Sentinel (what it
    watches, C(SENTINEL CKQUORUM)).
  - Per authoritative name server of O(dns_servers), where the failover records point and
    the zone's serial.
  - Returns the facts, a verdict per region (C(healthy), C(degraded) or C(unhealthy), with the
    reasons), and a global view - which region holds the baton, whether more than one region
    accepts writes, the failover candidates ranked with their data-loss estimate - plus the
    list of problems an operator must act on.
  - Read-only; never reports C(changed); full check mode support.
options:
  regions:
    description:
      - Region name to its nodes, each C({name, address}). A node runs every service unless
        it says otherwise with C(redis=false) (no Redis nor Sentinel on it).
    type: dict
    required: true
  timeout:
    description: Seconds each probe may take (PostgreSQL connections take at least 2).
    type: float
    default: 2
  monitoring_user:
    description: PostgreSQL and PgBouncer user with pg_monitor (and a PgBouncer stats user).
    type: str
    default: baton_monitor
  monitoring_password:
    description: Its password.
    type: str
    required: true
  redis_password:
    description: Redis's C(requirepass).
    type: str
    default: ""
  sentinel_password:
    description: Sentinel's own password.
    type: str
    default: ""
  sentinel_master_name:
    description: The name Sentinel watches the master under.
    type: str
    default: baton
  ports:
    description:
      - Ports, by service, where they differ from the defaults C(patroni=8008),
        C(etcd=2381) (its plain-HTTP metrics and health listener), C(postgres=5432),
        C(pgbouncer=6432), C(haproxy_rw=5000), C(haproxy_ro=5001),
        C(redis=6379), C(sentinel=26379), C(dns=53), C(node_exporter=9100) (where each node's
        Baton agent shows its state).
    type: dict
    default: {}
  dns_zone:
    description: The failover zone.
    type: str
    default: baton.internal
  dns_names:
    description: The failover records to read (A records, relative to O(dns_zone)).
    type: list
    elements: str
    default: [db, redis]
  dns_servers:
    description: Every authoritative server of the zone (addresses). Empty skips DNS.
    type: list
    elements: str
    default: []
  dns_primary:
    description: The zone's primary server (one of O(dns_servers)); every other server must
      serve its serial.
    type: str
  witness_endpoints:
    description: The global witness's members (C(host:port)); the holder it names is the one
      every tier is checked against. Empty skips the witness.
    type: list
    elements: str
    default: []
  max_data_loss_bytes:
    description: A standby region whose received WAL lags the primary position by more is
      reported degraded (and its candidate entry says so).
    type: int
  last_known_primary_lsn:
    description: The primary's last known WAL position (e.g. C(0/3000060), from an earlier
      report), used for the data-loss estimate when no region accepts writes.
    type: str
  witness_client:
    description:
      - How to reach the witness - TLS with the Baton CA, the controller's client certificate
        and key, and the controller's etcd user (the witness role's C(witness_controller_client)).
      - Empty - plain HTTP without a login (an etcd without TLS and authentication).
    type: dict
    default: {}
    suboptions:
      ca_file:
        description: The Baton CA's certificate (PEM).
        type: str
        default: ""
      cert_file:
        description: The client's certificate (PEM, issued by the Baton CA, no CommonName).
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
        description: The etcd user.
        type: str
        default: ""
      password:
        description: The etcd user's password.
        type: str
        default: ""
extends_documentation_fragment: [baton_patroni_rest, baton_redis_tls]
author: Baton
"""

EXAMPLES = r"""
- name: Assess every region
  baton_assess:
    regions:
      us-east: [{name: us-east-1, address: 10.231.1.11}]
      us-west: [{name: us-west-1, address: 10.231.2.11}]
      eu-west: [{name: eu-west-1, address: 10.231.3.11}]
    monitoring_password: "{{ baton_monitoring_password }}"
    redis_password: "{{ redis_password }}"
    sentinel_password: "{{ redis_sentinel_password }}"
    dns_servers: [10.231.0.11, 10.231.1.11, 10.231.2.11, 10.231.3.11]
    max_data_loss_bytes: 16777216
    restapi_ca_file: "{{ baton_pki_dir }}/ca.crt"
    tls_ca_file: "{{ baton_pki_dir }}/ca.crt"
  delegate_to: localhost
  run_once: true
  register: assessment

- name: Refuse to go on with two writable regions, or a region nobody can see
  ansible.builtin.assert:
    that:
      - not assessment.global.split_brain
      - assessment.global.unknown_regions | length == 0
"""

RETURN = r"""
regions:
  description: Per region, its verdict, the reasons, and the facts read.
  returned: always
  type: dict
  sample:
    us-west:
      verdict: degraded
      reasons: [Sentinel on us-west-1 does not answer]
      facts: {patroni: {leader: us-west-1, cluster_role: standby, timeline: 1}}
global:
  description:
    - The baton holder, the writable regions, split brain, the primary WAL position used for
      estimates (and where it came from), the failover candidates ranked (healthy first, then
      least data loss) and the global problem if any.
    - C(unknown_regions) lists the regions where neither Patroni nor PostgreSQL answered;
      whether they accept writes is unknown (a cut-off old primary may), so C(baton_holder)
      and C(split_brain) describe only the regions that answered.
  returned: always
  type: dict
  sample:
    baton_holder: us-east
    writable_regions: [us-east]
    split_brain: false
    unknown_regions: []
    candidates: [{region: us-west, verdict: healthy, data_loss_bytes: 0,
                  replay_delay_seconds: 0.4}]
dns:
  description: Per failover name and server, the values and the regions they point at; the
    serials; servers that did not answer.
  returned: when dns_servers is given
  type: dict
problems:
  description: What an operator must act on, one sentence each (empty when none).
  returned: always
  type: list
  elements: str
elapsed:
  description: Seconds the whole assessment took.
  returned: always
  type: float
"""

import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402
from functools import partial  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402
from ansible.module_utils.baton_assess import (  # noqa: E402
    UNHEALTHY,
    agent_problems,
    ask_again,
    dns_tier_problems,
    dns_view,
    global_view,
    lsn_to_int,
    primary_position,
    probe_agent,
    probe_cluster,
    probe_config,
    probe_dns,
    probe_endpoint,
    probe_etcd,
    probe_patroni,
    probe_pgbouncer,
    probe_postgres,
    probe_redis,
    probe_sentinel,
    redis_tier_problems,
    region_summary,
    region_verdict,
    run_probes,
    witness_problems,
)
from ansible.module_utils.baton_patroni import use_ca  # noqa: E402
from ansible.module_utils.baton_redis import use_tls  # noqa: E402
from ansible.module_utils.baton_witness import (  # noqa: E402
    CLIENT_SPEC,
    HOLDER,
    Witness,
    parse_holder,
)


def read_witness(endpoints: list[str], timeout: float,
                 client: dict | None = None) -> tuple[str | None, str | None]:
    """(the region the witness names as holder, an error); never raises."""
    try:
        entry = Witness(endpoints, timeout=timeout, client=client).get(HOLDER)
        holder = parse_holder(entry.value if entry else None)
    except Exception as exc:  # a check reports every failure as data
        return None, f"{type(exc).__name__}: {exc}"
    return (holder["region"] if holder else None), None

PORTS = {"patroni": 8008, "etcd": 2381, "postgres": 5432, "pgbouncer": 6432,
         "haproxy_rw": 5000, "haproxy_ro": 5001, "redis": 6379, "sentinel": 26379, "dns": 53,
         "node_exporter": 9100}


def node_jobs(p: dict, ports: dict[str, int], address: str, redis: bool) -> dict:
    t, user, secret = p["timeout"], p["monitoring_user"], p["monitoring_password"]
    jobs = {
        "patroni": partial(probe_patroni, address, ports["patroni"], t),
        "cluster": partial(probe_cluster, address, ports["patroni"], t),
        "config": partial(probe_config, address, ports["patroni"], t),
        "etcd": partial(probe_etcd, address, ports["etcd"], t),
        "postgres": partial(probe_postgres, address, ports["postgres"], user, secret, t),
        "pgbouncer": partial(probe_pgbouncer, address, ports["pgbouncer"], user, secret, t),
        "haproxy_rw": partial(probe_endpoint, address, ports["haproxy_rw"], user, secret, t),
        "haproxy_ro": partial(probe_endpoint, address, ports["haproxy_ro"], user, secret, t),
        "agent": partial(probe_agent, address, ports["node_exporter"], t),
    }
    if redis:
        jobs["redis"] = partial(probe_redis, address, ports["redis"], p["redis_password"], t)
        jobs["sentinel"] = partial(probe_sentinel, address, ports["sentinel"],
                                   p["sentinel_password"], p["sentinel_master_name"], t)
    return jobs


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "regions": {"type": "dict", "required": True},
            "timeout": {"type": "float", "default": 2.0},
            "monitoring_user": {"type": "str", "default": "baton_monitor"},
            "monitoring_password": {"type": "str", "required": True, "no_log": True},
            "redis_password": {"type": "str", "default": "", "no_log": True},
            "sentinel_password": {"type": "str", "default": "", "no_log": True},
            "sentinel_master_name": {"type": "str", "default": "baton"},
            "ports": {"type": "dict", "default": {}},
            "dns_zone": {"type": "str", "default": "baton.internal"},
            "dns_names": {"type": "list", "elements": "str", "default": ["db", "redis"]},
            "dns_servers": {"type": "list", "elements": "str", "default": []},
            "dns_primary": {"type": "str"},
            "witness_endpoints": {"type": "list", "elements": "str", "default": []},
            "witness_client": CLIENT_SPEC,
            "restapi_ca_file": {"type": "str", "default": ""},
            "tls_ca_file": {"type": "str", "default": ""},
            "max_data_loss_bytes": {"type": "int"},
            "last_known_primary_lsn": {"type": "str"},
        },
        supports_check_mode=True,
    )
    p = module.params
    use_ca(p["restapi_ca_file"])
    use_tls(p["tls_ca_file"])
    unknown = sorted(set(p["ports"]) - set(PORTS))
    if unknown:
        module.fail_json(msg=f"ports: unknown service {', '.join(unknown)}: use "
                             f"{', '.join(sorted(PORTS))}")
    ports = {**PORTS, **{k: int(v) for k, v in p["ports"].items()}}
    if p["dns_servers"] and not p["dns_names"]:
        module.fail_json(msg="dns_names is empty: name the failover records to check "
                             "(default db, redis), or give no dns_servers")
    regions: dict[str, list[dict]] = {}
    for region, nodes in p["regions"].items():
        if not isinstance(nodes, list) or not nodes or not all(
                isinstance(n, dict) and n.get("name") and n.get("address") for n in nodes):
            module.fail_json(msg=f"regions.{region}: give a list of nodes, each with a name "
                                 "and an address")
        regions[str(region)] = nodes
    try:
        last_known = lsn_to_int(p["last_known_primary_lsn"])
    except ValueError:
        module.fail_json(msg=f"last_known_primary_lsn '{p['last_known_primary_lsn']}' is not a "
                             "WAL position: write it as PostgreSQL does, e.g. 0/3000060")

    started = time.monotonic()
    jobs = {}
    for region, nodes in regions.items():
        for node in nodes:
            redis = str(node.get("redis", True)).lower() not in ("false", "no", "0")
            for service, job in node_jobs(p, ports, str(node["address"]), redis).items():
                jobs[("node", region, str(node["name"]), service)] = job
    for server in p["dns_servers"]:
        address = server if ":" in server else f"{server}:{ports['dns']}"
        jobs[("dns", server)] = partial(probe_dns, address, p["dns_zone"], p["dns_names"],
                                        p["timeout"])
    witness_job = ThreadPoolExecutor(max_workers=1).submit(
        read_witness, p["witness_endpoints"], p["timeout"],
        p["witness_client"]) if p["witness_endpoints"] else None
    # psycopg connects in whole seconds (at least 2); half a second more for the threads.
    deadline = max(p["timeout"], 2) + 0.5
    probes = ask_again(jobs, run_probes(jobs, deadline), deadline)

    summaries, verdicts, out = {}, {}, {}
    for region, nodes in regions.items():
        summaries[region] = region_summary(region, {
            str(n["name"]): {k[3]: v for k, v in probes.items()
                             if k[0] == "node" and k[1] == region and k[2] == str(n["name"])}
            for n in nodes})
    position, _source = primary_position(summaries, last_known)
    for region, summary in summaries.items():
        verdict, reasons = region_verdict(summary, p["max_data_loss_bytes"], position)
        verdicts[region] = verdict
        out[region] = {"verdict": verdict, "reasons": reasons, "facts": summary}
    view = global_view(summaries, verdicts, last_known)

    problems = [view["problem"]] if view["problem"] else []
    problems += [f"{r} is unhealthy: {'; '.join(out[r]['reasons'])}"
                 for r in regions if verdicts[r] == UNHEALTHY]
    # Every tier is checked against the witness's holder (else PostgreSQL's writable region).
    holder = view["baton_holder"]
    if p["witness_endpoints"]:
        named, error = witness_job.result()
        view["witness_holder"], view["witness_error"] = named, error
        problems += witness_problems(named, error, view["writable_regions"])
        holder = named or holder
    problems += redis_tier_problems(summaries, holder)
    problems += agent_problems(summaries, holder)
    result = {"changed": False, "regions": out, "global": view, "problems": problems}
    if p["dns_servers"]:
        addresses = {str(n["address"]): r for r, nodes in regions.items() for n in nodes}
        dns = dns_view({k[1]: v for k, v in probes.items() if k[0] == "dns"}, addresses)
        problems += dns_tier_problems(dns, holder, p["dns_primary"], p["dns_zone"])
        result["dns"] = dns
    result["elapsed"] = round(time.monotonic() - started, 3)
    module.exit_json(**result)


if __name__ == "__main__":
    main()

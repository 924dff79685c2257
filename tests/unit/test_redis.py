"""The Redis tier's decisions, on recorded replies: which region's Redis takes writes, what a
Sentinel monitor and a live configuration need, and the inventory preflight of the tier."""

import hashlib
from pathlib import Path

import pytest
import yaml
from baton_redis import (
    RedisProblem,
    acl_setuser_args,
    config_settings_to_set,
    decide_writable_region,
    masters_by_name,
    monitor_commands,
    parse_role,
    redis_value,
)
from baton_topology import (
    SENTINEL_QUORUM_DEFAULT,
    baton_redis_master,
    baton_redis_problems,
    baton_redis_quote,
    baton_redis_source,
)

ROOT = Path(__file__).resolve().parents[2]


def node(address, role=None, master=None, error_kind=None):
    return {"address": f"{address}:6379", "answered": role is not None, "role": role,
            "master": master, "link": "up" if master else None, "offset": 0,
            "error": "boom" if error_kind else None, "error_kind": error_kind}


DOWN = "down"


def test_role_replies_of_a_master_and_a_replica_parse_flat():
    assert parse_role(["master", 3129659, [["10.0.2.1", "6379", "3129242"]]]) == {
        "role": "master", "offset": 3129659, "master": None, "link": None}
    assert parse_role(["slave", "10.0.1.1", 6379, "connected", 3167038]) == {
        "role": "replica", "master": "10.0.1.1:6379", "link": "up", "offset": 3167038}
    assert parse_role(["slave", "10.0.1.1", 6379, "connect", -1])["link"] == "down"


def test_first_deploy_takes_the_databases_primary_region():
    states = {"us-east": [node("a", error_kind=DOWN)], "us-west": [node("b", error_kind=DOWN)]}
    region, reason = decide_writable_region(states, "us-east")
    assert region == "us-east"
    assert reason.startswith("no Redis server answered: first deploy")


def test_the_live_master_decides_after_an_in_region_failover():
    states = {"us-east": [node("a1", "replica", "10.0.1.2:6379"), node("a2", "master")],
              "us-west": [node("b1", "replica", "10.0.1.2:6379")]}
    assert decide_writable_region(states, "us-east") == ("us-east",
                                                         "us-east has the only Redis master")


def test_masters_in_two_regions_are_refused_naming_both():
    states = {"us-east": [node("a1", "master")], "us-west": [node("b1", "master")]}
    with pytest.raises(RedisProblem, match=r"more than one region \(us-east: a1:6379; "
                                           r"us-west: b1:6379\)"):
        decide_writable_region(states, "us-east")


def test_redis_writable_elsewhere_than_postgresql_is_refused():
    states = {"us-east": [node("a1", "replica", "b1:6379")], "us-west": [node("b1", "master")]}
    with pytest.raises(RedisProblem, match="takes writes in us-west but PostgreSQL's primary "
                                           "region is us-east"):
        decide_writable_region(states, "us-east")


def test_a_refused_password_stops_the_run_naming_the_servers():
    states = {"us-east": [node("a1", error_kind="auth")], "us-west": [node("b1", "master")]}
    with pytest.raises(RedisProblem, match=r"Redis at a1:6379 refused the password: "
                                           r"redis_password in the inventory"):
        decide_writable_region(states, "us-west")


def test_primary_region_down_with_replicas_elsewhere_keeps_the_databases_region():
    states = {"us-east": [node("a1", error_kind=DOWN)],
              "us-west": [node("b1", "replica", "a1:6379")]}
    region, reason = decide_writable_region(states, "us-east")
    assert region == "us-east" and reason.startswith("no Redis master answered")


WANTED = {"quorum": 2, "down_after_milliseconds": 5000, "failover_timeout": 60000,
          "parallel_syncs": 1}


def test_a_missing_monitor_is_added_with_its_password_and_settings():
    assert monitor_commands("baton", None, "present", "10.0.1.1", 6379, "pw", WANTED) == [
        ["SENTINEL", "MONITOR", "baton", "10.0.1.1", "6379", "2"],
        ["SENTINEL", "SET", "baton", "auth-pass", "pw"],
        ["SENTINEL", "SET", "baton", "down-after-milliseconds", "5000"],
        ["SENTINEL", "SET", "baton", "failover-timeout", "60000"],
        ["SENTINEL", "SET", "baton", "parallel-syncs", "1"],
    ]


def test_an_existing_monitor_keeps_its_address_and_only_differing_settings_are_set():
    current = {"name": "baton", "ip": "10.0.1.2", "port": "6379", "quorum": "2",
               "down-after-milliseconds": "30000", "failover-timeout": "60000",
               "parallel-syncs": "1"}
    assert monitor_commands("baton", current, "present", "10.0.1.1", 6379, "pw", WANTED) == [
        ["SENTINEL", "SET", "baton", "down-after-milliseconds", "5000"]]
    current["down-after-milliseconds"] = "5000"
    assert monitor_commands("baton", current, "present", "10.0.1.1", 6379, "pw", WANTED) == []


def test_an_idle_region_removes_a_monitor_and_leaves_none_alone():
    assert monitor_commands("baton", {"name": "baton"}, "absent", None, 6379, None, WANTED) == [
        ["SENTINEL", "REMOVE", "baton"]]
    assert monitor_commands("baton", None, "absent", None, 6379, None, WANTED) == []


def test_sentinel_masters_reads_both_reply_shapes():
    flat = [["name", "baton", "ip", "10.0.1.1", "quorum", "2"]]
    parsed = {"baton": {"name": "baton", "ip": "10.0.1.1", "quorum": 2}}
    assert masters_by_name(flat)["baton"]["ip"] == "10.0.1.1"
    assert masters_by_name(parsed)["baton"]["quorum"] == 2
    assert masters_by_name([]) == {}


def test_live_config_changes_compare_as_config_get_prints():
    current = {"maxmemory": "268435456", "appendonly": "yes", "save": "3600 1 300 100"}
    assert config_settings_to_set(current, {"maxmemory": 268435456, "appendonly": True,
                                            "save": "3600 1 300 100"}) == {}
    assert config_settings_to_set(current, {"maxmemory": 536870912, "appendonly": False}) == {
        "maxmemory": "536870912", "appendonly": "no"}
    assert redis_value(True) == "yes" and redis_value(0) == "0"


GROUPS = {"all": ["g1", "a1", "a2", "a3", "b1", "b2", "b3"],
          "regions": ["a1", "a2", "a3", "b1", "b2", "b3"]}


def hostvars(**extra):
    hv = {"g1": {"baton_site": "global", "baton_address": "10.0.9.1"}}
    for prefix, site, net in (("a", "us-east", 1), ("b", "us-west", 2)):
        for i in (1, 2, 3):
            hv[f"{prefix}{i}"] = {"baton_site": site, "baton_address": f"10.0.{net}.{i}",
                                  "redis_password": "pw", "redis_sentinel_quorum": 2}
    for host, values in extra.items():
        hv[host].update(values)
    return hv


def test_a_sane_redis_tier_has_no_problems():
    assert baton_redis_problems(GROUPS, hostvars(), ["us-east", "us-west"]) == []


def test_a_quorum_larger_than_the_regions_sentinels_is_one_sentence():
    problems = baton_redis_problems(GROUPS, hostvars(b1={"redis_sentinel_quorum": 4}),
                                    ["us-east", "us-west"])
    assert problems == ["region us-west has 3 Sentinel(s) (b1, b2, b3) but "
                        "redis_sentinel_quorum is 4: set it from 1 to 3 (a majority of them, "
                        "2, is the usual choice)"]


def test_a_region_without_redis_hosts_is_refused():
    off = {"redis_enabled": False}
    problems = baton_redis_problems(GROUPS, hostvars(b1=off, b2=off, b3=off),
                                    ["us-east", "us-west"])
    assert problems == ["region us-west has no Redis host: set redis_enabled true on at least "
                        "one of its hosts (Redis must run in every region so that it can take "
                        "the baton)"]


def test_a_missing_password_is_refused():
    problems = baton_redis_problems(GROUPS, hostvars(a1={"redis_password": ""}), None)
    assert problems == ["region us-east: redis_password is not set: set it (from "
                        "ansible-vault) for every Redis host"]


def test_the_preflights_quorum_default_is_the_roles():
    defaults = yaml.safe_load((ROOT / "roles/redis_sentinel/defaults/main.yml").read_text())
    assert defaults["redis_sentinel_quorum"] == SENTINEL_QUORUM_DEFAULT


def test_replication_chain_on_a_first_deploy():
    hv = hostvars()
    sources = {h: baton_redis_source(h, GROUPS, hv, "us-east") for h in GROUPS["regions"]}
    assert sources == {"a1": None, "a2": "10.0.1.1 6379", "a3": "10.0.1.1 6379",
                       "b1": "10.0.1.1 6379", "b2": "10.0.2.1 6379", "b3": "10.0.2.1 6379"}


def test_replication_chain_follows_the_live_master_after_a_failover():
    hv = hostvars()
    masters = {"us-east": "10.0.1.2:6379", "us-west": None}
    assert baton_redis_source("a1", GROUPS, hv, "us-east", masters) == "10.0.1.2 6379"
    assert baton_redis_source("a2", GROUPS, hv, "us-east", masters) is None
    assert baton_redis_source("b1", GROUPS, hv, "us-east", masters) == "10.0.1.2 6379"
    assert baton_redis_master("us-west", GROUPS, hv, masters) == "10.0.2.1 6379"


def test_passwords_are_quoted_for_redis_conf():
    assert baton_redis_quote('a b"c\\d') == '"a b\\"c\\\\d"'


def test_an_acl_user_gets_exactly_its_password_hash_and_rules():
    args = acl_setuser_args("s3cret", "~* &* +@all -@admin -@dangerous")
    assert args[:2] == ["reset", "on"]  # nothing kept from before
    assert args[2] == "#" + hashlib.sha256(b"s3cret").hexdigest()
    assert "s3cret" not in " ".join(args)  # never the password itself
    assert args[3:] == ["~*", "&*", "+@all", "-@admin", "-@dangerous"]


def test_clients_speak_tls_against_the_ca_once_use_tls_is_given_it():
    import redis as redis_py
    from baton_redis import client, use_tls

    try:
        use_tls("/etc/ssl/baton/ca.crt")
        pool = client("10.0.1.1", 6379, "pw", 1.0).connection_pool
        assert pool.connection_class is redis_py.SSLConnection
        assert pool.connection_kwargs["ssl_ca_certs"] == "/etc/ssl/baton/ca.crt"
        assert pool.connection_kwargs["ssl_cert_reqs"] == "required"
        assert pool.connection_kwargs["ssl_check_hostname"] is True
        use_tls("")
        assert client("10.0.1.1", 6379, "pw", 1.0).connection_pool.connection_class \
            is redis_py.Connection
    finally:
        use_tls("")


def _acl_allows(patterns, name):
    """Whether one of ACL key or channel patterns admits name (Redis's glob: [^...] negates)."""
    from fnmatch import fnmatchcase

    return any(fnmatchcase(name, p[1:].replace("[^", "[!")) for p in patterns)


def test_the_applications_user_reaches_every_name_but_those_baton_and_sentinel_keep():
    from baton_redis import HANDOVER_KEY, acl_rule_words

    defaults = yaml.safe_load((ROOT / "roles/redis/defaults/main.yml").read_text())
    words = acl_rule_words(defaults["redis_app_rules"])
    root = [w for w in words if not w.startswith("(")]
    keys = [w for w in root if w.startswith("~")]
    channels = [w for w in root if w.startswith("&")]  # what it may PUBLISH on
    for name in ("session:42", "baton:probe:x", "_private", "a", "x_y", "baton:"):
        assert _acl_allows(keys, name), name
    assert not _acl_allows(keys, HANDOVER_KEY)
    assert not _acl_allows(keys, "__anything")
    for name in ("news", "_x", "a__b"):
        assert _acl_allows(channels, name), name
    assert not _acl_allows(channels, "__sentinel__:hello")
    assert {"-@admin", "-@dangerous"} <= set(root)
    # It subscribes to anything, by name or pattern (Redis checks a PSUBSCRIBE pattern as
    # written), through a selector that grants nothing else.
    selectors = [w for w in words if w.startswith("(")]
    assert selectors == ["(&* -@all +subscribe +psubscribe +ssubscribe)"]


def test_an_acl_selector_stays_one_argument_and_an_open_one_is_refused():
    from baton_redis import acl_rule_words

    assert acl_rule_words("~a* +get (~b* +set) &c") == ["~a*", "+get", "(~b* +set)", "&c"]
    assert acl_rule_words("(+ping)") == ["(+ping)"]
    with pytest.raises(RedisProblem, match="not closed"):
        acl_rule_words("+get (~b* +set")


def test_the_applications_sentinel_user_cannot_move_the_master_or_speak_for_a_sentinel():
    defaults = yaml.safe_load((ROOT / "roles/redis_sentinel/defaults/main.yml").read_text())
    words = defaults["redis_sentinel_client_rules"].split()
    assert words.index("-@all") < words.index("+sentinel|get-master-addr-by-name")
    granted = {w[1:] for w in words if w.startswith("+")}
    assert not granted & {"sentinel", "sentinel|failover", "sentinel|set", "sentinel|remove",
                          "sentinel|monitor", "sentinel|reset", "publish", "acl", "config",
                          "sentinel|config", "sentinel|flushconfig", "shutdown"}


def test_a_server_that_still_speaks_plain_text_stops_the_run_before_anything_changes():
    old = node("10.0.1.1", None, error_kind="plain")
    states = {"us-east": [old], "us-west": [node("10.0.2.1", "replica", "10.0.1.1:6379")]}
    with pytest.raises(RedisProblem, match=r"10\.0\.1\.1:6379 speaks plain text, not TLS"):
        decide_writable_region(states, "us-east")


def test_a_failed_tls_handshake_is_told_apart_from_a_dead_server():
    from baton_redis import _error_kind

    class ConnectionError(Exception):  # redis-py's names, as _error_kind reads them
        pass

    assert _error_kind(ConnectionError("Error 1 connecting to 10.0.1.1:6379. [SSL] record "
                                       "layer failure (_ssl.c:1029).")) == "tls"
    assert _error_kind(ConnectionError("Error 111 connecting to 10.0.1.1:6379. Connection "
                                       "refused.")) == "down"
    assert _error_kind(ConnectionError("invalid username-password pair")) == "auth"


def test_the_plain_text_probe_ignores_use_tls():
    import redis as redis_py
    from baton_redis import client, use_tls

    try:
        use_tls("/etc/ssl/baton/ca.crt")
        pool = client("10.0.1.1", 6379, None, 1.0, once=True, tls=False).connection_pool
        assert pool.connection_class is redis_py.Connection
    finally:
        use_tls("")

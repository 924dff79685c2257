"""DNS records and scrape targets from the inventory; the alert rules' tests; the dashboard."""

import json
import re
from pathlib import Path

import bcrypt
import pytest
import yaml
from ansible.errors import AnsibleFilterError
from baton_monitoring import (
    baton_prometheus_servers,
    baton_scrape_targets,
    baton_web_password_hash,
)
from baton_zone import baton_address_regions, baton_dns_label, baton_dns_records

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "roles/prometheus/templates/baton-dr.rules.yml.j2"
RULE_TESTS = ROOT / "tests/promtool/baton-dr.test.yml"

HOSTVARS = {
    "gtm-1": {"baton_site": "global", "baton_address": "10.0.9.1"},
    "a1": {"baton_site": "us-east", "baton_address": "10.0.1.1",
           "exporters_targets": [{"job": "node", "port": 9100},
                                 {"job": "patroni", "port": 8008, "scheme": "https"}]},
    "a2": {"baton_site": "us-east", "baton_address": "10.0.1.2",
           "exporters_targets": [{"job": "node", "port": 9100}]},
    "b1": {"baton_site": "us-west", "baton_address": "10.0.2.1"},
}
REGIONS = {"us-east": ["a1", "a2"], "us-west": ["b1"]}


def _records(**kw):
    args = {"database_region": "us-east", "redis_regions": REGIONS, "redis_region": "us-east"}
    args.update(kw)
    return {(r["name"], r["type"]): r for r in baton_dns_records(
        REGIONS, HOSTVARS, "baton.internal", ["gtm-1", "a1", "a2", "b1"], **args)}


def test_zone_has_a_name_server_per_host_and_read_only_names_per_region():
    records = _records()
    assert records[("@", "NS")]["values"] == [
        "ns-a1.baton.internal.", "ns-a2.baton.internal.", "ns-b1.baton.internal.",
        "ns-gtm-1.baton.internal."]
    assert records[("ns-gtm-1", "A")]["values"] == ["10.0.9.1"]
    assert records[("db-ro.us-east", "A")]["values"] == ["10.0.1.1", "10.0.1.2"]
    assert records[("db-ro.us-west", "A")]["values"] == ["10.0.2.1"]


def test_only_db_and_redis_are_failover_records_and_point_at_the_given_regions():
    records = _records(database_region="us-west", redis_region="us-east")
    assert sorted(k for k, r in records.items() if r["failover"]) == [("db", "A"), ("redis", "A")]
    assert records[("db", "A")]["values"] == ["10.0.2.1"]
    assert records[("redis", "A")]["values"] == ["10.0.1.1", "10.0.1.2"]


def test_a_primary_region_without_hosts_is_one_clear_error():
    with pytest.raises(AnsibleFilterError, match="'eu-west' has no hosts"):
        _records(database_region="eu-west")


@pytest.mark.parametrize("name, label", [("us_east", "us-east"), ("DB-1", "db-1")])
def test_names_become_dns_labels(name, label):
    assert baton_dns_label(name) == label


def test_a_name_that_cannot_be_a_label_is_refused():
    with pytest.raises(AnsibleFilterError, match="cannot be a DNS label"):
        baton_dns_label("db.1")


def test_addresses_map_back_to_their_site():
    groups = {"all": ["gtm-1", "a1", "b1"]}
    assert baton_address_regions(groups, HOSTVARS) == {
        "10.0.9.1": "global", "10.0.1.1": "us-east", "10.0.2.1": "us-west"}


def test_each_region_s_first_host_runs_its_prometheus():
    assert baton_prometheus_servers(REGIONS) == {"us-east": "a1", "us-west": "b1"}


def test_scrape_targets_group_what_each_host_runs_by_job_and_skip_unknown_hosts():
    assert baton_scrape_targets(["a1", "a2", "b1"], HOSTVARS) == {
        "node": [{"host": "a1", "target": "10.0.1.1:9100", "site": "us-east", "scheme": "http"},
                 {"host": "a2", "target": "10.0.1.2:9100", "site": "us-east", "scheme": "http"}],
        "patroni": [{"host": "a1", "target": "10.0.1.1:8008", "site": "us-east",
                     "scheme": "https"}],
    }


def _alert_names() -> list[str]:
    return re.findall(r"^\s+- alert: (\w+)$", RULES.read_text(), flags=re.M)


def test_every_alert_rule_has_a_firing_case_in_the_promtool_tests():
    cases = yaml.safe_load(RULE_TESTS.read_text())["tests"]
    firing = {m for case in cases for expr in case.get("promql_expr_test", [])
              for sample in expr.get("exp_samples", [])
              for m in re.findall(r'alertname="(\w+)",alertstate="firing"', sample["labels"])}
    assert len(_alert_names()) >= 8
    assert sorted(set(_alert_names()) - firing) == []


def test_the_healthy_case_expects_no_alert_at_all():
    healthy = yaml.safe_load(RULE_TESTS.read_text())["tests"][0]
    assert healthy["name"] == "healthy"
    assert {"expr": "ALERTS", "eval_time": "5m", "exp_samples": []} in healthy["promql_expr_test"]


def test_dashboard_is_grafana_json_on_a_prometheus_datasource_variable():
    dashboard = json.loads((ROOT / "dashboards/baton-dr.json").read_text())
    assert dashboard["templating"]["list"][0]["type"] == "datasource"
    titles = [p["title"] for p in dashboard["panels"]]
    for topic in ("Regions", "roles", "WAL", "Failover history", "each tier's writer", "Backups",
                  "WAL archive", "Restore drills"):
        assert any(topic in t for t in titles), topic
    for panel in dashboard["panels"]:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


@pytest.mark.parametrize("template", ["pgbouncer-exporter.env.j2", "postgres-exporter.default.j2"])
def test_exporter_connection_strings_carry_any_password_intact(template):
    """A password is URL-encoded in the exporters' connection strings, '/' included (base64
    passwords have it; Jinja's urlencode leaves it, which would end the URL's host part)."""
    import urllib.parse

    import jinja2

    source = (ROOT / "roles/exporters/templates" / template).read_text()
    password = "a/b+c=d%e'f$g:h@i"
    text = jinja2.Environment(undefined=jinja2.StrictUndefined).from_string(source).render(
        ansible_managed="managed", exporters_monitoring_username="baton_monitor",
        exporters_monitoring_password=password, exporters_pgbouncer_service_port=6432,
        exporters_postgresql_port=5432, exporters_address="10.0.1.1",
        exporters_pgbouncer_port=9127, exporters_postgres_port=9187)
    url = re.search(r"='(postgres(?:ql)?://[^']*)'", text).group(1)
    parsed = urllib.parse.urlsplit(url)
    assert (parsed.hostname, parsed.port) == ("127.0.0.1", 5432 if "postgres-" in template
                                              else 6432)
    assert urllib.parse.unquote(parsed.password) == password


def test_the_web_password_hash_checks_and_a_rerun_writes_the_same_one():
    first = baton_web_password_hash("s3cret", "global-1")
    assert first.startswith("$2b$10$")
    assert bcrypt.checkpw(b"s3cret", first.encode())
    assert not bcrypt.checkpw(b"other", first.encode())
    assert baton_web_password_hash("s3cret", "global-1") == first  # idempotent file
    assert baton_web_password_hash("s3cret", "us-east-1") != first  # a salt per host
    assert baton_web_password_hash("new", "global-1") != first
    with pytest.raises(AnsibleFilterError, match="the password is empty"):
        baton_web_password_hash("", "global-1")

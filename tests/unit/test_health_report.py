"""What health.yml prints and exports from a baton_assess result."""

from baton_health import baton_health_metrics, baton_health_rows

ASSESSMENT = {
    "regions": {
        "us-east": {"verdict": "healthy", "reasons": [],
                    "facts": {"patroni": {"cluster_role": "primary", "leader": "us-east-1"},
                              "redis": {"us-east-1": {"ok": True, "role": "master"}}}},
        "us-west": {"verdict": "unhealthy",
                    "reasons": ["no node of the region answers (down or cut off)"],
                    "facts": {"patroni": {"cluster_role": None, "leader": None}, "redis": {}}},
    },
    "global": {"baton_holder": "us-east", "writable_regions": ["us-east"],
               "candidates": [{"region": "us-west", "data_loss_bytes": 4096}]},
    "problems": ["us-west is unhealthy: no node of the region answers (down or cut off)"],
    "elapsed": 2.1,
}


def test_each_region_gets_one_line_with_its_verdict_role_loss_and_reasons():
    rows = baton_health_rows(ASSESSMENT)
    assert rows[0].split() == ["us-east", "healthy", "db=PRIMARY(us-east-1)", "loss=-",
                               "redis=master"]
    assert rows[1].startswith("us-west   unhealthy db=-(no leader) loss=4096B redis=-  ! no node")
    assert rows[2] == "baton: us-east; writable: us-east; failover candidates: us-west"


def test_verdicts_become_metrics_labelled_by_the_assessed_region():
    lines = baton_health_metrics(ASSESSMENT, 1700000000.0).splitlines()
    assert 'baton_region_status{assessed_region="us-west"} 2.0' in lines
    assert 'baton_region_holds_baton{assessed_region="us-east"} 1.0' in lines
    assert 'baton_region_data_loss_bytes{assessed_region="us-west"} 4096.0' in lines
    assert "baton_writable_regions 1.0" in lines and "baton_health_problems 1.0" in lines

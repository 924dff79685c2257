"""After the mini lab's tests: the lab tool refuses containers it did not make or that are
stale, and `lab-down` leaves no container, network, firewall rule or route behind."""

from __future__ import annotations

from test_lab import ROOT, lab_containers, labctl, one_error_line, sh


def test_stale_container_from_an_earlier_run_is_refused(mini_lab):
    assert labctl("down").returncode == 0
    image = labctl("image-ref").stdout.strip()
    stale = sh("podman", "create", "--name", "baton-us-east-1", "--label", "baton.lab=1",
               "--label", "baton.lab.config=from-an-earlier-run", image, "/sbin/init")
    assert stale.returncode == 0, stale.stderr
    proc = labctl("up", "--size", "mini")
    assert proc.returncode == 2
    assert one_error_line(proc) == (
        "lab: error: container baton-us-east-1 is stale, left from an earlier lab run with "
        "another image or address: run 'make lab-down', then 'make lab-up'")
    assert labctl("down").returncode == 0

    foreign = sh("podman", "create", "--name", "baton-us-east-1", image, "/sbin/init")
    assert foreign.returncode == 0, foreign.stderr
    try:
        proc = labctl("up", "--size", "mini")
        assert proc.returncode == 2
        assert one_error_line(proc) == (
            "lab: error: container baton-us-east-1 exists but was not made by the lab: remove "
            "it (podman rm -f baton-us-east-1) and re-run")
    finally:
        sh("podman", "rm", "-f", "baton-us-east-1")


def test_lab_down_leaves_no_containers_networks_or_firewall_rules(mini_lab):
    assert labctl("up", "--size", "mini").returncode == 0
    assert labctl("partition", "eu-west").returncode == 0
    down = labctl("down")
    assert down.returncode == 0, down.stderr
    assert lab_containers() == []
    assert sh("podman", "network", "ls", "--filter", "label=baton.lab=1", "--format",
              "{{.Name}}").stdout.split() == []
    rules = sh("iptables-save").stdout
    assert "BATON-LAB" not in rules and "baton-partition" not in rules
    assert "10.231." not in sh("ip", "route", "show", "type", "unreachable").stdout
    assert not (ROOT / ".lab/size").exists()
    assert labctl("status").returncode == 3

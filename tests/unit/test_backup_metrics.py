"""The repository host's backup metrics (roles/pgbackrest/files/baton_backup_metrics.py)."""

import importlib.util
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "baton_backup_metrics",
    Path(__file__).resolve().parents[2] / "roles/pgbackrest/files/baton_backup_metrics.py")
metrics = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(metrics)

INFO = [{"name": "baton", "status": {"code": 0, "message": "ok"}, "backup": [
    {"label": "F1", "type": "full", "timestamp": {"start": 100, "stop": 160},
     "info": {"size": 4000}},
    {"label": "D1", "type": "diff", "timestamp": {"start": 200, "stop": 230},
     "info": {"size": 5000}},
    {"label": "D0", "type": "diff", "timestamp": {"start": 150, "stop": 170}, "error": True,
     "info": {"size": 1}},
]}]


def values(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if not line.startswith("#"))


def test_the_newest_backup_of_each_type_its_size_and_duration():
    got = values(metrics.render("baton", INFO, "", {"full": 0, "diff": 1}, 1000.4))
    assert got['baton_backup_info_up{stanza="baton"}'] == "1"
    assert got['baton_backup_last_success_timestamp_seconds{stanza="baton",type="full"}'] == "160"
    assert got['baton_backup_last_success_timestamp_seconds{stanza="baton",type="diff"}'] == "230"
    assert 'baton_backup_last_success_timestamp_seconds{stanza="baton",type="incr"}' not in got
    assert got['baton_backup_count{stanza="baton",type="diff"}'] == "1"  # not the failed one
    assert got['baton_backup_last_size_bytes{stanza="baton"}'] == "5000"
    assert got['baton_backup_last_duration_seconds{stanza="baton"}'] == "30"
    assert got['baton_backup_unit_failed{stanza="baton",type="diff"}'] == "1"
    assert got['baton_backup_metrics_timestamp_seconds{stanza="baton"}'] == "1000"


def test_an_unreadable_repository_says_down_and_nothing_else_of_it():
    got = values(metrics.render("baton", [], "unable to connect", {"full": 0, "diff": 0}, 5))
    assert got['baton_backup_info_up{stanza="baton"}'] == "0"
    assert not [k for k in got if k.startswith("baton_backup_last_success")]


def test_after_a_backup_its_own_outcome_counts_not_the_units_state(tmp_path, monkeypatch):
    """In ExecStopPost the unit is not failed yet: $SERVICE_RESULT says how the backup ended."""
    monkeypatch.setattr(metrics, "read_info", lambda stanza: (INFO, ""))
    monkeypatch.setattr(metrics, "unit_failed", lambda kind: 0)
    assert metrics.main(["x", "baton", str(tmp_path / "tf"), "diff", "exit-code"]) == 0
    got = values((tmp_path / "tf" / "baton_backup.prom").read_text())
    assert got['baton_backup_unit_failed{stanza="baton",type="diff"}'] == "1"
    assert got['baton_backup_unit_failed{stanza="baton",type="full"}'] == "0"
    assert metrics.main(["x", "baton", str(tmp_path / "tf"), "diff", "success"]) == 0
    got = values((tmp_path / "tf" / "baton_backup.prom").read_text())
    assert got['baton_backup_unit_failed{stanza="baton",type="diff"}'] == "0"


BACKUP_SPEC = importlib.util.spec_from_file_location(
    "baton_backup", Path(__file__).resolve().parents[2] / "roles/pgbackrest/files/baton_backup.py")
backup = importlib.util.module_from_spec(BACKUP_SPEC)
BACKUP_SPEC.loader.exec_module(backup)

# What pgBackRest 2.55 prints when it finds no primary among the nodes it asked.
STANDBYS_ONLY = ("ERROR: [056]: unable to find primary cluster - cannot proceed\n"
                 "       HINT: are all available clusters in recovery?\n")
NODE_DOWN = ("WARN: unable to check pg2: [HostConnectError] raised from remote-0 tls protocol on "
             "'10.231.2.12': unable to connect to '10.231.2.12:8432'\n" + STANDBYS_ONLY)


def test_a_regions_backup_is_skipped_only_when_every_node_answered_in_recovery():
    assert backup.no_primary_only(56, STANDBYS_ONLY)
    assert not backup.no_primary_only(56, NODE_DOWN)  # a node did not answer: that fails
    assert not backup.no_primary_only(56, "ERROR: [056]: more than one primary cluster found")
    assert not backup.no_primary_only(0, STANDBYS_ONLY)
    assert not backup.no_primary_only(82, "ERROR: [082]: WAL segment was not archived")


ARCHIVE_SPEC = importlib.util.spec_from_file_location(
    "baton_archive_metrics",
    Path(__file__).resolve().parents[2] / "roles/pgbackrest/files/baton_archive_metrics.py")
archive = importlib.util.module_from_spec(ARCHIVE_SPEC)
ARCHIVE_SPEC.loader.exec_module(archive)


def test_the_archiving_metrics_say_who_archives_and_when_it_last_worked_and_failed():
    text = archive.render([0, 1700.5, 1600.25, 42, 3], now=1800)
    got = values(text)
    assert got["baton_archive_up"] == "1" and got["baton_archive_primary"] == "1"
    assert got["baton_archive_last_success_timestamp_seconds"] == "1700.500"
    assert got["baton_archive_last_failure_timestamp_seconds"] == "1600.250"
    assert (got["baton_archive_archived_total"], got["baton_archive_failed_total"]) == ("42", "3")
    assert values(archive.render([1, 0, 0, 0, 0], now=1800))["baton_archive_primary"] == "0"
    down = values(archive.render([], now=1800))
    assert down["baton_archive_up"] == "0" and "baton_archive_primary" not in down

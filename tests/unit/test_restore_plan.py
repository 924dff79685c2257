"""restore.yml's plan over `pgbackrest info --output=json`: the backup it picks, the target
options it passes, and the one-sentence refusals for what the repository cannot restore."""

import json

from baton_restore import (
    baton_in_place_step,
    baton_recovery_short,
    baton_restore_plan,
    parse_lsn,
    parse_time,
)

NOW = 1765011600.0  # 2025-12-06 09:00:00+00


def backup(label, start, stop, lsn_stop, wal_stop, kind="full", size=30 * 2 ** 20):
    return {"label": label, "type": kind, "timestamp": {"start": start, "stop": stop},
            "archive": {"start": wal_stop, "stop": wal_stop}, "info": {"size": size},
            "lsn": {"start": "0/1000028", "stop": lsn_stop}, "database": {"id": 1, "repo-key": 1}}


INFO = [{
    "name": "baton", "status": {"code": 0, "message": "ok"},
    "backup": [
        backup("20251206-080000F", 1765008000, 1765008060, "0/4000100", "000000010000000000000004"),
        backup("20251206-083000F_20251206-083000D", 1765009800, 1765009830, "0/8000100",
               "000000010000000000000008", kind="diff", size=2 ** 20),
    ],
    "archive": [{"database": {"id": 1, "repo-key": 1}, "id": "17-1",
                 "min": "000000010000000000000001", "max": "00000002000000000000000C"}],
}]


def test_a_time_picks_the_newest_backup_that_ended_before_it():
    plan = baton_restore_plan(json.dumps(INFO), "time", "2025-12-06 08:20:00+00", now=NOW)
    assert plan["refusal"] == ""
    assert plan["set"] == "20251206-080000F"
    assert plan["target_options"] == ["--type=time", "--target=2025-12-06 08:20:00+00",
                                      "--target-action=promote"]
    later = baton_restore_plan(INFO, "time", "2025-12-06T08:45:00Z", now=NOW)
    assert later["set"] == "20251206-083000F_20251206-083000D"


def test_the_plan_states_what_it_copies_and_replays_at_most():
    plan = baton_restore_plan(INFO, "latest", "", now=NOW)
    assert plan["set"] == "20251206-083000F_20251206-083000D" and plan["target_options"] == []
    assert plan["wal_bytes_at_most"] == (0xC - 0x8) * 16 * 2 ** 20  # on timeline 2 after a move
    assert "from backup 20251206-083000F_20251206-083000D (diff" in plan["text"]
    assert plan["estimate_seconds"] > 0


def test_a_time_before_the_oldest_backup_is_refused_in_one_sentence():
    plan = baton_restore_plan(INFO, "time", "2025-12-06 07:59:00+00", now=NOW)
    assert plan["refusal"] == ("target_time 2025-12-06 07:59:00+00 is before the oldest backup's "
                               "end (20251206-080000F, 2025-12-06 08:01:00+00): the repository "
                               "cannot go back that far.")


def test_a_time_in_the_future_or_without_a_zone_is_refused():
    assert "is in the future" in baton_restore_plan(INFO, "time", "2025-12-06 10:00:00+00",
                                                    now=NOW)["refusal"]
    assert "is not a time with its zone" in baton_restore_plan(INFO, "time",
                                                               "2025-12-06 08:20:00",
                                                               now=NOW)["refusal"]


def test_an_lsn_picks_by_the_backups_stop_lsn():
    assert baton_restore_plan(INFO, "lsn", "0/9000000", now=NOW)["set"] == \
        "20251206-083000F_20251206-083000D"
    assert baton_restore_plan(INFO, "lsn", "0/5000000", now=NOW)["set"] == "20251206-080000F"
    assert "before the oldest backup's end" in baton_restore_plan(INFO, "lsn", "0/3000000",
                                                                  now=NOW)["refusal"]
    assert "is not an LSN" in baton_restore_plan(INFO, "lsn", "5000000", now=NOW)["refusal"]


def test_a_repository_that_does_not_answer_or_has_no_backup_is_refused():
    down = baton_restore_plan("", "latest", "", rc=1,
                              stderr="ERROR: [105]: unable to connect to 10.231.0.11:8432")
    assert down["refusal"].startswith("the repository did not answer (pgbackrest info: ERROR: "
                                      "[105]: unable to connect to 10.231.0.11:8432)")
    empty = [dict(INFO[0], backup=[], status={"code": 2, "message": "no valid backups"})]
    assert baton_restore_plan(empty, "latest", "")["refusal"] == (
        "stanza baton cannot be restored from the repository: no valid backups "
        "(pgbackrest info).")
    assert "knows no stanza" in baton_restore_plan("[]", "latest", "")["refusal"]


def test_times_and_lsns_parse_as_postgresql_writes_them():
    assert parse_time("2025-12-06 08:20:00+00").timestamp() == 1765009200
    assert parse_time("2025-12-06 09:20:00+0100").timestamp() == 1765009200
    assert parse_lsn("1/0") == 2 ** 32 and parse_lsn("0/5000060") == 0x5000060


def test_a_restore_point_starts_from_the_oldest_backup():
    """When the named point was made is unknown: a newer backup may have ended after it."""
    stanza = [{"name": "baton", "status": {"code": 0}, "archive": [
        {"max": "000000010000000000000030"}], "backup": [
        {"label": "F1", "type": "full", "timestamp": {"start": 100, "stop": 160},
         "lsn": {"stop": "0/3000000"}, "archive": {"stop": "000000010000000000000003"},
         "info": {"size": 10}},
        {"label": "F2", "type": "full", "timestamp": {"start": 200, "stop": 260},
         "lsn": {"stop": "0/9000000"}, "archive": {"stop": "000000010000000000000009"},
         "info": {"size": 10}}]}]
    got = baton_restore_plan(stanza, "name", "before-migration", now=1000)
    assert got["refusal"] == "" and got["set"] == "F1"
    assert got["newest_wal"] == "000000010000000000000030"


def test_a_restore_to_the_latest_wal_that_stopped_at_a_hole_says_so():
    assert baton_recovery_short("000000020000000000000031", "000000010000000000000030") == ""
    assert baton_recovery_short("000000020000000000000030", "000000010000000000000030") == ""
    said = baton_recovery_short("000000020000000000000012", "000000010000000000000030")
    assert "before the newest archived one (000000010000000000000030)" in said
    assert baton_recovery_short("", "000000010000000000000030") == ""


def in_repo(entry, key):
    return dict(entry, database={"id": 1, "repo-key": key})


# Two repositories as a region node sees them: repo1 off-region (two fulls kept), repo2 the
# region's own (one full kept), each with the same WAL.
TWO = [{
    "name": "baton", "status": {"code": 0, "message": "ok"},
    "repo": [{"key": 1, "status": {"code": 0, "message": "ok"}},
             {"key": 2, "status": {"code": 0, "message": "ok"}}],
    "backup": [in_repo(b, 1) for b in INFO[0]["backup"]]
    + [in_repo(backup("20251206-083500F", 1765010100, 1765010130, "0/9000100",
                      "000000010000000000000009"), 2)],
    "archive": [in_repo(INFO[0]["archive"][0], 1), in_repo(INFO[0]["archive"][0], 2)],
}]


def test_the_regions_own_repository_is_used_first_and_named():
    plan = baton_restore_plan(TWO, "latest", "", now=NOW)
    assert (plan["refusal"], plan["repo"], plan["set"]) == ("", 2, "20251206-083500F")
    assert plan["repo_options"] == ["--repo=2"] and "repository repo2" in plan["text"]
    assert plan["passed_over"] == []


def test_a_target_the_regions_repository_cannot_reach_comes_from_the_other_one():
    plan = baton_restore_plan(TWO, "time", "2025-12-06 08:20:00+00", now=NOW)
    assert (plan["repo"], plan["set"]) == (1, "20251206-080000F")
    assert plan["passed_over"][0].startswith("repo2: target_time 2025-12-06 08:20:00+00 is "
                                             "before the oldest backup's end")


def test_a_deleted_repository_is_passed_over_and_a_named_one_is_kept_to():
    gone = [dict(TWO[0], status={"code": 4, "message": "different across repos"},
                 repo=[{"key": 1, "status": {"code": 0, "message": "ok"}},
                       {"key": 2, "status": {"code": 1, "message": "missing stanza path"}}],
                 backup=[b for b in TWO[0]["backup"] if b["database"]["repo-key"] == 1],
                 archive=[TWO[0]["archive"][0]])]
    plan = baton_restore_plan(gone, "latest", "", now=NOW)
    assert (plan["refusal"], plan["repo"]) == ("", 1)
    assert plan["passed_over"] == ["repo2: stanza baton cannot be restored from repo2: missing "
                                   "stanza path (pgbackrest info)."]
    assert baton_restore_plan(gone, "latest", "", now=NOW, repo=2)["refusal"] == (
        "stanza baton cannot be restored from repo2: missing stanza path (pgbackrest info).")
    assert baton_restore_plan(TWO, "latest", "", now=NOW, repo="1")["repo"] == 1
    assert baton_restore_plan(TWO, "latest", "", now=NOW, repo=3)["refusal"] == (
        "repo 3 is not one of this node's repositories (repo1, repo2): choose one of them.")


def test_restore_in_place_steps_from_the_note_an_earlier_run_left():
    step = baton_in_place_step
    target = {"key": "time", "value": "2026-12-06 08:30:00+00"}
    other = {"key": "time", "value": "2026-12-06 08:31:00+00"}
    assert step({}, target) == "restore"
    assert step(None, target) == "restore"
    assert step({"target": target, "state": "restored"}, target) == "restore"  # not promoted
    assert step({"target": target, "state": "promoted"}, target) == "resume"
    assert step({"target": target, "state": "done"}, target) == "done"
    assert step({"target": other, "state": "done"}, target) == "restore"
    assert step({"target": target, "state": "done"}, target, again=True) == "restore"
    assert step({"target": target, "state": "promoted"}, target, again=True) == "restore"

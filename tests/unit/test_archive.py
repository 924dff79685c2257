"""restore_command and the replica method from a backup (roles/patroni/files/baton_archive.py):
the decisions, on recorded pgBackRest answers."""

import importlib.util
import json
from pathlib import Path

SPEC = importlib.util.spec_from_file_location(
    "baton_archive", Path(__file__).resolve().parents[2] / "roles/patroni/files/baton_archive.py")
archive = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(archive)

WAL = "000000030000000000000042"


class Pgbackrest:
    """Answers by repository: (status, output); records each call."""

    def __init__(self, answers):
        self.answers = answers
        self.calls = []

    def __call__(self, cmd, limit, abort=None):
        repo = int(next(a for a in cmd if a.startswith("--repo="))[7:])
        self.calls.append((repo, cmd, limit))
        answer = self.answers[repo]
        answer = answer(cmd) if callable(answer) else answer
        return answer if len(answer) == 3 else (*answer, 0.2)


def get(runner, state=None, now=1000.0):
    lines = []
    state = {} if state is None else state
    code = archive.get("baton", [2, 1], WAL, "pg_wal/RECOVERYXLOG", state=state, now=now,
                       runner=runner, io_timeout=5, limit=60, skip_for=60, log=lines.append)
    return code, state, lines


def test_a_promotion_stops_the_call_under_way_and_a_repository_that_kept_it_waiting_is_noted():
    runner = Pgbackrest({2: (1, ""), 1: (archive.PROMOTING, "stopped after 2.1 s: a promotion "
                                                          "waits", 2.1)})
    code, state, lines = get(runner)
    assert code == 1 and state == {"1": 1000.0}
    assert lines == [f"baton-archive: repo1: stopped after 2.1 s: a promotion waits (for {WAL})"]
    # Stopped as it began, it is not held against the repository; nothing after it is asked.
    runner = Pgbackrest({2: (archive.PROMOTING, "stopped after 0.1 s: a promotion waits", 0.1),
                         1: (0, "")})
    code, state, _ = get(runner)
    assert code == 1 and state == {} and [c[0] for c in runner.calls] == [2]


def test_run_stops_a_command_when_asked_and_when_it_runs_too_long():
    code, output, took = archive.run(["sleep", "5"], 60, lambda: True)
    assert code == archive.PROMOTING and took < 2 and "a promotion waits" in output
    code, output, took = archive.run(["sleep", "5"], 0.3)
    assert code is None and output == "no answer within 0.3 s" and took < 2
    assert archive.run(["sh", "-c", "echo found; exit 0"], 5)[:2] == (0, "found")
    assert archive.run(["/nonexistent/pgbackrest"], 5)[:2] == (
        127, "cannot run /nonexistent/pgbackrest: No such file or directory")


def test_the_regions_own_repository_is_asked_first_and_answers():
    runner = Pgbackrest({2: (0, ""), 1: (0, "")})
    code, state, lines = get(runner)
    assert code == 0 and [c[0] for c in runner.calls] == [2]
    cmd = runner.calls[0][1]
    assert cmd[-3:] == ["archive-get", WAL, "pg_wal/RECOVERYXLOG"]
    assert "--no-archive-async" in cmd and "--io-timeout=5" in cmd
    assert state == {} and lines == []


def test_a_file_only_the_global_repository_has_comes_from_it():
    runner = Pgbackrest({2: (1, "unable to find"), 1: (0, "")})
    code, state, lines = get(runner)
    assert code == 0 and [c[0] for c in runner.calls] == [2, 1]
    assert state == {} and lines == []


def test_a_file_nowhere_is_not_found_and_no_repository_is_blamed():
    code, state, lines = get(Pgbackrest({2: (1, ""), 1: (1, "")}))
    assert code == 1 and state == {} and lines == []


def test_a_repository_that_does_not_answer_is_passed_over_for_a_while():
    runner = Pgbackrest({2: (1, ""), 1: (None, "no answer within 60 s")})
    code, state, lines = get(runner, now=1000.0)
    assert code == 1 and state == {"1": 1000.0}
    assert lines == ["baton-archive: repo1 did not answer for " + WAL
                     + " (no answer within 60 s); passed over for 60 s"]
    # Within the minute it is not asked again: a promotion waiting on this call does not wait.
    code, state, _ = get(runner, state=state, now=1030.0)
    assert code == 1 and [c[0] for c in runner.calls] == [2, 1, 2]
    # After it, it is asked again; an answer clears the note.
    runner.answers[1] = (0, "")
    code, state, _ = get(runner, state=state, now=1061.0)
    assert code == 0 and state == {} and [c[0] for c in runner.calls][-2:] == [2, 1]


def test_an_error_of_pgbackrest_is_never_a_status_that_aborts_recovery():
    # 39: HostConnectError; 127: no pgbackrest. PostgreSQL aborts recovery on a status > 125.
    for status in (39, 103, 127, 255):
        code, state, lines = get(Pgbackrest({2: (status, "ERROR: [039]: boom"), 1: (1, "")}))
        assert code == 1 and "2" in state and "ERROR: [039]: boom" in lines[0]


def test_main_reports_usage_errors_as_not_found(tmp_path):
    assert archive.main(["baton-archive", "get", WAL]) == 1
    assert archive.main(["baton-archive", "--bogus", "get", WAL, "x"]) == 1
    assert archive.main(["baton-archive", "get", WAL, "x"]) == 1  # no stanza


def info(backups, archive_max, code=0):
    return [{"name": "baton", "status": {"code": code, "message": "ok" if code == 0 else "no"},
             "backup": backups,
             "archive": [{"id": "17-1", "min": "000000010000000000000001", "max": archive_max}]}]


def backup(label, start_wal, stop, error=False):
    return {"label": label, "error": error, "timestamp": {"start": stop - 10, "stop": stop},
            "archive": {"start": start_wal, "stop": start_wal}}


def test_the_newest_backup_on_the_current_timeline_is_usable():
    got = archive.usable_backup(info([backup("F1", "000000010000000000000003", 100),
                                      backup("D2", "000000040000000000000020", 300)],
                                     "000000040000000000000031"))
    assert got == ("D2", "backup D2 (timeline 4)")


def test_a_backup_from_before_the_last_promotion_is_not_used():
    label, why = archive.usable_backup(info([backup("F1", "000000010000000000000003", 100)],
                                            "000000040000000000000031"))
    assert label is None
    assert why == "its newest backup F1 is on timeline 1, the archive goes on on timeline 4"


def test_failed_backups_empty_and_broken_stanzas_are_not_used():
    assert archive.usable_backup(info([backup("F1", "000000010000000000000003", 100, True)],
                                      "000000010000000000000009"))[0] is None
    assert archive.usable_backup(info([], "000000010000000000000009")) == (None, "no backup")
    assert archive.usable_backup(info([], "", code=1))[1] == "the stanza is not usable (no)"
    assert archive.usable_backup(info([], "", code=2)) == (None, "no backup")
    assert archive.usable_backup([])[0] is None


def test_clone_restores_from_the_first_repository_with_a_usable_backup():
    region = info([], "000000020000000000000010")  # a standby region: nothing of its own
    global_ = info([backup("F9", "000000020000000000000008", 50)], "000000020000000000000010")

    def answer(payload):
        def respond(cmd):
            return (0, json.dumps(payload)) if "info" in cmd else (0, "")
        return respond
    runner = Pgbackrest({2: answer(region), 1: answer(global_)})
    lines = []
    code = archive.clone("baton", [2, 1], "/var/lib/pg", runner=runner, log=lines.append)
    assert code == 0
    restore = runner.calls[-1][1]
    assert restore[-1] == "restore" and "--repo=1" in restore and "--set=F9" in restore
    assert "--type=standby" in restore and "--pg1-path=/var/lib/pg" in restore
    assert lines[0] == "baton-archive clone: repo2 passed over: no backup"
    assert lines[-1] == "baton-archive clone: restored F9 from repo1"


def test_clone_without_a_usable_backup_leaves_it_to_pg_basebackup():
    runner = Pgbackrest({2: (39, "ERROR: [039]: connect"), 1: (0, json.dumps(info([], "")))})
    lines = []
    assert archive.clone("baton", [2, 1], "/d", runner=runner, log=lines.append) == 1
    assert "repo2 passed over: it does not answer (ERROR: [039]: connect)" in lines[0]
    assert lines[-1].endswith("Patroni copies from the source instead")
    assert all(call[1][-1] == "info" for call in runner.calls)

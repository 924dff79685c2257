"""The node's hold and release command (baton-pgbouncer): a copy left from another Baton
version refuses before it opens any connection."""

import hashlib
import json
from pathlib import Path

import baton_pgbouncer


def test_a_command_of_another_version_refuses_before_it_connects(capsys, monkeypatch):
    def no_converge(*_args, **_kwargs):
        raise AssertionError("converge must not run")
    monkeypatch.setattr(baton_pgbouncer, "converge", no_converge)
    code = baton_pgbouncer.cli(["--state", "paused", "--expect-sha256", "0" * 64])
    out, err = capsys.readouterr()
    assert code == 1
    assert "is not the controller's version (another Baton release): run site.yml --tags " \
           "pgbouncer for this host, then re-run. Nothing was sent to PgBouncer" in err
    assert json.loads(out)["failed"] is True


def test_the_controllers_own_copy_goes_on(capsys, monkeypatch):
    seen = {}

    def converge(params, check_mode):
        seen.update(params, check_mode=check_mode)
        return {"changed": False}
    monkeypatch.setattr(baton_pgbouncer, "converge", converge)
    digest = hashlib.sha256(Path(baton_pgbouncer.__file__).read_bytes()).hexdigest()
    assert baton_pgbouncer.cli(["--check", "--expect-sha256", digest]) == 0
    assert json.loads(capsys.readouterr().out) == {"changed": False}
    assert seen["check_mode"] is True

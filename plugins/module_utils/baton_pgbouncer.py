#!/usr/bin/python3
"""PgBouncer's admin console (on the PgBouncer host, with psycopg2), the repoint decision, and
the node-side command baton-pgbouncer (role pgbouncer installs this file; see cli)."""

from __future__ import annotations

import os
import re
import select
import sys
import time
from typing import Any

try:  # Debian's python3-psycopg2 (role pgbouncer installs it; Patroni needs it too)
    import psycopg2
    import psycopg2.extensions
except ImportError:  # pragma: no cover - reported when a console is opened
    psycopg2 = None


# The options' defaults, for module baton_pgbouncer and for the node command alike.
DEFAULTS: dict[str, Any] = {"database": "app", "config": "/etc/pgbouncer/pgbouncer.ini",
                            "admin_user": "baton_pgbouncer", "port": 6432, "pause_timeout": 15.0}


class ConsoleError(Exception):
    pass


class Console:
    """One connection to PgBouncer's admin console on 127.0.0.1 for a whole run (one login,
    where a psql per command cost a process and a login each). Asynchronous, so that every
    command is bounded by a timeout: a PAUSE waits for the transactions in flight."""

    def __init__(self, p: dict[str, Any], timeout: float = 5.0) -> None:
        if psycopg2 is None:
            raise ConsoleError("python3-psycopg2 is not installed: run site.yml --tags pgbouncer")
        # The module passes the password; the node command reads it from a root-only passfile.
        secret = ({"password": p["admin_password"]} if p.get("admin_password") is not None
                  else {"passfile": p["passfile"]})
        try:
            # Asynchronous: libpq's connect_timeout does not apply; _wait bounds the login.
            self.conn = psycopg2.connect(host="127.0.0.1", port=p["port"], dbname="pgbouncer",
                                         user=p["admin_user"], async_=1, **secret)
        except psycopg2.Error as exc:
            raise ConsoleError(_first_line(exc)) from exc
        try:
            self._wait(time.monotonic() + timeout, "connect")
        except psycopg2.Error as exc:
            self.conn.close()
            raise ConsoleError(_first_line(exc)) from exc
        except TimeoutError:
            self.conn.close()
            raise

    def _wait(self, deadline: float, what: str) -> None:
        while True:
            state = self.conn.poll()
            if state == psycopg2.extensions.POLL_OK:
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(what)
            fd = self.conn.fileno()
            if state == psycopg2.extensions.POLL_READ:
                select.select([fd], [], [], left)
            else:
                select.select([], [fd], [], left)

    def run(self, command: str, timeout: float) -> list[dict[str, str]]:
        """One admin console command; its rows as dicts of strings."""
        try:
            cur = self.conn.cursor()
            cur.execute(command)
            self._wait(time.monotonic() + timeout, command)
            if cur.description is None:
                return []
            names = [d[0] for d in cur.description]
            return [{k: "" if v is None else str(v) for k, v in zip(names, row, strict=False)}
                    for row in cur.fetchall()]
        except psycopg2.Error as exc:
            raise ConsoleError(_first_line(exc)) from exc

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Console:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def database_state(console: Console, database: str) -> dict[str, Any] | None:
    for row in console.run("SHOW DATABASES", 10):
        if row.get("name") == database:
            return {"host": row.get("host"), "paused": row.get("paused") == "1",
                    "disabled": row.get("disabled") == "1"}
    return None


def rewrite_hosts(text: str, database: str, hosts: str) -> tuple[str, bool]:
    """The configuration with `database`'s host= set to hosts; whether it changed (pure)."""
    line = re.compile(rf"^(\s*{re.escape(database)}\s*=\s*.*?\bhost=)(\S+)(.*)$", re.M)
    match = line.search(text)
    if match is None:
        raise ValueError(f"no line '{database} = ... host=...' in [databases]")
    if match.group(2) == hosts:
        return text, False
    return text[:match.start(2)] + hosts + text[match.end(2):], True


class PgBouncerFailure(Exception):
    """A step failed; `result` holds what was done before it."""

    def __init__(self, msg: str, result: dict[str, Any] | None = None) -> None:
        super().__init__(msg)
        self.msg, self.result = msg, result or {}


def converge(p: dict[str, Any], check_mode: bool = False) -> dict[str, Any]:
    """Leave database p["database"] pointing at p["hosts"] (when given) and paused or resumed
    as p["state"] says, through the admin console; reads first and acts only where it differs
    (a re-run changes nothing). The result as baton_pgbouncer returns it; PgBouncerFailure
    names the step that failed."""
    db = p["database"]
    where = f"PgBouncer on {os.uname().nodename}"
    console = None
    try:
        console = Console(p)
        before = database_state(console, db)
    except (ConsoleError, TimeoutError) as exc:
        if console is not None:
            console.close()
        raise PgBouncerFailure(f"{where}: the admin console did not answer SHOW DATABASES ({exc}): "
                               "check that pgbouncer runs and pgbouncer_admin_password (site.yml "
                               f"sets it in PgBouncer and in {PASSFILE})") from exc
    consoles = [console]
    try:
        return _converge(p, check_mode, consoles, before, where)
    finally:
        for each in consoles:
            each.close()


def _converge(p: dict[str, Any], check_mode: bool, consoles: list[Console],
              before: dict[str, Any] | None, where: str) -> dict[str, Any]:
    """converge's decision and commands; consoles[-1] is the login in use (the caller closes
    every one)."""
    db = p["database"]
    if before is None:
        raise PgBouncerFailure(f"{where} has no database {db}: run site.yml first")
    hosts = ",".join(p["hosts"]) if p.get("hosts") else None
    new_text, repoint = None, False
    if hosts is not None:
        try:
            with open(p["config"]) as handle:
                old_text = handle.read()
            new_text, repoint = rewrite_hosts(old_text, db, hosts)
        except (OSError, ValueError) as exc:
            raise PgBouncerFailure(f"{where}: cannot repoint {db} in {p['config']} ({exc}): "
                                   "run site.yml to rewrite it") from exc
        # The file may be right already while PgBouncer still runs the old one (a killed run).
        repoint = repoint or before["host"] != hosts
    commands: list[str] = []
    if (repoint or p["state"] == "paused") and not before["paused"]:
        commands.append(f"PAUSE {db}")
    if repoint:
        commands.append("RELOAD")
    if p["state"] == "resumed" and (before["paused"] or commands):
        commands.append(f"RESUME {db}")
    after = dict(before, host=hosts or before["host"], paused=p["state"] == "paused")
    result = {"changed": bool(commands), "before": before, "after": after,
              "commands": commands, "killed": False,
              "diff": {"before": f"{db}: host={before['host']} paused={before['paused']}\n",
                       "after": f"{db}: host={after['host']} paused={after['paused']}\n"}}
    if not commands or check_mode:
        return result

    for command in commands:
        try:
            if command == "RELOAD" and new_text is not None:
                _replace(p["config"], new_text)
            timeout = p["pause_timeout"] if command.startswith("PAUSE") else 15
            if command.startswith("PAUSE"):
                result["paused_at"] = time.time()
            try:
                consoles[-1].run(command, timeout)
                if command.startswith("RESUME"):
                    result["resumed_at"] = time.time()
            except TimeoutError:
                if not command.startswith("PAUSE"):
                    raise
                # A transaction on a server that is gone holds the PAUSE: drop the database's
                # connections (a second login: this one still waits); a killed database stays
                # paused until RESUME. The waiting PAUSE then ends too.
                with Console(p) as second:
                    second.run(f"KILL {db}", 15)
                consoles[-1].close()
                consoles.append(Console(p))
                result["killed"] = True
        except (ConsoleError, TimeoutError, OSError) as exc:
            raise PgBouncerFailure(f"{where}: '{command}' failed ({exc}) after "
                                   f"{commands[:commands.index(command)] or 'nothing'}: re-run "
                                   "to finish (it reads the state first)", result) from exc
    try:
        result["after"] = database_state(consoles[-1], db)
    except (ConsoleError, TimeoutError) as exc:
        raise PgBouncerFailure(f"{where}: SHOW DATABASES after {commands} failed ({exc}): "
                               "re-run to check", result) from exc
    if hosts is not None and (result["after"] or {}).get("host") != hosts:
        raise PgBouncerFailure(f"{where}: after RELOAD {db} points at "
                               f"{(result['after'] or {}).get('host')}, not {hosts}: check "
                               f"{p['config']}", result)
    return result


def _replace(path: str, text: str) -> None:
    """Write `path` anew in one step (a temporary file renamed), same owner and mode."""
    st = os.stat(path)
    with open(path + ".baton-tmp", "w") as handle:
        handle.write(text)
    os.chown(path + ".baton-tmp", st.st_uid, st.st_gid)
    os.chmod(path + ".baton-tmp", st.st_mode & 0o7777)
    os.replace(path + ".baton-tmp", path)


# The node-side command (role pgbouncer installs this file as /usr/local/sbin/baton-pgbouncer):
# a failover's hold and release run it with `raw` on every PgBouncer host at once, a Python
# start and one console login instead of a module's transfer and imports. The admin password
# comes from a root-only passfile, never from the command line.
PASSFILE = "/etc/pgbouncer/baton-admin.pgpass"


def cli(argv: list[str] | None = None) -> int:
    import argparse
    import json

    parser = argparse.ArgumentParser(
        prog="baton-pgbouncer",
        description="Pause, repoint and resume one PgBouncer database through its admin console; "
                    "prints the result as one JSON line.")
    parser.add_argument("--state", choices=["paused", "resumed"], default="resumed")
    parser.add_argument("--hosts", help="comma-separated addresses the database must point at")
    parser.add_argument("--database", default=DEFAULTS["database"])
    parser.add_argument("--config", default=DEFAULTS["config"])
    parser.add_argument("--admin-user", default=DEFAULTS["admin_user"])
    parser.add_argument("--port", type=int, default=DEFAULTS["port"])
    parser.add_argument("--pause-timeout", type=float, default=DEFAULTS["pause_timeout"])
    parser.add_argument("--passfile", default=PASSFILE)
    parser.add_argument("--check", action="store_true", help="say what would be done, do nothing")
    parser.add_argument("--expect-sha256", help="refuse to act unless this file's SHA-256 is this "
                        "(the controller's copy): a node left on another Baton version")
    args = parser.parse_args(argv)
    if args.expect_sha256:
        import hashlib
        import socket

        with open(__file__, "rb") as handle:
            mine = hashlib.sha256(handle.read()).hexdigest()
        if mine != args.expect_sha256:
            msg = (f"{socket.gethostname()}: {__file__} is not the controller's version (another "
                   "Baton release): run site.yml --tags pgbouncer for this host, then re-run. "
                   "Nothing was sent to PgBouncer (if an earlier run held `app` here, it is "
                   "still held until that re-run lets it through).")
            print(msg, file=sys.stderr)
            print(json.dumps({"changed": False, "failed": True, "msg": msg}))
            return 1
    p = {"database": args.database, "state": args.state, "config": args.config,
         "admin_user": args.admin_user, "port": args.port, "pause_timeout": args.pause_timeout,
         "hosts": [h for h in (args.hosts or "").split(",") if h] or None,
         "passfile": args.passfile}
    try:
        result = converge(p, check_mode=args.check)
    except PgBouncerFailure as exc:
        print(exc.msg, file=sys.stderr)
        print(json.dumps({**exc.result, "failed": True, "msg": exc.msg}))
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(cli())

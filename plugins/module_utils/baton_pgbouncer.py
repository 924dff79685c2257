#!/usr/bin/python3
"""PgBouncer's admin console through psql (on the PgBouncer host), the repoint decision, and
the node-side command baton-pgbouncer (role pgbouncer installs this file; see cli)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any


class ConsoleError(Exception):
    pass


def console(p: dict[str, Any], command: str, timeout: float) -> list[dict[str, str]]:
    """One admin console command through psql; rows as dicts."""
    # The module passes the password; the node command reads it from a root-only passfile.
    env = dict(os.environ, PGCONNECT_TIMEOUT="5")
    if p.get("admin_password") is not None:
        env["PGPASSWORD"] = p["admin_password"]
    else:
        env["PGPASSFILE"] = p["passfile"]
    dsn = f"host=127.0.0.1 port={p['port']} dbname=pgbouncer user={p['admin_user']}"
    try:
        run = subprocess.run(["psql", "-X", "-A", "-F", "\t", "-P", "footer=off", dsn, "-c",
                              command], capture_output=True, text=True, env=env,
                             timeout=timeout, check=False)
    except subprocess.TimeoutExpired as exc:
        raise TimeoutError(command) from exc
    if run.returncode != 0:
        raise ConsoleError(run.stderr.strip().splitlines()[-1] if run.stderr.strip()
                           else f"psql exited {run.returncode}")
    lines = [line for line in run.stdout.splitlines() if line]
    if not lines:
        return []
    header = lines[0].split("\t")
    return [dict(zip(header, line.split("\t"), strict=False)) for line in lines[1:]]


def database_state(p: dict[str, Any]) -> dict[str, Any] | None:
    for row in console(p, "SHOW DATABASES", 10):
        if row.get("name") == p["database"]:
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
    try:
        before = database_state(p)
    except (ConsoleError, TimeoutError) as exc:
        raise PgBouncerFailure(f"{where}: the admin console did not answer SHOW DATABASES ({exc}): "
                               "check that pgbouncer runs and pgbouncer_admin_password (site.yml "
                               f"sets it in PgBouncer and in {PASSFILE})") from exc
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
                console(p, command, timeout)
                if command.startswith("RESUME"):
                    result["resumed_at"] = time.time()
            except TimeoutError:
                if not command.startswith("PAUSE"):
                    raise
                # A transaction on a server that is gone holds the PAUSE: drop the database's
                # connections; a killed database stays paused until RESUME.
                console(p, f"KILL {db}", 15)
                result["killed"] = True
        except (ConsoleError, TimeoutError, OSError) as exc:
            raise PgBouncerFailure(f"{where}: '{command}' failed ({exc}) after "
                                   f"{commands[:commands.index(command)] or 'nothing'}: re-run "
                                   "to finish (it reads the state first)", result) from exc
    result["after"] = database_state(p)
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
# start and a few psql calls instead of a module's transfer and imports. The admin password
# comes from a root-only passfile (PGPASSFILE), never from the command line.
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
    parser.add_argument("--database", default="app")
    parser.add_argument("--config", default="/etc/pgbouncer/pgbouncer.ini")
    parser.add_argument("--admin-user", default="baton_pgbouncer")
    parser.add_argument("--port", type=int, default=6432)
    parser.add_argument("--pause-timeout", type=float, default=15.0)
    parser.add_argument("--passfile", default=PASSFILE)
    parser.add_argument("--check", action="store_true", help="say what would be done, do nothing")
    args = parser.parse_args(argv)
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

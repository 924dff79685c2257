"""PgBouncer's admin console through psql (on the PgBouncer host), and the repoint decision."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any


class ConsoleError(Exception):
    pass


def console(p: dict[str, Any], command: str, timeout: float) -> list[dict[str, str]]:
    """One admin console command through psql; rows as dicts."""
    env = dict(os.environ, PGPASSWORD=p["admin_password"], PGCONNECT_TIMEOUT="5")
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

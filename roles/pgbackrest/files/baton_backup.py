#!/usr/bin/python3
"""Baton: one pgBackRest backup, as baton-backup@TYPE.service runs it.

    baton-backup STANZA TYPE

Into the repository that the unit's environment names (PGBACKREST_CONFIG, PGBACKREST_REPO),
then the expiry of what its retention no longer keeps (pgBackRest's backup does both).

A region's own repository (BATON_BACKUP_REGION=1) is backed up only while the region holds the
primary. When every node of the region answered and each is in recovery (a standby cluster:
the baton is elsewhere), there is nothing to back up and the run succeeds, saying so. Any other
failure, a node that did not answer among them, fails the run.
"""

from __future__ import annotations

import os
import subprocess
import sys

# pgBackRest's DbConnectError, and what it adds when it found no primary among the nodes.
NO_PRIMARY_CODE = 56
NO_PRIMARY_HINT = "are all available clusters in recovery?"
NODE_UNANSWERED = "unable to check pg"


def no_primary_only(code: int, output: str) -> bool:
    """Whether pgBackRest stopped only because no node of the region is a primary."""
    return code == NO_PRIMARY_CODE and NO_PRIMARY_HINT in output and NODE_UNANSWERED not in output


def main(argv: list[str]) -> int:
    if len(argv) != 3 or argv[2] not in ("full", "diff", "incr"):
        print("usage: baton-backup STANZA full|diff|incr", file=sys.stderr)
        return 2
    stanza, kind = argv[1], argv[2]
    run = subprocess.run(["pgbackrest", f"--stanza={stanza}", f"--type={kind}",
                          "--log-level-console=info", "backup"],
                         capture_output=True, text=True, check=False)
    output = run.stdout + run.stderr
    sys.stdout.write(output)
    if os.environ.get("BATON_BACKUP_REGION") == "1" and no_primary_only(run.returncode, output):
        print(f"baton-backup: no node of this region is a primary (the baton is elsewhere): "
              f"no {kind} backup into the region's repository now")
        return 0
    return run.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv))

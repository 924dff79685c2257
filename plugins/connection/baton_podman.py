"""Connection to the lab's podman containers: pipelining, and nsenter instead of `podman exec`.

The lab reaches its hosts through podman (no SSH set-up). The podman connection of the
containers.podman collection mounts the container's file system for every task and sends each
module as a file: a temporary directory, a copy, the run, a clean-up, one `podman exec` each,
about a quarter of a second apiece here. This connection sends the module to the interpreter's
standard input (pipelining, as production hosts do over SSH; ansible.cfg turns it on there
too), and runs commands by entering the container's namespaces with nsenter (a few
milliseconds) instead of through `podman exec`. The container's process ID is looked up with
`podman inspect` once and kept in a small cache that is checked against the process's start
time, so a restarted or re-created container is looked up again. A stopped container is an
unreachable host, as with SSH.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleConnectionFailure, AnsibleError
from ansible.module_utils.common.text.converters import to_bytes, to_native
from ansible.plugins.connection import ConnectionBase, ensure_connect
from ansible.utils.display import Display

DOCUMENTATION = """
name: baton_podman
short_description: Run tasks in the lab's podman containers through nsenter, pipelining modules
description:
  - Runs commands inside a running podman container by entering its namespaces with
    C(nsenter) (the container's environment, as C(podman exec) would set it), and writes
    modules to the remote interpreter's standard input instead of copying them first.
  - Needs root on the controller (the lab runs rootful podman).
options:
  remote_addr:
    description: Name or ID of the container.
    default: inventory_hostname
    vars:
      - name: ansible_host
      - name: inventory_hostname
      - name: ansible_podman_host
  remote_user:
    description: User to run commands as inside the container (default, root).
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    vars:
      - name: ansible_user
  podman_executable:
    description: The podman program (used to find the container's process).
    default: podman
    env:
      - name: ANSIBLE_PODMAN_EXECUTABLE
    vars:
      - name: ansible_podman_executable
  pipelining:
    description: Send modules on standard input instead of copying them into the container.
    type: boolean
    default: true
    env:
      - name: ANSIBLE_PODMAN_PIPELINING
    vars:
      - name: ansible_pipelining
"""

display = Display()

CACHE = Path(tempfile.gettempdir()) / f"baton-podman-{os.getuid()}"


def start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/PID/stat)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces; the fields after its ')' are plain.
    return stat.rsplit(")", 1)[1].split()[19]


class Connection(ConnectionBase):
    transport = "baton_podman"
    has_pipelining = True

    def __init__(self, play_context: Any, new_stdin: Any, *args: Any, **kwargs: Any) -> None:
        super().__init__(play_context, new_stdin, *args, **kwargs)
        self._container = self._play_context.remote_addr
        self._pid = 0
        self._start: str | None = None
        self._env: list[str] = []

    # --- finding the container's process --------------------------------------------------

    def _inspect(self) -> dict[str, Any]:
        podman = self.get_option("podman_executable")
        proc = subprocess.run([podman, "container", "inspect", "--format",
                               "{{json .State}}\t{{json .Config.Env}}", self._container],
                              capture_output=True, check=False)
        if proc.returncode != 0:
            raise AnsibleConnectionFailure(
                f"container {self._container}: {to_native(proc.stderr).strip()}")
        state, env = to_native(proc.stdout).strip().split("\t", 1)
        state_data = json.loads(state)
        if not state_data.get("Running") or not state_data.get("Pid"):
            raise AnsibleConnectionFailure(
                f"container {self._container} is not running (state {state_data.get('Status')})")
        pid = int(state_data["Pid"])
        return {"pid": pid, "start": start_time(pid), "env": json.loads(env) or []}

    def _cache_file(self) -> Path:
        return CACHE / self._container.replace("/", "_")

    def _connect(self) -> Connection:
        if self._connected:
            return self
        super()._connect()
        cached: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            cached = json.loads(self._cache_file().read_text())
        if not cached or start_time(cached.get("pid", 0)) != cached.get("start"):
            cached = self._inspect()
            CACHE.mkdir(mode=0o700, exist_ok=True)
            tmp = self._cache_file().with_suffix(f".{os.getpid()}")
            tmp.write_text(json.dumps(cached))
            tmp.replace(self._cache_file())
        self._pid, self._start, self._env = cached["pid"], cached["start"], cached["env"]
        self._connected = True
        return self

    def _gone(self) -> bool:
        # The process entered is no longer there (container stopped or restarted): read from
        # /proc, so that a module that merely failed costs no `podman inspect`.
        return start_time(self._pid) != self._start

    # --- running commands -------------------------------------------------------------------

    def _enter(self, argv: list[str], in_data: bytes | None = None,
               stdin: Any = None) -> tuple[int, bytes, bytes]:
        user = self._play_context.remote_user
        prefix = ["nsenter", "--target", str(self._pid), "--all", "--wd=/", "--",
                  "/usr/bin/env", "-i", *self._env]
        if user and user != "root":
            prefix += ["/usr/sbin/runuser", "-u", user, "--"]
        cmd = [to_bytes(a, errors="surrogate_or_strict") for a in prefix + argv]
        display.vvv(f"NSENTER {self._container} (pid {self._pid}) {argv!r}",
                    host=self._container)
        proc = subprocess.Popen(cmd, stdin=stdin if stdin is not None else subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        stdout, stderr = proc.communicate(input=in_data if stdin is None else None)
        if proc.returncode != 0 and self._gone():
            # The container stopped (or was never running): the host is unreachable, not a
            # module that failed.
            raise AnsibleConnectionFailure(
                f"container {self._container} stopped: {to_native(stderr).strip()}")
        return proc.returncode, stdout, stderr

    @ensure_connect
    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = False) -> tuple[int, bytes, bytes]:
        super().exec_command(cmd, in_data=in_data, sudoable=sudoable)
        return self._enter(shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)

    @ensure_connect
    def put_file(self, in_path: str, out_path: str) -> None:
        super().put_file(in_path, out_path)
        display.vvv(f"PUT {in_path} TO {out_path}", host=self._container)
        with open(to_bytes(in_path, errors="surrogate_or_strict"), "rb") as source:
            rc, _out, err = self._enter(["/bin/sh", "-c", 'cat > "$1"', "sh", out_path],
                                        stdin=source)
        if rc != 0:
            raise AnsibleError(f"could not write {out_path} in container {self._container}: "
                               f"{to_native(err).strip()}")

    @ensure_connect
    def fetch_file(self, in_path: str, out_path: str) -> None:
        super().fetch_file(in_path, out_path)
        display.vvv(f"FETCH {in_path} TO {out_path}", host=self._container)
        rc, out, err = self._enter(["/bin/cat", in_path])
        if rc != 0:
            raise AnsibleError(f"could not read {in_path} in container {self._container}: "
                               f"{to_native(err).strip()}")
        Path(out_path).write_bytes(out)

    def close(self) -> None:
        super().close()
        self._connected = False

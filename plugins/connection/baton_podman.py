"""Connection to the lab's podman containers, with pipelining.

The lab reaches its hosts through podman (no SSH set-up). The podman connection of the
containers.podman collection sends each module as a file: a temporary directory, a copy, the
run, a clean-up, one `podman exec` each (about a quarter of a second apiece here). With
pipelining the module goes to the interpreter's stdin in a single `podman exec -i`, which is
how production hosts run over SSH (ansible.cfg turns pipelining on there too). File transfers
(copy, template) are unchanged.
"""

from __future__ import annotations

import shlex
from typing import Any

from ansible.errors import AnsibleConnectionFailure
from ansible.module_utils.common.text.converters import to_native
from ansible.plugins.connection import ensure_connect
from ansible_collections.containers.podman.plugins.connection.podman import (
    Connection as PodmanConnection,
)

DOCUMENTATION = """
name: baton_podman
short_description: Run tasks in the lab's podman containers, pipelining modules
description:
  - The containers.podman podman connection with module pipelining. A module is written to
    the remote interpreter's standard input in one C(podman exec -i) instead of being copied
    to a temporary file first.
options:
  remote_addr:
    description: Name or ID of the container.
    default: inventory_hostname
    vars:
      - name: ansible_host
      - name: inventory_hostname
      - name: ansible_podman_host
  remote_user:
    description: User to run commands as inside the container (default, the image's).
    ini:
      - section: defaults
        key: remote_user
    env:
      - name: ANSIBLE_REMOTE_USER
    vars:
      - name: ansible_user
  podman_extra_args:
    description: Extra arguments for every podman command.
    default: ''
    ini:
      - section: defaults
        key: podman_extra_args
    env:
      - name: ANSIBLE_PODMAN_EXTRA_ARGS
    vars:
      - name: ansible_podman_extra_args
  podman_executable:
    description: The podman program.
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


class Connection(PodmanConnection):
    transport = "baton_podman"
    # `podman exec` forwards standard input only with -i, which exec_command adds whenever
    # there is input: that is what the collection's connection lacks for pipelining.
    has_pipelining = True

    @ensure_connect
    def exec_command(self, cmd: str, in_data: bytes | None = None,
                     sudoable: bool = False) -> tuple[int, bytes, bytes]:
        # The base class only records the command; the parent's version would drop stdin.
        super(PodmanConnection, self).exec_command(cmd, in_data=in_data, sudoable=sudoable)
        args: list[Any] = ["exec"]
        if in_data is not None:
            args.append("-i")
        if self.user:
            args.extend(("--user", self.user))
        rc, stdout, stderr = self._podman(
            args, shlex.split(to_native(cmd, errors="surrogate_or_strict")), in_data)
        if rc != 0 and stderr.startswith(b"Error: ") and not self._running():
            # podman could not run anything because the container is stopped or gone: the
            # host is unreachable (as when the module's file copy fails without pipelining),
            # not a module that failed.
            raise AnsibleConnectionFailure(
                f"container {self._container_id}: {to_native(stderr).strip()}")
        return rc, stdout, stderr

    def _running(self) -> bool:
        rc, stdout, _err = self._podman(["container", "inspect", "--format",
                                         "{{.State.Running}}"])
        return rc == 0 and stdout.strip() == b"true"

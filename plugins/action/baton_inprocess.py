"""Run one of Baton's controller modules inside Ansible's own worker process.

Baton's controller modules (the assessment, the write probe, the report...) run on localhost.
As modules, each one costs a module build, a new Python process, its imports and four shell
steps before it does any work: about 0.4 s, paid a dozen times on a move's path. An action
plugin of the same name (plugins/action/<module>.py) runs the module's own main() here
instead, with the same arguments, argument checks, check mode and no_log handling (those are
AnsibleModule's, unchanged); the module files stay what ansible-doc documents.

A task on (or delegated to) another host, run asynchronously, with become or with an
environment of its own runs the module as usual (Ansible's `normal` action).
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import traceback
from pathlib import Path
from typing import Any

from ansible.module_utils.common.json import Direction, get_module_encoder
from ansible.plugins.action.normal import ActionModule as Normal
from ansible.vars.clean import remove_internal_keys

ROOT = Path(__file__).resolve().parents[2]
MODULES = ROOT / "plugins" / "modules"
MODULE_UTILS = ROOT / "plugins" / "module_utils"


def _module_utils_on_path() -> None:
    """Make `ansible.module_utils.baton_*` importable here, as the module build packs them."""
    import ansible.module_utils as module_utils

    if str(MODULE_UTILS) not in module_utils.__path__:
        module_utils.__path__.append(str(MODULE_UTILS))


class InProcess(Normal):
    MODULE = ""

    def _local(self) -> bool:
        return (self._connection.transport == "local" and not self._task.async_val
                and not self._play_context.become and not any(self._task.environment or []))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        if not self._local():
            return super().run(tmp, task_vars)
        task_vars = task_vars or {}
        result = super(Normal, self).run(tmp, task_vars)
        _module_utils_on_path()
        from ansible.module_utils import basic

        args = dict(self._task.args)
        # The same internal arguments (check mode, no_log, diff...) a module run would get.
        self._update_module_args(self.MODULE, args, task_vars)
        # Encoded and decoded as Ansible does for a module (the `legacy` profile), and the output
        # parsed by the same code: no output, or no JSON, fails the task as it would.
        basic._ANSIBLE_ARGS = json.dumps(
            {"ANSIBLE_MODULE_ARGS": args},
            cls=get_module_encoder("legacy", Direction.CONTROLLER_TO_MODULE)).encode()
        basic._ANSIBLE_PROFILE = "legacy"
        spec = importlib.util.spec_from_file_location(f"baton_inprocess_{self.MODULE}",
                                                      MODULES / f"{self.MODULE}.py")
        module = importlib.util.module_from_spec(spec)
        out, err = io.StringIO(), io.StringIO()
        code: Any = 0
        here = os.getcwd()
        try:
            # A module run by the local connection starts in the play's folder.
            os.chdir(self._loader.get_basedir())
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                try:
                    spec.loader.exec_module(module)  # type: ignore[union-attr]
                    module.main()
                except SystemExit as exc:
                    code = exc.code
                except Exception:
                    traceback.print_exc()
                    code = 1
        finally:
            os.chdir(here)
        data = self._parse_returned_data(
            {"stdout": out.getvalue(), "stderr": err.getvalue(),
             "rc": code if isinstance(code, int) else 1}, "legacy")
        data.pop("_ansible_suppress_tmpdir_delete", None)
        remove_internal_keys(data)
        for key in ("stdout", "stderr"):
            if key in data and f"{key}_lines" not in data:
                data[f"{key}_lines"] = (data.get(key) or "").splitlines()
        result.update(data)
        return result


def action_for(name: str) -> type:
    return type("ActionModule", (InProcess,), {"MODULE": name})



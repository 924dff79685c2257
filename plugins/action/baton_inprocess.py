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
from pathlib import Path
from typing import Any

from ansible.plugins.action.normal import ActionModule as Normal

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
        basic._ANSIBLE_ARGS = json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode()
        basic._ANSIBLE_PROFILE = "legacy"
        spec = importlib.util.spec_from_file_location(f"baton_inprocess_{self.MODULE}",
                                                      MODULES / f"{self.MODULE}.py")
        module = importlib.util.module_from_spec(spec)
        out = io.StringIO()
        code: Any = 0
        with contextlib.redirect_stdout(out):
            try:
                spec.loader.exec_module(module)  # type: ignore[union-attr]
                module.main()
            except SystemExit as exc:
                code = exc.code
        text = out.getvalue().strip()
        try:
            returned = json.loads(text.splitlines()[-1]) if text else {}
        except ValueError:
            returned = {"failed": True, "msg": f"{self.MODULE} wrote no result: {text[-500:]}"}
        if code not in (0, None) and not returned.get("failed"):
            returned.update(failed=True, msg=returned.get("msg") or f"{self.MODULE} exited {code}")
        returned.pop("invocation", None) if self._task.no_log else None
        result.update(returned)
        return result


def action_for(name: str) -> type:
    return type("ActionModule", (InProcess,), {"MODULE": name})



#!/usr/bin/python
"""Ansible module: a run's report files, written together on the controller."""

from __future__ import annotations

DOCUMENTATION = r"""
module: baton_report
short_description: Write a run's report files (JSON, summary, latest) in one step
description:
  - Runs on the controller. Creates O(directory) when it is missing and writes every file of
    O(files) into it, each atomically (a temporary file renamed over the old one), so that a
    reader never sees half a report.
  - A run's record, not configuration. The task reports C(changed) only when a file's content
    differs from what was there.
  - Check mode writes nothing.
options:
  directory:
    description: The report folder.
    type: path
    required: true
  files:
    description: The files, each a C(name) (no folder) and its C(content).
    type: list
    elements: dict
    required: true
  mode:
    description: Permissions of the files written.
    type: str
    default: "0644"
author: Baton
"""

EXAMPLES = r"""
- name: Write the report
  baton_report:
    directory: "{{ playbook_dir }}/../reports"
    files:
      - {name: "{{ run_id }}.json", content: "{{ report | to_nice_json }}"}
      - {name: failover-latest.json, content: "{{ report | to_nice_json }}"}
  delegate_to: localhost
"""

RETURN = r"""
paths:
  description: Every file written, absolute.
  returned: always
  type: list
  elements: str
"""

import os  # noqa: E402
import tempfile  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def write_atomic(path: str, text: str, mode: int) -> bool:
    """Writes text to path through a temporary file in the same folder; whether it changed."""
    try:
        with open(path, encoding="utf-8") as handle:
            if handle.read() == text:
                return False
    except OSError:
        pass
    handle, temporary = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".baton-report-")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise
    return True


def main() -> None:
    module = AnsibleModule(
        argument_spec={
            "directory": {"type": "path", "required": True},
            "files": {"type": "list", "elements": "dict", "required": True,
                      "options": {"name": {"type": "str", "required": True},
                                  "content": {"type": "str", "required": True}}},
            "mode": {"type": "str", "default": "0644"},
        },
        supports_check_mode=True,
    )
    p = module.params
    directory = os.path.abspath(p["directory"])
    try:
        mode = int(p["mode"], 8)
    except ValueError:
        module.fail_json(msg=f"mode '{p['mode']}' is not an octal mode: write it as 0644")
    paths, changed = [], False
    for name in (item["name"] for item in p["files"]):
        if not name or os.path.basename(name) != name:
            module.fail_json(msg=f"report file '{name}' is not a plain file name: give names "
                                 "without folders")
        paths.append(os.path.join(directory, name))
    if module.check_mode:
        module.exit_json(changed=False, paths=paths)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        for path, item in zip(paths, p["files"], strict=True):
            changed = write_atomic(path, item["content"], mode) or changed
    except OSError as exc:
        module.fail_json(msg=f"cannot write the report in {directory}: {exc}: check that the "
                             "folder (baton_report_dir) is writable by the controller's user")
    module.exit_json(changed=changed, paths=paths)


if __name__ == "__main__":
    main()

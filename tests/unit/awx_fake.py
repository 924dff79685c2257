"""A fake AWX controller API on loopback, for the tests of awx/controller.yml.

It answers as AWX's REST API does for what the `awx.awx` modules Baton uses ask of it: list
views with field filters (and the modules' `or__id` / `or__name` lookups), detail views,
POST to create, PATCH to update, the association sub-views (`credentials`, `labels`,
`success_nodes`, `notification_templates_*`, ...: POST `{id}` associates, `{id, disassociate}`
removes), a job template's `survey_spec`, a workflow node's `create_approval_template`, and
`unified_job_templates` across the template kinds. Objects it was not given (organizations,
credentials, notification templates) are seeded by the test: Baton refers to them by name.

As AWX does, it lists a project's playbooks by AWX's own test (a line that starts a play
with `hosts:`, or a top-level `include:`/`import_playbook:`) and refuses a job template whose
playbook is not among them; a new project gets its first sync, finished at once.

It keeps every object in memory and a log of every write, so a test can read what a run
created and see that a second run wrote nothing.
"""

from __future__ import annotations

import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API = "/api/v2/"
VERSION = "24.6.1"
TOKEN = "fake-controller-token-not-secret"
# Sub-views that list associated objects, per kind (AWX's `related` links).
ASSOCIATIONS = {
    "job_templates": ["credentials", "labels", "instance_groups", "notification_templates_started",
                      "notification_templates_success", "notification_templates_error"],
    "workflow_job_templates": ["labels", "notification_templates_started",
                               "notification_templates_success", "notification_templates_error",
                               "notification_templates_approvals"],
    "workflow_job_template_nodes": ["success_nodes", "failure_nodes", "always_nodes",
                                    "credentials", "labels", "instance_groups"],
    "projects": ["notification_templates_started", "notification_templates_success",
                 "notification_templates_error"],
    "inventory_sources": ["notification_templates_started", "notification_templates_success",
                          "notification_templates_error"],
    "inventories": ["labels", "instance_groups"],
}
# Kinds that `unified_job_templates` lists, and the type each object of a kind carries.
UNIFIED = ("job_templates", "workflow_job_templates", "projects", "inventory_sources",
           "workflow_approval_templates")
TYPES = {"inventories": "inventory", "inventory_sources": "inventory_source",
         "workflow_approval_templates": "workflow_approval_template"}


# AWX's test for "this file could be a playbook" (awx/main/utils/ansible.py).
PLAYBOOK_LINE = re.compile(r"^\s*?-?\s*?(?:hosts|include|import_playbook):\s*?.*?$")


def playbooks_of(project_dir: Path) -> list[str]:
    """The playbooks AWX would list for a project checked out at project_dir."""
    found = []
    for path in sorted(project_dir.rglob("*.y*ml")):
        parts = path.relative_to(project_dir).parts
        if path.suffix not in (".yml", ".yaml") or any(
                p.startswith(".") or p in ("roles", "tasks", "group_vars", "host_vars")
                for p in parts):
            continue
        with path.open(encoding="utf-8", errors="ignore") as lines:
            if any(PLAYBOOK_LINE.match(line) for line in lines):
                found.append("/".join(parts))
    return found


def type_of(kind: str) -> str:
    return TYPES.get(kind, kind[:-1])


class Controller:
    """The objects, by kind, and the writes made to them."""

    def __init__(self, project_dir: Path) -> None:
        self.playbooks = playbooks_of(project_dir)
        self.objects: dict[str, dict[int, dict[str, Any]]] = {}
        self.surveys: dict[int, dict[str, Any]] = {}
        self.links: dict[tuple[str, int, str], list[int]] = {}
        self.writes: list[str] = []
        self.next_id = 1
        self.lock = threading.Lock()

    def add(self, kind: str, fields: dict[str, Any]) -> dict[str, Any]:
        oid, self.next_id = self.next_id, self.next_id + 1
        url = f"{API}{kind}/{oid}/"
        related = {name: f"{url}{name}/" for name in ASSOCIATIONS.get(kind, [])}
        if kind == "job_templates":
            related["survey_spec"] = f"{url}survey_spec/"
        if kind == "workflow_job_templates":
            related["workflow_nodes"] = f"{url}workflow_nodes/"
            related["survey_spec"] = f"{url}survey_spec/"
        obj = {**fields, "id": oid, "url": url, "type": type_of(kind), "related": related,
               "summary_fields": {}}
        self.objects.setdefault(kind, {})[oid] = obj
        return obj

    def named(self, kind: str, name: str) -> dict[str, Any]:
        found = [o for o in self.objects.get(kind, {}).values() if o.get("name") == name]
        assert len(found) == 1, f"{len(found)} {kind} named {name!r}"
        return found[0]

    def linked(self, kind: str, oid: int, association: str) -> list[dict[str, Any]]:
        target = {"success_nodes": "workflow_job_template_nodes",
                  "failure_nodes": "workflow_job_template_nodes",
                  "always_nodes": "workflow_job_template_nodes"}.get(
            association, "notification_templates" if association.startswith("notification")
            else association)
        return [self.objects[target][i] for i in self.links.get((kind, oid, association), [])]

    def survey(self, oid: int) -> dict[str, Any]:
        return self.surveys.get(oid, {})

    # -------------------------------------------------------------------------------- REST

    def matches(self, obj: dict[str, Any], query: dict[str, str]) -> bool:
        ors = {k[4:]: v for k, v in query.items() if k.startswith("or__")}
        if ors and not any(str(obj.get(k)) == v for k, v in ors.items()):
            return False
        for key, value in query.items():
            if key.startswith("or__") or key in ("page", "page_size", "order_by"):
                continue
            if str(obj.get(key)) != value and not (obj.get(key) is None and value == "None"):
                return False
        return True

    def listing(self, items: list[dict[str, Any]]) -> dict[str, Any]:
        return {"count": len(items), "next": None, "previous": None, "results": items}

    def handle(self, method: str, path: str, query: dict[str, str],
               body: dict[str, Any]) -> tuple[int, Any]:
        if not path.startswith(API):
            return 404, {"detail": "Not found."}
        parts = [p for p in path[len(API):].split("/") if p]
        if parts in (["ping"], ["config"], ["me"]):
            return 200, {"version": VERSION, "results": [{"username": "admin"}], "count": 1}
        kind = parts[0]
        with self.lock:
            if len(parts) == 1 and method == "GET":
                kinds = UNIFIED if kind == "unified_job_templates" else (kind,)
                items = [o for k in kinds for o in self.objects.get(k, {}).values()
                         if self.matches(o, query)]
                return 200, self.listing(items)
            if method in ("POST", "PATCH") and kind == "job_templates" \
                    and "playbook" in body and body["playbook"] not in self.playbooks:
                return 400, {"playbook": ["Playbook not found for project."]}
            if len(parts) == 1 and method == "POST":
                self.writes.append(f"POST {path} {body.get('name', body.get('identifier'))}")
                if kind == "projects":  # AWX starts its first sync at once; here it is done
                    sync = self.add("project_updates", {"status": "successful"})
                    body = {**body, "scm_revision": "",
                            "summary_fields": {"current_update": {"id": sync["id"]}}}
                    created = self.add(kind, body)
                    created["summary_fields"] = body["summary_fields"]
                    return 201, created
                return 201, self.add(kind, body)
            oid = int(parts[1])
            obj = self.objects.get(kind, {}).get(oid)
            if obj is None:
                return 404, {"detail": "Not found."}
            if len(parts) == 2:
                if method == "GET":
                    return 200, obj
                if method == "PATCH":
                    self.writes.append(f"PATCH {path} {sorted(body)}")
                    obj.update(body)
                    return 200, obj
                if method == "DELETE":
                    self.writes.append(f"DELETE {path}")
                    del self.objects[kind][oid]
                    return 204, None
            sub = parts[2]
            if sub == "survey_spec":
                if method == "GET":
                    return 200, self.surveys.get(oid, {})
                self.writes.append(f"{method} {path}")
                if method == "DELETE":
                    self.surveys.pop(oid, None)
                else:
                    self.surveys[oid] = body
                return 200, {}
            if sub == "create_approval_template" and method == "POST":
                self.writes.append(f"POST {path} {body.get('name')}")
                approval = self.add("workflow_approval_templates", body)
                obj["unified_job_template"] = approval["id"]
                obj["related"]["unified_job_template"] = approval["url"]
                return 201, approval
            if sub == "workflow_nodes" and method == "GET":
                return 200, self.listing(
                    [n for n in self.objects.get("workflow_job_template_nodes", {}).values()
                     if n.get("workflow_job_template") == oid])
            if sub in ASSOCIATIONS.get(kind, []):
                key = (kind, oid, sub)
                if method == "GET":
                    return 200, self.listing(self.linked(kind, oid, sub))
                ids = self.links.setdefault(key, [])
                self.writes.append(f"POST {path} {body}")
                if body.get("disassociate"):
                    ids.remove(int(body["id"]))
                elif int(body["id"]) not in ids:
                    ids.append(int(body["id"]))
                return 204, None
            return 404, {"detail": "Not found."}  # as AWX answers for a view it does not have
        return 405, {"detail": f"Method \"{method}\" not allowed."}


class Server:
    """The fake on 127.0.0.1 (a free port), in a thread: `with Server() as fake: fake.url`."""

    def __init__(self, project_dir: Path) -> None:
        self.controller = Controller(project_dir)
        controller = self.controller

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def answer(self, method: str) -> None:
                if self.headers.get("Authorization") != f"Bearer {TOKEN}":
                    self.reply(401, {"detail": "Authentication credentials were not provided."})
                    return
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else {}
                status, data = controller.handle(method, parts.path, dict(parse_qsl(parts.query)),
                                                 body)
                self.reply(status, data)

            def reply(self, status: int, data: Any) -> None:
                payload = b"" if data is None else json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("X-API-Product-Name", "AWX")
                self.send_header("X-API-Product-Version", VERSION)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self.answer("GET")

            def do_POST(self) -> None:
                self.answer("POST")

            def do_PATCH(self) -> None:
                self.answer("PATCH")

            def do_DELETE(self) -> None:
                self.answer("DELETE")

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self) -> Server:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

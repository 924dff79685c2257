#!/usr/bin/python3
"""Baton's PgBouncer exporter: PgBouncer's SHOW DATABASES, POOLS and STATS as Prometheus gauges.

Debian 12's prometheus-pgbouncer-exporter (1.7) stops at start against Debian's PgBouncer 1.18
(it asks for the column `total_requests`, renamed in PgBouncer 1.8), so Baton ships this one.
It connects as a `stats_users` member on every scrape (a PgBouncer restart costs one scrape,
not the exporter), and exports `pgbouncer_up`, and per database whether it is paused or
disabled: what a failover's PAUSE/RESUME of `app` looks like from outside.

Environment: LISTEN (address:port), PGBOUNCER_HOST, PGBOUNCER_PORT, PGBOUNCER_USER and
PGPASSWORD (libpq reads it).
"""

from __future__ import annotations

import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import psycopg2

# (SHOW command, labels taken from its columns, columns exported, metric prefix)
QUERIES = [
    ("DATABASES", ("name",), ("current_connections", "max_connections", "pool_size", "paused",
                               "disabled"), "pgbouncer_databases"),
    ("POOLS", ("database", "user"), ("cl_active", "cl_waiting", "sv_active", "sv_idle",
                                      "sv_used", "sv_tested", "sv_login", "maxwait"),
     "pgbouncer_pools"),
    ("STATS", ("database",), ("total_xact_count", "total_query_count", "total_received",
                              "total_sent", "total_xact_time", "total_query_time",
                              "total_wait_time"), "pgbouncer_stats"),
]


def _label(value: object) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def collect() -> str:
    lines: list[str] = []
    try:
        conn = psycopg2.connect(host=os.environ.get("PGBOUNCER_HOST", "127.0.0.1"),
                                port=int(os.environ.get("PGBOUNCER_PORT", "6432")),
                                user=os.environ.get("PGBOUNCER_USER", "pgbouncer"),
                                dbname="pgbouncer", connect_timeout=3)
    except psycopg2.Error:
        return "# TYPE pgbouncer_up gauge\npgbouncer_up 0\n"
    try:
        conn.autocommit = True  # PgBouncer's console takes no transactions
        with conn.cursor() as cur:
            for command, label_cols, value_cols, prefix in QUERIES:
                cur.execute(f"SHOW {command}")
                names = [d[0] for d in cur.description]
                rows = [dict(zip(names, row, strict=True)) for row in cur.fetchall()]
                for column in value_cols:
                    metric = f"{prefix}_{column}"
                    lines.append(f"# TYPE {metric} gauge")
                    for row in rows:
                        if row.get(column) is None:
                            continue
                        labels = ",".join(f'{c}="{_label(row[c])}"' for c in label_cols)
                        lines.append(f"{metric}{{{labels}}} {float(row[column])}")
    except psycopg2.Error:
        return "# TYPE pgbouncer_up gauge\npgbouncer_up 0\n"
    finally:
        conn.close()
    return "# TYPE pgbouncer_up gauge\npgbouncer_up 1\n" + "\n".join(lines) + "\n"


class Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # the name http.server calls
        if self.path.split("?")[0] != "/metrics":
            self.send_error(404, "try /metrics")
            return
        body = collect().encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:  # scrapes every 15 s: keep the journal quiet
        pass


def main() -> None:
    host, _, port = os.environ.get("LISTEN", "127.0.0.1:9127").rpartition(":")
    ThreadingHTTPServer((host, int(port)), Handler).serve_forever()


if __name__ == "__main__":
    main()

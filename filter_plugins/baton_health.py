"""What health.yml makes of a baton_assess result: the table an operator reads and the
Prometheus metrics (text format, for node_exporter's textfile collector)."""

from __future__ import annotations

from typing import Any

STATUS = {"healthy": 0, "degraded": 1, "unhealthy": 2}


def baton_health_rows(assessment: dict[str, Any]) -> list[str]:
    """One line per region: verdict, database role and leader, data loss, Redis, reasons."""
    view = assessment.get("global", {})
    loss = {c["region"]: c["data_loss_bytes"] for c in view.get("candidates", [])}
    rows = []
    for region, entry in assessment.get("regions", {}).items():
        facts = entry["facts"]
        patroni = facts["patroni"]
        role = patroni["cluster_role"] or "-"
        if region in view.get("writable_regions", []):
            role = "PRIMARY" if role == "primary" else f"{role}+WRITABLE"
        redis = sorted({p.get("role", "?") for p in facts["redis"].values() if p.get("ok")})
        lag = loss.get(region)
        rows.append(
            f"{region:<9} {entry['verdict']:<9} db={role}({patroni['leader'] or 'no leader'}) "
            f"loss={'-' if lag is None else f'{lag}B'} redis={'/'.join(redis) or '-'}"
            + (f"  ! {'; '.join(entry['reasons'])}" if entry["reasons"] else ""))
    holder = view.get("baton_holder") or "nobody"
    writable = ", ".join(view.get("writable_regions", [])) or "none"
    ranked = ", ".join(c["region"] for c in view.get("candidates", [])) or "none"
    rows.append(f"baton: {holder}; writable: {writable}; failover candidates: {ranked}")
    return rows


def baton_health_metrics(assessment: dict[str, Any], now: float) -> str:
    """The assessment as Prometheus metrics (prometheus-client's text format).

    The assessed region is the label `assessed_region`: Prometheus gives every series scraped
    from the global site's node exporter `region="global"` already.
    """
    from prometheus_client import CollectorRegistry, Gauge, generate_latest

    registry = CollectorRegistry()
    status = Gauge("baton_region_status", "Verdict of baton_assess: 0 healthy, 1 degraded, "
                   "2 unhealthy", ["assessed_region"], registry=registry)
    holder = Gauge("baton_region_holds_baton", "1 for the region that holds the baton",
                   ["assessed_region"], registry=registry)
    loss = Gauge("baton_region_data_loss_bytes", "WAL a failover to this standby region "
                 "would lose now, in bytes", ["assessed_region"], registry=registry)
    view = assessment.get("global", {})
    for region, entry in assessment.get("regions", {}).items():
        status.labels(region).set(STATUS[entry["verdict"]])
        holder.labels(region).set(1 if view.get("baton_holder") == region else 0)
    for candidate in view.get("candidates", []):
        if candidate["data_loss_bytes"] is not None:
            loss.labels(candidate["region"]).set(candidate["data_loss_bytes"])
    Gauge("baton_writable_regions", "Regions that accept writes (1 is right)",
          registry=registry).set(len(view.get("writable_regions", [])))
    Gauge("baton_health_problems", "Problems health.yml reports for an operator to act on",
          registry=registry).set(len(assessment.get("problems", [])))
    Gauge("baton_health_last_run_timestamp_seconds", "When health.yml last assessed",
          registry=registry).set(now)
    Gauge("baton_health_assess_seconds", "How long the assessment took",
          registry=registry).set(assessment.get("elapsed", 0))
    return generate_latest(registry).decode()


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {"baton_health_rows": baton_health_rows,
                "baton_health_metrics": baton_health_metrics}

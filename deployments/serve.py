"""Serve every deployment of prefect.yaml from one process (`outbound serve`), schedules and triggers included.

For a single-machine installation that needs no work pool: the Prefect server still records and
shows every run. `drain-events` watches the outbox (a run a minute, each lasting 75 s), so an event
stored by the API is provisioned within a poll interval, in batches under a burst.
"""

import logging
from typing import Optional

log = logging.getLogger("outbound.serve")

DRAIN_CRON = "* * * * *"
DRAIN_SECONDS = 75  # a little longer than the schedule's minute: two drainers overlap at each hand-over
RECONCILE_CRON = "0 2 * * *"
PRUNE_CRON = "30 3 * * *"  # after the nightly reconciliation, before the working day
SWEEP_INTERVAL_SECONDS = 600  # see flows/sweep.py: every minute flooded the run list


def build_deployments(config_path: Optional[str] = None, reconcile_cron: str = RECONCILE_CRON,
                      sweep_after_seconds: float = 300, prune_cron: str = PRUNE_CRON) -> list:
    """The RunnerDeployments that mirror prefect.yaml (reconciliation only when flows/reconcile.py exists)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig

    from flows.provision import drain_events, provision_user
    from flows.prune import prune_state
    from flows.sweep import sweep_events

    params = {"config_path": config_path} if config_path else {}
    deployments = [
        drain_events.to_deployment(name="drain-events", cron=DRAIN_CRON,
                                   parameters={**params, "run_for_seconds": DRAIN_SECONDS},
                                   concurrency_limit=ConcurrencyLimitConfig(limit=2, collision_strategy="ENQUEUE"),
                                   tags=["outbound", "trigger:event"],
                                   description="Watch the outbox and provision what arrives, in batches."),
        provision_user.to_deployment(name="provision-user", parameters=params, tags=["outbound", "trigger:manual"],
                                     description="Provision one event's user now (event_id), with what else is pending."),
        sweep_events.to_deployment(name="sweep-events", interval=SWEEP_INTERVAL_SECONDS,
                                   parameters={**params, "older_than_seconds": sweep_after_seconds},
                                   tags=["outbound", "trigger:schedule"],
                                   description="Re-dispatch events accepted but unfinished."),
        prune_state.to_deployment(name="prune-state", cron=prune_cron, parameters=params,
                                  tags=["outbound", "trigger:schedule"],
                                  description="Nightly retention: prune old events, operations and attempts."),
    ]
    try:
        from flows.reconcile import reconcile_all, reconcile_connector
    except ImportError as exc:  # another issue adds the reconciliation flows
        log.warning("reconciliation deployments not served: flows.reconcile is not importable (%s)", exc)
        return deployments
    deployments += [
        reconcile_all.to_deployment(name="reconcile-all", cron=reconcile_cron, parameters=params,
                                    tags=["outbound", "trigger:schedule"],
                                    description="Nightly reconciliation of every connector."),
        reconcile_connector.to_deployment(name="reconcile-connector", parameters=params,
                                          tags=["outbound", "trigger:on-demand"],
                                          description="Reconcile one connector on demand (connector, dry_run)."),
    ]
    return deployments


def serve_all(config_path: Optional[str] = None, limit: Optional[int] = None, **kwargs) -> None:
    """Register the deployments with the Prefect server and run their flows from this process."""
    from prefect import serve

    serve(*build_deployments(config_path, **kwargs), limit=limit)

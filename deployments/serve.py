"""Serve every deployment of prefect.yaml from one process (`outbound serve`), schedules and triggers included.

For a single-machine installation that needs no work pool: the Prefect server still records and
shows every run, and `provision-user` starts on the `outbound.user.*` events the API emits. Set
PREFECT_RUNNER_POLL_FREQUENCY=1 for ~2 s from event to run (serve's default polls every 10 s).
"""

import logging
from typing import Optional

log = logging.getLogger("outbound.serve")

EVENT_PATTERN = "outbound.user.*"
RECONCILE_CRON = "0 2 * * *"
SWEEP_INTERVAL_SECONDS = 600  # see flows/sweep.py: every minute flooded the run list


def provision_trigger():
    """Start provision-user on every `outbound.user.*` event, with the outbox event id as parameter."""
    from prefect.events import DeploymentEventTrigger

    return DeploymentEventTrigger(name="outbound user event", expect={EVENT_PATTERN},
                                  match={"prefect.resource.id": "outbound.event.*"},
                                  parameters={"event_id": "{{ event.payload.event_id }}"})


def build_deployments(config_path: Optional[str] = None, reconcile_cron: str = RECONCILE_CRON,
                      sweep_after_seconds: float = 300) -> list:
    """The RunnerDeployments that mirror prefect.yaml (reconciliation only when flows/reconcile.py exists)."""
    from flows.provision import provision_user
    from flows.sweep import sweep_events

    params = {"config_path": config_path} if config_path else {}
    deployments = [
        provision_user.to_deployment(name="provision-user", triggers=[provision_trigger()], parameters=params,
                                     tags=["outbound", "trigger:event"],
                                     description="Provision one user after an identity event."),
        sweep_events.to_deployment(name="sweep-events", interval=SWEEP_INTERVAL_SECONDS,
                                   parameters={**params, "older_than_seconds": sweep_after_seconds},
                                   tags=["outbound", "trigger:schedule"],
                                   description="Re-dispatch events accepted but unfinished."),
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

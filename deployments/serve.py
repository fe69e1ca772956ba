"""Serve every deployment of the catalog from one process (`outbound serve`), schedules and triggers included.

For a single-machine installation that needs no work pool: the Prefect server still records and
shows every run. `drain-events` watches the outbox (a run a minute, each lasting 75 s), so an event
stored by the API is provisioned within a poll interval, in batches under a burst.
"""

import importlib
from dataclasses import replace
from typing import Optional

from deployments.catalog import DEPLOYMENTS, Deployment


def runner_deployment(deployment: Deployment, config_path: Optional[str] = None):
    """The RunnerDeployment of one catalog entry (with the configuration file as a parameter, when given)."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.schedules import Cron, Interval

    flow = getattr(importlib.import_module(deployment.module), deployment.function)
    schedule = (Cron(deployment.cron, timezone="UTC") if deployment.cron
                else Interval(deployment.interval) if deployment.interval else None)
    concurrency = (ConcurrencyLimitConfig(limit=deployment.concurrency, collision_strategy="ENQUEUE")
                   if deployment.concurrency else None)
    params = {"config_path": config_path} if config_path else {}
    return flow.to_deployment(name=deployment.name, schedule=schedule, concurrency_limit=concurrency,
                              parameters={**params, **deployment.parameters}, tags=deployment.tags,
                              description=deployment.description)


def build_deployments(config_path: Optional[str] = None, reconcile_cron: Optional[str] = None,
                      sweep_after_seconds: Optional[float] = None) -> list:
    """The RunnerDeployments of the catalog; `outbound serve`'s options may move reconcile-all and the sweep."""
    chosen = []
    for deployment in DEPLOYMENTS:
        if deployment.name == "reconcile-all" and reconcile_cron:
            deployment = replace(deployment, cron=reconcile_cron)
        if deployment.name == "sweep-events" and sweep_after_seconds is not None:
            deployment = replace(deployment, parameters={**deployment.parameters,
                                                         "older_than_seconds": sweep_after_seconds})
        chosen.append(runner_deployment(deployment, config_path))
    return chosen


def serve_all(config_path: Optional[str] = None, limit: Optional[int] = None, **kwargs) -> None:
    """Register the deployments with the Prefect server and run their flows from this process."""
    from prefect import serve

    serve(*build_deployments(config_path, **kwargs), limit=limit)

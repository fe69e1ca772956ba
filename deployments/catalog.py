"""The deployments of outbound-provisioning, declared once.

`outbound serve` builds its deployments from `DEPLOYMENTS` (deployments/serve.py), and prefect.yaml
is generated from it (`outbound deployments yaml > prefect.yaml`); tests/test_catalog.py fails
while the two disagree. Every cron runs in UTC.
"""

from dataclasses import dataclass, field
from typing import Optional

WORK_POOL = "outbound"
PREFECT_VERSION = "3.9.1"


@dataclass(frozen=True)
class Deployment:
    name: str
    entrypoint: str  # path/to/module.py:flow_function, as prefect.yaml names it
    description: str
    trigger: str  # what starts a run: event, manual, schedule, on-demand (tagged trigger:<this>)
    cron: Optional[str] = None
    interval: Optional[int] = None  # seconds
    concurrency: Optional[int] = None  # runs at once; a run started beyond it waits its turn (ENQUEUE)
    parameters: dict = field(default_factory=dict)
    # Under `outbound serve`: no schedule; the serve process starts a run only when work is due
    # (deployments/serve.py, DrainDispatcher). A work pool keeps the schedule: nothing of ours runs
    # beside it to look before a run is created.
    on_demand_when_served: bool = False

    @property
    def tags(self) -> list[str]:
        return ["outbound", f"trigger:{self.trigger}"]

    @property
    def module(self) -> str:
        """The flow's module, importable: flows/provision.py:drain_events -> flows.provision."""
        return self.entrypoint.partition(":")[0].removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        return self.entrypoint.partition(":")[2]


DEPLOYMENTS = (
    Deployment("drain-events", "flows/provision.py:drain_events",
               "Watch the outbox and provision what arrives, in batches (one run a minute, each lasting 75 s, "
               "so two overlap at every hand-over; see docs/operations.md).",
               "event", cron="* * * * *", concurrency=2, parameters={"run_for_seconds": 75},
               on_demand_when_served=True),
    Deployment("provision-user", "flows/provision.py:provision_user",
               "Provision one event's user now (parameter event_id), with whatever else is pending.", "manual"),
    Deployment("reconcile-all", "flows/reconcile.py:reconcile_all", "Nightly reconciliation of every connector.",
               "schedule", cron="0 2 * * *"),
    Deployment("reconcile-connector", "flows/reconcile.py:reconcile_connector",
               "Reconcile one connector on demand (parameters connector and dry_run).", "on-demand"),
    # Every 10 minutes, not every minute: most sweeps find nothing (flows/sweep.py).
    Deployment("sweep-events", "flows/sweep.py:sweep_events",
               "Re-dispatch events accepted but not finished after older_than_seconds.",
               "schedule", interval=600, parameters={"older_than_seconds": 300}),
    # Incremental pulls read only what changed (a watermark); one at a time, so two never race.
    Deployment("pull-directory", "flows/pull.py:pull_directory",
               "Pull sources.ldap (LDAP / Active Directory) into the outbox: what changed since the last pull "
               "(parameter full for a full pull, which also finds deletes).",
               "schedule", interval=300, concurrency=1),
    # After the nightly reconciliation, before the working day.
    Deployment("prune-state", "flows/prune.py:prune_state",
               "Nightly retention, after the reconciliation (the same pruning as `outbound prune`).",
               "schedule", cron="30 3 * * *"),
)


def named(name: str) -> Deployment:
    """The deployment called `name`."""
    return next(d for d in DEPLOYMENTS if d.name == name)


HEADER = f"""\
# Generated from deployments/catalog.py by `outbound deployments yaml > prefect.yaml`: change the
# catalog, then regenerate this file (tests/test_catalog.py fails while the two differ).
#
# The production deployments of outbound-provisioning (see docs/operations.md).
#
#   prefect work-pool create {WORK_POOL} --type process      # once
#   prefect deploy --all                                   # from the repository root
#   prefect worker start --pool {WORK_POOL}                   # on each worker machine (N of them)
#
# Workers run the flows from this checkout. Configuration and the
# state store come from the worker's environment: OUTBOUND_CONFIG and OUTBOUND_DATABASE_URL.
# `outbound serve` serves the same deployments from one process instead (no work pool).
name: outbound-provisioning
prefect-version: {PREFECT_VERSION}

build: null
push: null
# No pull steps: `prefect deploy` records the directory it ran in, and workers run from there.
pull: null

deployments:
"""


def as_prefect_yaml(deployment: Deployment) -> dict:
    """One entry of prefect.yaml's `deployments:`."""
    entry = {"name": deployment.name, "description": deployment.description, "entrypoint": deployment.entrypoint,
             "tags": deployment.tags, "parameters": dict(deployment.parameters),
             "work_pool": {"name": WORK_POOL, "work_queue_name": "default", "job_variables": {}}}
    if deployment.concurrency:
        entry["concurrency_limit"] = {"limit": deployment.concurrency, "collision_strategy": "ENQUEUE"}
    if deployment.cron:
        entry["schedules"] = [{"cron": deployment.cron, "timezone": "UTC", "active": True}]
    elif deployment.interval:
        entry["schedules"] = [{"interval": deployment.interval, "active": True}]
    return entry


def prefect_yaml() -> str:
    """The text of prefect.yaml."""
    import yaml

    entries = [yaml.safe_dump([as_prefect_yaml(d)], sort_keys=False, width=110) for d in DEPLOYMENTS]
    return HEADER + "\n".join(entries)

"""The reconciliation flows: snapshot → plan → guard → apply in chunks → report, per connector.

One reconciliation of a connector at a time: the whole of it (plan and apply) runs under the store
lease `reconcile:<connector>`, kept alive while it runs. A second one waits up to `lock_wait`
seconds, then ends with status `busy`, naming who holds the lease and since when. Holding the lease
also proves that a run of that connector still marked `running` was cut short (a killed process):
it is marked `abandoned`.
"""

import json
import logging
import threading
from collections import deque
from contextlib import ExitStack, contextmanager
from datetime import timedelta
from typing import Iterator, Optional

from prefect import flow, get_run_logger
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput
from prefect.runtime import deployment, flow_run

from sqlalchemy import update

from models.config import Config, load_config
from models.db import session_scope
from models.locks import LockTimeout, lease
from models.tables import Lease, ReconciliationRun, utcnow
from tasks.apply import Counts, apply_chunk, apply_groups, chunks, progress_listeners
from tasks.apply import DEFAULT_CHUNK
from tasks.plan import Plan, plan_task
from tasks.retry import task_options

DRIFT_ROWS_SHOWN = 1000
LOCK_TTL = 300.0  # seconds; renewed every third of it while the run lives, so only a dead holder lets it lapse


class Busy(Exception):
    """Another reconciliation of the connector holds its lease."""


class Approval(RunInput):
    """The operator's answer to a plan that deletes or disables more than max_deletions allows."""

    approve: bool = False
    comment: Optional[str] = None


def _run_name() -> str:
    return f"reconcile {flow_run.parameters.get('connector', '?')}"


def _keep_alive(name: str, owner: str, stop: threading.Event) -> None:
    while not stop.wait(LOCK_TTL / 3):
        with session_scope() as session:
            renewed = session.exec(update(Lease).where(Lease.name == name, Lease.owner == owner)
                                   .values(expires_at=utcnow() + timedelta(seconds=LOCK_TTL))).rowcount
        if not renewed:
            logging.getLogger("outbound.reconcile").warning("lease=%s lost: expired and taken over", name)
            return


@contextmanager
def reconcile_lock(connector: str, wait: float) -> Iterator[str]:
    """Hold `reconcile:<connector>` for the block; wait up to `wait` seconds, else raise Busy saying who holds it."""
    name = f"reconcile:{connector}"
    with ExitStack() as stack:
        try:
            owner = stack.enter_context(lease(name, ttl=LOCK_TTL, wait=0))
        except LockTimeout as exc:
            if wait <= 0:
                raise Busy(str(exc)) from None
            get_run_logger().warning("connector=%s another reconciliation is running (%s): waiting up to %gs",
                                     connector, exc, wait)
            try:
                owner = stack.enter_context(lease(name, ttl=LOCK_TTL, wait=wait))
            except LockTimeout as exc:
                raise Busy(f"{exc} (waited {wait:g}s)") from None
        stop = threading.Event()
        keeper = threading.Thread(target=_keep_alive, args=(name, owner, stop), name=f"lease {name}", daemon=True)
        keeper.start()
        try:
            yield owner
        finally:
            stop.set()
            keeper.join()


def _abandon_stale_runs(connector: str) -> int:
    """Mark runs of `connector` still `running` as abandoned: we hold its lease, so their process is gone."""
    with session_scope() as session:
        return session.exec(update(ReconciliationRun)
                            .where(ReconciliationRun.connector == connector, ReconciliationRun.status == "running")
                            .values(status="abandoned", finished_at=utcnow(),
                                    error="interrupted: the process ended before the run finished")).rowcount


def _start_run(connector: str, dry_run: bool) -> str:
    with session_scope() as session:
        run = ReconciliationRun(connector=connector, dry_run=dry_run,
                                flow_run_id=str(flow_run.id) if flow_run.id else None)
        session.add(run)
        return run.id


def _finish_run(run_id: str, status: str, counts: dict, outcomes: dict, error: Optional[str] = None) -> None:
    with session_scope() as session:
        run = session.get(ReconciliationRun, run_id)
        run.status, run.counts, run.outcomes, run.error, run.finished_at = status, counts, outcomes, error, utcnow()
        session.add(run)


def _plan_artifacts(plan: Plan, dry_run: bool) -> None:
    counts = plan.counts()
    create_table_artifact(table=[{"action": a, "count": n} for a, n in counts.items()],
                          key=f"reconcile-{plan.connector}-counts".lower(),
                          description=f"Plan for {plan.connector}" + (" (dry-run)" if dry_run else ""), _sync=True)
    drift = plan.rows.head(DRIFT_ROWS_SHOWN).copy()
    drift["changes"] = [json.dumps(c, default=str) if c else "" for c in drift["changes"]]
    create_table_artifact(table=drift.fillna("").to_dict(orient="records"),
                          description=f"Drift on {plan.connector}: first {len(drift)} of {len(plan.rows)} rows",
                          _sync=True)


def _summary_artifact(plan: Plan, status: str, outcome: Counts, dry_run: bool) -> None:
    lines = [f"# Reconciliation of {plan.connector}", "", f"**Status:** {status}" + (" (dry-run)" if dry_run else ""),
             "", plan.summary(), "", "| outcome | count |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in outcome.as_dict().items()]
    if outcome.failures:
        lines += ["", "## First failures", ""] + [f"- {f['action']} {f['user']}: {f['error']}"
                                                   for f in outcome.failures[:20]]
    create_markdown_artifact(markdown="\n".join(lines), key=f"reconcile-{plan.connector}-summary".lower(), _sync=True)


def _apply(plan: Plan, config: Config, run_id: str, dry_run: bool, chunk_size: int) -> Counts:
    """Apply the plan's rows in chunks, a few chunk tasks in flight, reporting progress."""
    cfg = config.connector(plan.connector)
    rows = plan.rows.to_dict(orient="records")
    total, done, outcome = len(rows), 0, Counts()
    progress_id = create_progress_artifact(progress=0.0, description=f"Applying {total} rows to {cfg.name}",
                                           _sync=True)
    for listener in progress_listeners:
        listener(0, total)
    in_flight: deque = deque()

    def settle(future, n):
        nonlocal done
        outcome.add(future.result())
        done += n
        update_progress_artifact(artifact_id=progress_id, progress=100.0 * done / max(total, 1), _sync=True)
        for listener in progress_listeners:
            listener(done, total)

    for start, chunk in chunks(rows, chunk_size):
        accounts = {r["local_id"]: plan.desired[r["local_id"]] for r in chunk if r["local_id"] in plan.desired}
        future = apply_chunk.submit(cfg.name, chunk, accounts, cfg, run_id, config.retry, dry_run,
                                    start + 1, start + len(chunk))
        in_flight.append((future, len(chunk)))
        if len(in_flight) >= (cfg.max_concurrency or 4):
            settle(*in_flight.popleft())
    while in_flight:
        settle(*in_flight.popleft())
    if not total:
        update_progress_artifact(artifact_id=progress_id, progress=100.0, _sync=True)
    if len(plan.group_rows):  # after every user row: the accounts the groups add must exist
        outcome.add(apply_groups(cfg.name, plan.group_rows.to_dict(orient="records"), cfg, run_id, dry_run))
    return outcome


async def run_connector(config: Config, connector: str, dry_run: bool = False, yes: bool = False,
                        report: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK, lock_wait: float = 0) -> dict:
    """Reconcile one connector inside the current flow, under its lease; return the run's summary."""
    logger = get_run_logger()
    cfg = config.connector(connector)
    try:
        with reconcile_lock(cfg.name, lock_wait):
            abandoned = _abandon_stale_runs(cfg.name)
            if abandoned:
                logger.warning("connector=%s marked %d interrupted run(s) abandoned", cfg.name, abandoned)
            return await _run_locked(config, cfg.name, dry_run, yes, report, chunk_size)
    except Busy as exc:
        message = f"another reconciliation of {cfg.name} is running: {exc}"
        logger.warning("connector=%s status=busy %s", cfg.name, message)
        return {"connector": cfg.name, "run_id": None, "dry_run": dry_run, "status": "busy", "message": message,
                "summary": f"{cfg.name}: not reconciled", "counts": {}, "deletions": 0, "threshold": None,
                "outcomes": {"succeeded": 0, "failed": 0, "skipped": 0}, "failures": []}


async def _run_locked(config: Config, connector: str, dry_run: bool, yes: bool, report: Optional[str],
                      chunk_size: int) -> dict:
    logger = get_run_logger()
    cfg = config.connector(connector)
    run_id = _start_run(cfg.name, dry_run)
    try:
        # Listing is a read: retried by the one retry policy when the target fails transiently.
        plan = plan_task.with_options(**task_options(config.retry))(cfg.name, config, dry_run)
    except Exception as exc:
        _finish_run(run_id, "failed", {}, {}, f"{type(exc).__name__}: {exc}")
        raise
    counts = plan.counts()
    logger.info("connector=%s %s", cfg.name, plan.summary())
    if report:
        frame = plan.rows.copy()
        frame["changes"] = [json.dumps(c, default=str) if c else "" for c in frame["changes"]]
        frame.to_csv(report, index=False)
    _plan_artifacts(plan, dry_run)
    result = {"connector": cfg.name, "run_id": run_id, "dry_run": dry_run, "summary": plan.summary(),
              "counts": counts, "deletions": plan.deletions, "threshold": plan.threshold}

    if plan.guard_tripped and not yes and not dry_run:
        message = (f"the plan would delete or disable {plan.deletions} accounts on {cfg.name}, more than "
                   f"max_deletions {plan.threshold}")
        if deployment.id:  # a deployment run: wait for an operator in the Prefect UI
            logger.warning("%s: pausing for approval", message)
            answer = await pause_flow_run(wait_for_input=Approval.with_initial_data(
                description=f"{message}. Approve to apply the plan anyway.", approve=False), timeout=24 * 3600)
            approved = bool(answer and answer.approve)
        else:
            approved = False
        if not approved:
            status = "rejected" if deployment.id else "awaiting-approval"
            _finish_run(run_id, status, counts, {}, message)
            _summary_artifact(plan, status, Counts(skipped=len(plan.rows) + len(plan.group_rows)), dry_run)
            return {**result, "status": status, "outcomes": {"succeeded": 0, "failed": 0, "skipped": 0},
                    "message": message, "failures": []}

    outcome = _apply(plan, config, run_id, dry_run, chunk_size)
    status = "failed" if outcome.failed and not outcome.succeeded else "partial" if outcome.failed else "succeeded"
    _finish_run(run_id, status, counts, outcome.as_dict())
    _summary_artifact(plan, status, outcome, dry_run)
    logger.info("connector=%s status=%s %s", cfg.name, status, outcome.as_dict())
    return {**result, "status": status, "outcomes": outcome.as_dict(), "failures": outcome.failures[:50]}


@flow(name="reconcile-connector", flow_run_name=_run_name, retries=0, validate_parameters=True)
async def reconcile_connector(connector: str, dry_run: bool = False, config_path: Optional[str] = None,
                              yes: bool = False, report: Optional[str] = None, lock_wait: float = 0,
                              chunk_size: int = DEFAULT_CHUNK) -> dict:
    """Bring one connector's target to the desired state: plan, guard, apply in chunks, report."""
    return await run_connector(load_config(config_path), connector, dry_run, yes, report, chunk_size, lock_wait)


@flow(name="reconcile-all", flow_run_name="reconcile all connectors", retries=0)
async def reconcile_all(dry_run: bool = False, config_path: Optional[str] = None, yes: bool = False,
                        lock_wait: float = 0) -> list[dict]:
    """Reconcile every enabled connector, one after the other (each a subflow named after it)."""
    config = load_config(config_path)
    results = []
    for cfg in config.connectors:
        if cfg.enabled:
            results.append(await reconcile_connector(cfg.name, dry_run, config_path, yes, lock_wait=lock_wait))
    return results

"""The reconciliation flows: snapshot → plan → guard → apply in chunks → report, per connector.

One reconciliation of a connector at a time: the whole of it (plan and apply) runs under the store
lease `reconcile:<connector>`, kept alive while it runs. A second one waits up to `lock_wait`
seconds, then ends with status `busy`, naming who holds the lease and since when. Holding the lease
also proves that a run of that connector still marked `running` was cut short (a killed process):
it is marked `abandoned`.

The flow run's final state tells the outcome: Completed when every row was applied (or a dry run
found what it would do), Failed when rows failed, Cancelled when nothing was applied on purpose
(the deletion guard's rejection or stop, or another reconciliation holding the lease). Its name
says the mode (`reconcile app (dry run)`, `… (approved)`, `… (rejected)`), its tags say how it was
started (`trigger:<how>`) and for which connector (`connector:<name>`), and its artifacts are keyed
`outbound-<connector>-<kind>` (`outbound-<connector>-dry-run-<kind>` for dry runs).
"""

import asyncio
import json
import logging
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from typing import Iterator, Optional

from prefect import flow, get_run_logger, tags
from prefect.artifacts import create_markdown_artifact, create_progress_artifact, create_table_artifact
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.runtime import deployment, flow_run
from prefect.states import Cancelled, Completed, Failed, State
from prefect.utilities.annotations import quote

from connectors.errors import CREDENTIAL_CODES
from models.config import Config, load_config
from flows.crashed import mark_crashed
from models.errors import ProvisioningError
from models.kinds import OperationStatus, RunStatus
from models.locks import LockTimeout, kept, lease
from models.runstate import abandon_stale_runs, finish_run, running_reconciliation_flow_runs, start_run
from tasks.apply import Counts, SendWindow, apply_chunk, apply_groups, chunks, progress_listeners
from tasks.apply import DEFAULT_CHUNK
from tasks.door import admit
from tasks.limits import untagged_tasks
from tasks.guard import Approval, Decision, dry_run_verdict, plan_hash, settle, stopped_words
from tasks.plan import Plan, plan_task
from tasks.retry import task_options
from tasks.runlog import artifact_key, log_outcomes

DRIFT_ROWS_SHOWN = 1000
LOCK_TTL = 300.0  # seconds; renewed every third of it while the run lives, so only a dead holder lets it lapse


class Busy(ProvisioningError):
    """Another reconciliation of the connector holds its lease."""

    code = "busy"


__all__ = ["Approval", "Decision", "preload", "reconcile", "reconcile_all", "reconcile_connector", "run_connector"]
STOPPED_BY_GUARD = RunStatus.STOPPED_BY_GUARD
# Final Prefect state per reconciliation status: anything not applied in full is not green.
CANCELLED_STATUSES = (RunStatus.REJECTED, STOPPED_BY_GUARD, RunStatus.BUSY)
FAILED_STATUSES = (RunStatus.FAILED, RunStatus.PARTIAL)


def preload(config: Config) -> None:
    """Import what a run of `config` imports on its way: Prefect's engines, the store's driver, each
    enabled connector's modules (the SCIM schema models alone take ~0.6 s).

    A command calls it while its temporary Prefect API starts, so the two overlap instead of the
    imports following the API's start; and the imports are made in the calling thread, not in a
    chunk's (CPython gh-106905). Nothing is connected to: the store is migrated on its first use.
    """
    from flows.warm import import_modules
    from models.db import get_engine

    get_engine(migrate=False)  # the engine, and so its driver and dialect
    import_modules(("prefect.flow_engine", "prefect.task_engine",
                    *sorted({f"connectors.{c.type}" for c in config.connectors if c.enabled})))


def _run_name() -> str:
    name = f"reconcile {flow_run.parameters.get('connector', '?')}"
    return f"{name} (dry run)" if flow_run.parameters.get("dry_run") else name


def _ui_link(path: str) -> Optional[str]:
    from prefect.settings import PREFECT_UI_URL

    base = PREFECT_UI_URL.value()
    return f"{base.rstrip('/')}{path}" if base else path


async def _label_run(suffix: Optional[str] = None, add_tags: tuple[str, ...] = ()) -> None:
    """Rename this flow run to `reconcile <connector> (<suffix>)` and/or add tags (best effort: only labels)."""
    if not flow_run.id:
        return
    current = set(flow_run.tags or ())
    try:
        async with get_client() as client:
            if add_tags and not set(add_tags) <= current:
                run = await client.read_flow_run(flow_run.id)
                await client.update_flow_run(flow_run.id, tags=sorted(set(run.tags) | set(add_tags)))
            if suffix:
                await client.update_flow_run(flow_run.id, name=f"reconcile {flow_run.parameters.get('connector')} "
                                                                f"({suffix})")
    except Exception as exc:  # a label is not worth failing the reconciliation for
        get_run_logger().warning("could not label the flow run: %s: %s", type(exc).__name__, exc)


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
        stack.enter_context(kept([name], owner, LOCK_TTL))
        yield owner


def _plan_artifacts(plan: Plan, dry_run: bool) -> Optional[str]:
    """The plan's counts and drift table; return the drift table's UI link (for the approval form)."""
    counts = plan.counts()
    mode = " (dry run: nothing written)" if dry_run else ""
    create_table_artifact(table=[{"action": a, "count": n} for a, n in counts.items()],
                          key=artifact_key(plan.connector, "plan", dry_run),
                          description=f"Plan for {plan.connector}{mode}", _sync=True)
    drift = plan.rows.head(DRIFT_ROWS_SHOWN).copy()
    drift["changes"] = [json.dumps(c, default=str) if c else "" for c in drift["changes"]]
    drift_id = create_table_artifact(table=drift.fillna("").to_dict(orient="records"),
                                     key=artifact_key(plan.connector, "drift", dry_run),
                                     description=f"Drift on {plan.connector}{mode}: first {len(drift)} of "
                                                 f"{len(plan.rows)} rows", _sync=True)
    return _ui_link(f"/artifacts/artifact/{drift_id}") if drift_id else None


def _guard_line(plan: Plan) -> str:
    verdict = dry_run_verdict(plan.guard_tripped, plan.deletions, plan.threshold)
    return verdict[0].upper() + verdict[1:] + "."


def _summary_artifact(plan: Plan, status: str, outcome: Counts, dry_run: bool,
                      decision: Optional[dict] = None) -> None:
    shown = f"{status} (dry run: {'the real run would stop at the deletion guard' if plan.guard_tripped else 'nothing written'})" \
        if dry_run else status
    lines = [f"# Reconciliation of {plan.connector}" + (" (dry run)" if dry_run else ""), "",
             f"**Status:** {shown}", ""]
    if dry_run:
        lines += ["**Dry run: nothing was written to the target.** The outcome counts below are what the real "
                  "run would do.", "", _guard_line(plan), ""]
    if decision:
        lines += [f"**Deletion guard:** {decision['decision']}" + (f" by {decision['by']}" if decision.get("by") else "")
                  + (f": {decision['comment']}" if decision.get("comment") else "")
                  + f" (plan sha256 `{decision['plan_hash'][:16]}`)", ""]
    labels = {OperationStatus.SUCCEEDED: "would apply", OperationStatus.FAILED: "would fail"} if dry_run else {}
    lines += [plan.summary(), "", "| outcome | count |", "|---|---|"]
    lines += [f"| {labels.get(k, k)} | {v} |" for k, v in outcome.as_dict().items()]
    if outcome.failures:
        lines += ["", "## First failures", ""] + [f"- {f['action']} {f['user']}: {f['error']}"
                                                   for f in outcome.failures[:20]]
    who = f" by {decision['by']}" if decision and decision.get("by") else ""
    create_markdown_artifact(markdown="\n".join(lines), key=artifact_key(plan.connector, "summary", dry_run),
                             description=f"{plan.connector}: {status}"
                                         + (f", guard {decision['decision']}{who}" if decision else "")
                                         + (f" (dry run: nothing written; {_guard_line(plan)[:-1]})" if dry_run
                                            else ""), _sync=True)


def _refused(plan: Plan, cfg, config: Config) -> Optional[tuple[Counts, str]]:
    """The plan refused as a whole, before its first chunk, when the target says it cannot take its
    creates (Salesforce: fewer licences free than they need; each chunk checks only its own); None
    when it can, or cannot tell (each chunk then checks its creates)."""
    from connectors.errors import ConnectorError
    from models.kinds import Action
    from tasks.door import target

    rows = plan.rows.to_dict(orient="records")
    creates = [r for r in rows if r["op"] == Action.CREATE and r["local_id"] in plan.desired]
    if not creates:
        return None
    try:
        with target(cfg, config) as connector:
            if not connector.capabilities.checks_plan:
                return None
            message = connector.plan_refusal([plan.desired[r["local_id"]] for r in creates])
    except ConnectorError as exc:
        get_run_logger().warning("connector=%s the plan's licences could not be checked (%s); each chunk checks "
                                 "its own", cfg.name, exc)
        return None
    if message is None:
        return None
    return Counts(failed=len(creates), skipped=len(rows) - len(creates) + len(plan.group_rows),
                  failures=[{"action": r["action"], "user": r["entity_name"], "error": f"create user "
                             f"{r['user_name']}: {message}", "status": OperationStatus.FAILED, "code": "rejected"}
                            for r in creates]), message


def _record_refused(plan: Plan, connector: str, run_id: str, message: str) -> None:
    """Each refused create as a failed operation of the run, with no attempt (nothing was sent)."""
    from models.db import session_scope
    from models.kinds import Action, Intent
    from models.runstate import operation_row, record_operations

    rows = [operation_row(connector, r["local_id"], r["entity_name"], r.get("decision") or Intent.PROVISION,
                          event_id=f"reconcile:{run_id}", operation=r["action"], status=OperationStatus.FAILED,
                          reason=r["reason"], error_code="rejected", error_message=message,
                          remote_name=r["user_name"], flow_run_id=str(flow_run.id) if flow_run.id else None)
            for r in plan.rows.to_dict(orient="records") if r["op"] == Action.CREATE and r["local_id"] in plan.desired]
    with session_scope() as session:
        record_operations(session, rows)


class Progress:
    """The progress artifact, updated off the chunk loop: the latest value is sent, one call at a time.

    A call waits while the Prefect API is busy recording the chunks' events (up to a second at
    10,000 users); made from the loop that submits the chunks, it held the next chunk back. Best
    effort: the artifact is only a gauge, so a failed update is logged, not raised.
    """

    def __init__(self, artifact_id) -> None:
        self.artifact_id, self.latest, self.queued = artifact_id, None, False
        self.lock = threading.Lock()

    def __enter__(self) -> "Progress":
        # One client for every update: Prefect's update_progress_artifact builds one (and its TLS
        # context) per call, which cost more than a chunk's own store writes.
        self.client = get_client(sync_client=True).__enter__()
        # The update's model serialised once here, so its sender thread builds nothing (CPython gh-106905).
        ArtifactUpdate(data=0.0).model_dump(mode="json", exclude_unset=True)
        self.sender = ThreadPoolExecutor(1, thread_name_prefix="progress")
        return self

    def __exit__(self, *exc) -> None:
        self.sender.shutdown(wait=True)
        self.client.__exit__(*exc)

    def update(self, value: float) -> None:
        with self.lock:
            self.latest = value
            if self.queued:
                return
            self.queued = True
        self.sender.submit(self._send)

    def _send(self) -> None:
        with self.lock:
            value, self.queued = self.latest, False
        try:
            self.client.update_artifact(artifact_id=self.artifact_id, artifact=ArtifactUpdate(data=value))
        except Exception as exc:
            logging.getLogger("outbound.reconcile").warning("progress not updated: %s: %s", type(exc).__name__, exc)


def _apply(plan: Plan, config: Config, run_id: str, dry_run: bool, chunk_size: int) -> Counts:
    """Apply the plan's rows in chunks, a few chunk tasks in flight, reporting progress."""
    with ExitStack() as stack:
        return _apply_in(stack, plan, config, run_id, dry_run, chunk_size)


def _apply_in(stack: ExitStack, plan: Plan, config: Config, run_id: str, dry_run: bool, chunk_size: int) -> Counts:
    cfg = config.connector(plan.connector)
    rows = plan.rows.to_dict(orient="records")
    total, done, outcome = len(rows), 0, Counts()
    what = (f"Dry run of {cfg.name}: checking {total} rows, nothing is written" if dry_run
            else f"Applying {total} rows to {cfg.name}")
    progress_id = create_progress_artifact(progress=0.0, description=what, _sync=True)
    for listener in progress_listeners:
        listener(0, total)
    in_flight: deque = deque()
    progress = stack.enter_context(Progress(progress_id)).update

    def settle(future, n):
        nonlocal done
        outcome.add(future.result())
        done += n
        progress(100.0 * done / max(total, 1))
        for listener in progress_listeners:
            listener(done, total)

    width = cfg.max_concurrency or 4
    sending, finished = SendWindow(width), set()  # `finished`: the chunks whose task has ended
    for start, chunk in chunks(rows, chunk_size):
        accounts = {r["local_id"]: plan.desired[r["local_id"]] for r in chunk if r["local_id"] in plan.desired}
        # Results in order; at most as many chunks recording as sending.
        while in_flight and (len(in_flight) >= 2 * width or in_flight[0][0] in finished):
            settle(*in_flight.popleft())
        leave = sending.enter()
        # quote(): Prefect walks a task's arguments twice (to resolve futures and record inputs); over a
        # chunk's rows and accounts that was 2.8 of a 10,000-user reconciliation's 17 CPU seconds, and
        # none of them holds a future.
        future = apply_chunk.submit(cfg.name, quote(chunk), quote(accounts), quote(cfg), run_id, config.retry,
                                    dry_run, start + 1, start + len(chunk), quote(leave))
        # The place is given back when the chunk's rows are answered, or when its task ends however it
        # ends (a task that never ran never calls `leave`).
        future.add_done_callback(lambda f, leave=leave: (finished.add(f), leave()))
        in_flight.append((future, len(chunk)))
    while in_flight:
        settle(*in_flight.popleft())
    if not total:
        progress(100.0)
    if len(plan.group_rows):  # after every user row: the accounts the groups add must exist
        outcome.add(apply_groups(cfg.name, plan.group_rows.to_dict(orient="records"), cfg, run_id, dry_run,
                                 policy=config.retry))
    log_outcomes(outcome.lines, outcome.line_count, logging.getLogger("outbound.reconcile"),
                 f"in the artifact {artifact_key(cfg.name, 'drift', dry_run)} and `outbound runs`")
    return outcome


async def run_connector(config: Config, connector: str, dry_run: bool = False, yes: bool = False,
                        report: Optional[str] = None, chunk_size: int = DEFAULT_CHUNK, lock_wait: float = 0) -> dict:
    """Reconcile one connector inside the current flow, under its lease; return the run's summary."""
    logger = get_run_logger()
    cfg = config.connector(connector)
    try:
        with reconcile_lock(cfg.name, lock_wait):
            # We hold the connector's lease, so the process of any run still `running` is gone.
            interrupted = running_reconciliation_flow_runs(cfg.name)
            abandoned = abandon_stale_runs(cfg.name)
            if abandoned:
                logger.warning("connector=%s marked %d interrupted run(s) abandoned", cfg.name, abandoned)
            if interrupted:  # their processes died, so Prefect still reads them Running: close them
                mark_crashed(interrupted, str(flow_run.id) if flow_run.id else None,
                             f"its reconciliation of {cfg.name} was interrupted (marked abandoned); its lease "
                             f"was taken over")
            return await _run_locked(config, cfg.name, dry_run, yes, report, chunk_size)
    except Busy as exc:
        message = f"another reconciliation of {cfg.name} is running: {exc}"
        logger.warning("connector=%s status=busy %s", cfg.name, message)
        return {"connector": cfg.name, "run_id": None, "dry_run": dry_run, "status": RunStatus.BUSY, "message": message,
                "summary": f"{cfg.name}: not reconciled", "counts": {}, "deletions": 0, "threshold": None,
                "outcomes": Counts().as_dict(), "failures": []}


async def _run_locked(config: Config, connector: str, dry_run: bool, yes: bool, report: Optional[str],
                      chunk_size: int) -> dict:
    logger = get_run_logger()
    cfg = config.connector(connector)
    run_id = start_run(cfg.name, dry_run, str(flow_run.id) if flow_run.id else None)
    try:
        admit(cfg)  # a quarantined target: this connector's run ends now, naming it; the others go on
        # Listing is a read: retried by the one retry policy when the target fails transiently.
        plan = plan_task.with_options(**task_options(config.retry))(cfg.name, config, dry_run)
    except Exception as exc:
        finish_run(run_id, RunStatus.FAILED, {}, {}, f"{type(exc).__name__}: {exc}")
        raise
    counts = plan.counts()
    logger.info("connector=%s %s", cfg.name, plan.summary())
    reports = []
    if report:
        frame = plan.rows.copy()
        frame["changes"] = [json.dumps(c, default=str) if c else "" for c in frame["changes"]]
        frame.to_csv(report, index=False)
        reports.append(report)
    drift_link = _plan_artifacts(plan, dry_run)
    digest = plan_hash(plan)
    result = {"connector": cfg.name, "run_id": run_id, "flow_run_id": str(flow_run.id) if flow_run.id else None,
              "target_url": cfg.target_url,
              "dry_run": dry_run, "summary": plan.summary(),
              "counts": counts, "deletions": plan.deletions, "threshold": plan.threshold,
              "desired_count": plan.desired_count, "target_count": plan.target_count, "unmanaged": plan.unmanaged,
              "guard_tripped": plan.guard_tripped, "plan_hash": digest, "reports": reports, "decision": None,
              "problems": list(plan.problems)}
    if dry_run:
        logger.info("connector=%s dry run: nothing will be written. %s", cfg.name, _guard_line(plan))

    # A deployment run can pause for an operator in the Prefect UI; a CLI run cannot.
    settled = None if dry_run else await settle(plan, run_id, digest, forced=yes, can_pause=bool(deployment.id),
                                                drift_link=drift_link)
    decision = settled.decision if settled else None
    if settled:
        result["decision"] = decision
        if settled.stops:
            finish_run(run_id, settled.status, counts, {}, settled.message)
            _summary_artifact(plan, settled.status, Counts(skipped=len(plan.rows) + len(plan.group_rows)), dry_run,
                              decision)
            await _label_run(settled.label)
            return {**result, "status": settled.status, "outcomes": Counts().as_dict(),
                    "message": settled.message, "failures": []}
        await _label_run(settled.label)

    refused = None if dry_run else _refused(plan, cfg, config)
    if refused is not None:  # the target cannot take the plan's creates: nothing is sent
        refused, message = refused
        logger.warning("connector=%s %s", cfg.name, message)
        _record_refused(plan, cfg.name, run_id, message)
        finish_run(run_id, RunStatus.FAILED, counts, refused.as_dict(), message)
        _summary_artifact(plan, RunStatus.FAILED, refused, dry_run, decision)
        return {**result, "status": RunStatus.FAILED, "outcomes": refused.as_dict(), "message": message,
                "failures": refused.failures[:50]}
    outcome = _apply(plan, config, run_id, dry_run, chunk_size)
    if plan.followups and not dry_run:  # reports created with their managers: the managers' ids exist now
        logger.info("connector=%s second pass: the manager of %d users created in this run", cfg.name,
                    len(plan.followups))
        second = plan_task.with_options(**task_options(config.retry))(cfg.name, config, dry_run, plan.followups)
        outcome.add(_apply(second, config, run_id, dry_run, chunk_size))
    status = (RunStatus.FAILED if outcome.not_done and not outcome.succeeded else RunStatus.PARTIAL
              if outcome.not_done else RunStatus.SUCCEEDED)
    finish_run(run_id, status, counts, outcome.as_dict())
    _summary_artifact(plan, status, outcome, dry_run, decision)
    if dry_run:
        logger.info("connector=%s dry run finished, nothing written: would apply %d, would fail %d, skipped %d",
                    cfg.name, outcome.succeeded, outcome.failed, outcome.skipped)
        if plan.guard_tripped:  # said where the run ends too: its name and its state's message
            logger.warning("connector=%s %s", cfg.name, dry_run_verdict(True, plan.deletions, plan.threshold))
            await _label_run("dry run: would stop at the guard")
    else:
        logger.info("connector=%s status=%s %s", cfg.name, status, outcome.as_dict())
    return {**result, "status": status, "outcomes": outcome.as_dict(), "failures": outcome.failures[:50]}


def next_step(result: dict, first: Optional[dict]) -> str:
    """The target and the command to run next: `outbound check` for a refused credential, else the run again."""
    name, target = result["connector"], result.get("target_url")
    where = f"{name} at {target}; " if target else ""
    if first and first.get("code") in CREDENTIAL_CODES:
        return (f"{where}fix {name}'s credential or configuration, check it with `outbound check --connector "
                f"{name}`, then `outbound reconcile --connector {name}`")
    return f"{where}the failed rows are in `outbound runs --status failed --connector {name}`; to run again: " \
           f"`outbound reconcile --connector {name}`"


def final_state(result: dict) -> "dict | State":
    """The flow run's final state for a reconciliation's result: only a full success is Completed."""
    status, name = result["status"], result["connector"]
    if status in FAILED_STATUSES:
        o = result["outcomes"]
        first = result["failures"][0] if result.get("failures") else None
        detail = f"; first: {first['action']} {first['user']}: {first['error']}" if first else ""
        unknown = o.get("outcome_unknown", 0)
        failed = o["failed"] + unknown
        what = (f"not done ({o['failed']} failed, {unknown} outcome_unknown: sent, the answer lost, and {name} could "
                f"not be read to tell; the next run reads it again)" if unknown else "failed")
        return Failed(message=f"{name}: {failed} of {failed + o['succeeded']} operations {what}{detail}"
                              f" ({next_step(result, first)})", data=result)
    if status == RunStatus.REJECTED:
        d = result["decision"] or {}
        return Cancelled(message=f"rejected by {d.get('by') or '?'}: {d.get('comment') or 'no comment'}", data=result)
    if status == STOPPED_BY_GUARD:
        return Cancelled(message=stopped_words(name, result["message"]), data=result)
    if status == RunStatus.BUSY:
        return Cancelled(message=result["message"], data=result)
    if result.get("dry_run") and "guard_tripped" in result:  # green, but saying what the real run would do
        o = result["outcomes"]
        return Completed(message=f"dry run, nothing written: would apply {o['succeeded']}, would fail {o['failed']}; "
                                 + dry_run_verdict(result["guard_tripped"], result["deletions"], result["threshold"]),
                         data=result)
    return result


async def result_of(state: State) -> dict:
    """The result dict of a reconcile-connector run's final state; its exception raised if it raised one."""
    value = await state.aresult(raise_on_failure=False)
    if isinstance(value, BaseException):
        raise value
    return value


async def reconcile(connector: str, trigger: str = "on-demand", **params) -> dict:
    """Run reconcile-connector for `connector`, tagged `trigger:<trigger>` and `connector:<name>`; return its result.

    Whatever its final state (Cancelled for a rejection, Failed for failed rows), the result dict is returned;
    an exception the run raised (the target could not be listed) is raised.
    """
    with tags(f"trigger:{trigger}", f"connector:{connector}"):
        state = await reconcile_connector(connector=connector, return_state=True, **params)
    return await result_of(state)


@flow(name="reconcile-connector", flow_run_name=_run_name, retries=0, validate_parameters=True)
async def reconcile_connector(connector: str, dry_run: bool = False, config_path: Optional[str] = None,
                              yes: bool = False, report: Optional[str] = None, lock_wait: float = 0,
                              chunk_size: int = DEFAULT_CHUNK) -> dict:
    """Bring one connector's target to the desired state: plan, guard, apply in chunks, report."""
    have = set(flow_run.tags or ())
    await _label_run(add_tags=(f"connector:{connector}",) + (() if any(t.startswith("trigger:") for t in have)
                                                              else ("trigger:on-demand",)))
    try:
        with untagged_tasks():
            result = await run_connector(load_config(config_path), connector, dry_run, yes, report, chunk_size,
                                         lock_wait)
    except Exception:  # the target could not be read: as failed as failed rows
        await _label_run(add_tags=(f"failed:{connector}",))
        raise
    if result["status"] in FAILED_STATUSES:  # so Failed + `failed:<name>` finds this connector's failures
        await _label_run(add_tags=(f"failed:{connector}",))
    return final_state(result)


def refresh_profiles(connectors) -> None:
    """The nightly refresh of each target's capability profile (what `outbound check` stores); never fails the run."""
    from tasks.capabilities import refresh

    logger = get_run_logger()
    try:
        for profile in refresh(connectors):
            problems = profile.get("problems") or []
            logger.info("connector=%s capability profile refreshed: %s", profile.get("connector"),
                        "; ".join(f"{p['severity']}: {p['what']}" for p in problems) or "no problem")
    except Exception as exc:
        logger.warning("capability profiles not refreshed: %s: %s", type(exc).__name__, exc)


@flow(name="reconcile-all", flow_run_name="reconcile all connectors", retries=0)
async def reconcile_all(dry_run: bool = False, config_path: Optional[str] = None, yes: bool = False,
                        lock_wait: float = 0) -> list[dict]:
    """Reconcile every enabled connector, one after the other (each a subflow named after it).

    Ends Failed if a connector's run failed, else Cancelled if one was not applied (guard, busy), else Completed.
    """
    config = load_config(config_path)
    trigger = [t for t in (flow_run.tags or ()) if t.startswith("trigger:")] or ["trigger:on-demand"]
    await asyncio.to_thread(refresh_profiles, [c for c in config.connectors if c.enabled])
    results, states = [], []
    for cfg in config.connectors:
        if cfg.enabled:
            with tags(*trigger, f"connector:{cfg.name}"):
                state = await reconcile_connector(cfg.name, dry_run, config_path, yes, lock_wait=lock_wait,
                                                  return_state=True)
            states.append(state)
            try:
                results.append(await result_of(state))
            except Exception as exc:  # this connector could not be reconciled; the others still are
                results.append({"connector": cfg.name, "status": RunStatus.FAILED,
                                "error": f"{type(exc).__name__}: {exc}"})
    failed = [s for s in states if s.is_failed() or s.is_crashed()]
    cancelled = [s for s in states if s.is_cancelled()]
    if failed or cancelled:
        detail = "; ".join(s.message or s.type.value for s in failed + cancelled)
        make = Failed if failed else Cancelled
        return make(message=f"{len(failed + cancelled)} of {len(states)} connectors not reconciled in full: {detail}",
                    data=results)
    return results

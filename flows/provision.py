"""The event flow: resolve-policy → generate-username → provision → reconcile, per connector, concurrently."""

import asyncio
from typing import Optional

from prefect import flow, get_run_logger
from prefect.artifacts import create_table_artifact
from prefect.runtime import flow_run

from models.config import Config, load_config
from models.db import session_scope
from models.identity import load_view
from models.runstate import connectors_of, get_event, record, set_event_status
from tasks import groups as group_sync  # issue #3: groups
from tasks.explain import attach_explanation  # issue #3: the explanation artifact
from tasks.policy import resolve_policy
from tasks.provision import Outcome, failed_outcome, provision
from tasks.reconcile import reconcile
from tasks.retry import task_options
from tasks.username import generate_username


def _run_name() -> str:
    event_id = flow_run.parameters.get("event_id", "?")
    with session_scope() as session:
        event = get_event(session, event_id)
        user = event.payload.get("user", {}) if event else {}
    return f"provision {user.get('username', '?')}@{user.get('user_store', 'PRIMARY')} ({event_id})"


def _skip(decision, user, event_id) -> Outcome:
    with session_scope() as session:
        record(session, event_id=event_id, connector=decision.connector, entity_id=user.id,
               entity_name=user.qualified_name, action="skip", operation="none", status="skipped",
               reason=decision.reason, attempts=0)
    return Outcome(decision.connector, "skip", "none", "skipped", decision.reason)


def _record_failure(decision, user, event_id, exc) -> Outcome:
    """A failure before the provision task ran (e.g. the username could not be generated)."""
    outcome = failed_outcome(decision, exc)
    with session_scope() as session:
        record(session, event_id=event_id, connector=decision.connector, entity_id=user.id,
               entity_name=user.qualified_name, action=decision.action, operation="none", status="failed",
               reason=decision.reason, attempts=1, error_code=getattr(exc, "code", type(exc).__name__),
               error_message=str(exc), flow_run_id=str(flow_run.id) if flow_run.id else None)
    return outcome


def run_event(event_id: str, config: Config) -> list[Outcome]:
    """The flow's body, usable from any flow (event, sweeper): returns one outcome per connector."""
    logger = get_run_logger()
    with session_scope() as session:
        event = get_event(session, event_id)
        if event is None:
            raise ValueError(f"no event {event_id!r} in the outbox")
        set_event_status(session, event_id, "running")
        user = load_view(session, event.user_id)
        provisioned_on = connectors_of(session, user.id)

    decisions = resolve_policy(user, config, provisioned_on)
    options = task_options(config.retry)
    provision_task, reconcile_task = provision.with_options(**options), reconcile.with_options(**options)
    username_task = generate_username.with_options(**options)

    outcomes: list[Outcome] = []
    pending = []
    for decision in decisions:
        logger.info("user=%s connector=%s decision=%s reason=%s", user.qualified_name, decision.connector,
                    decision.action, decision.reason)
        if decision.action == "skip":
            outcomes.append(_skip(decision, user, event_id))
            continue
        name = username_task.submit(user, decision.connector, config) if decision.action == "provision" else None
        done = provision_task.submit(decision, user, config, event_id, name)
        pending.append((decision, name, done, reconcile_task.submit(decision.connector, done, user, config, event_id)))

    for decision, name, done, verified in pending:
        try:
            outcome = done.result()
        except Exception as exc:  # provision recorded its own failure; name failures are recorded here
            if name is not None:
                name.wait()
            if name is not None and name.state.is_failed():
                # _sync: inside this async flow, State.result would otherwise hand back a coroutine.
                cause = name.state.result(raise_on_failure=False, _sync=True)
                outcome = _record_failure(decision, user, event_id, cause)
            else:
                outcome = failed_outcome(decision, exc)
            if getattr(exc, "code", None) == "quarantined":  # issue 8: show the quarantine in the run
                logger.warning("user=%s connector=%s not provisioned: the connector is quarantined (%s)",
                               user.qualified_name, decision.connector, exc)
        else:
            try:
                verified.result()
            except Exception as exc:
                logger.warning("user=%s connector=%s read-back failed: %s", user.qualified_name, decision.connector, exc)
        outcomes.append(outcome)

    # Issue #3: keep each group-managing connector's configured groups in step with this user.
    group_sync.wait_all([group_sync.submit_for(o, user, config, event_id) for o in outcomes], logger)

    failed = [o for o in outcomes if o.status == "failed"]
    with session_scope() as session:
        set_event_status(session, event_id, "failed" if failed else "succeeded",
                         "; ".join(f"{o.connector}: {o.error}" for o in failed) or None)
    _artifacts(user.qualified_name, event_id, outcomes)
    attach_explanation(user.id, config, event_id)  # issue #3: `outbound explain`, attached to the run
    return outcomes


def _artifacts(who: str, event_id: str, outcomes: list[Outcome]) -> None:
    rows = [{"connector": o.connector, "action": o.action, "operation": o.operation, "status": o.status,
             "remote_id": o.remote_id or "", "remote_username": o.remote_name or "", "reason": o.reason,
             "error": o.error or ""} for o in outcomes]
    create_table_artifact(table=rows, description=f"Operations for {who} (event {event_id})", _sync=True)


@flow(name="provision-user", flow_run_name=_run_name, retries=0, log_prints=False, validate_parameters=True)
async def provision_user(event_id: str, config_path: Optional[str] = None) -> list[dict]:
    """Provision one user after an identity event, to every connector the policy selects."""
    # The body blocks (store I/O, waiting on task futures): run it in a thread, with this run's
    # context, so the event loop stays free and several events progress at once in one process.
    outcomes = await asyncio.to_thread(run_event, event_id, load_config(config_path))
    return [o.__dict__ for o in outcomes]

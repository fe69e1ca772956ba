"""The event flow: drain the outbox in batches through resolve-policy → generate-username → provision → reconcile.

One event is a batch of one; a burst is a batch of many (up to `limit` events, coalesced per user:
the user's state in the store is what gets provisioned, so several events of one user cost one
plan). Every step is one task per connector over the whole batch, never one per user, and the
decision and the executor are the reconciliation's own (`tasks.plan`, `tasks.apply`), so an event
and a nightly run can never disagree about a user. A run drains until nothing it can claim is left.
"""

import asyncio
import time
from contextlib import ExitStack
from typing import Optional

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from prefect.states import Failed
from prefect.utilities.annotations import quote

from connectors.errors import CREDENTIAL_CODES, Rejected, is_permanent
from flows.crashed import ended_runs, expired, mark_crashed
from models.availability import STORE_UNAVAILABLE, UNREACHABLE, unreachable_message
from models.config import Config, load_config
from models.db import session_scope
from models.kinds import NOT_DONE, Action, EventStatus, Intent, OperationStatus
from models.outbox import UNFINISHED, Batch, claim, finish, leases_kept, release_or_defer, retry_now, run_held
from models.runstate import get_event
from tasks.desired import generate_username, resolve_policy
from tasks.explain import attach_explanation
from tasks.provision import Outcome, provision, record_failures
from tasks.readback import reconcile
from tasks.limits import untagged_tasks
from tasks.retry import task_options

WAIT_FOR_USER = 300.0  # seconds an `outbound event` waits while another drain works on its user


def _run_name() -> str:
    event_id = flow_run.parameters.get("event_id")
    if not event_id:
        return "provision pending events"
    try:
        with session_scope() as session:
            event = get_event(session, event_id)
            user = event.payload.get("user", {}) if event else {}
    except STORE_UNAVAILABLE:  # the run starts anyway, and fails saying why
        return f"provision {event_id}"
    return f"provision {user.get('username', '?')}@{user.get('user_store', 'PRIMARY')} ({event_id})"


def batch_name(batch: Batch) -> str:
    """`provision alice@PRIMARY (evt-1)` for one event, `provision 340 users (evt-a … evt-z)` for more."""
    ids = batch.event_ids
    if len(batch) == 1 and len(ids) == 1:
        return f"provision {next(iter(batch.names.values()))} ({ids[0]})"
    span = "" if not ids else f" ({ids[0]})" if len(ids) == 1 else f" ({ids[0]} … {ids[-1]})"
    return f"provision {len(batch)} user{'s' if len(batch) != 1 else ''}{span}"


def _label(batch: Batch, config: Config) -> None:
    """Name the run after what it holds and tag it `trigger:<how>`, so the UI filters work (the
    connectors' tags are added when the run knows what they did: see outcome_tags)."""
    from prefect.client.orchestration import get_client

    if not flow_run.id:
        return
    name = batch_name(batch) if len(batch) else "provision: nothing left (another drain took it)"
    tags = sorted({*flow_run.tags, *(f"trigger:{t}" for t in batch.triggers)})
    try:
        with get_client(sync_client=True) as client:
            client.update_flow_run(flow_run.id, name=name, tags=tags)
    except Exception as exc:  # a name is worth a log line, never a failed batch
        get_run_logger().warning("could not name the run %r: %s", name, exc)


# Outcomes that sent nothing to the target: they do not tag the run with their connector.
QUIET = (Action.NONE, Action.NOOP, Action.GONE)


def outcome_tags(outcomes) -> set[str]:
    """`connector:<name>` for each connector that acted in the run (an operation sent, or a failure),
    `failed:<name>` for each that failed for a user: so Failed + `failed:<name>` finds its failures."""
    tags = set()
    for o in outcomes:
        if o.status == OperationStatus.FAILED:
            tags |= {f"connector:{o.connector}", f"failed:{o.connector}"}
        elif o.operation not in QUIET:
            tags.add(f"connector:{o.connector}")
    return tags


def _add_tags(tags: set[str]) -> None:
    """Add tags to this run (best effort: a tag is worth a log line, never a failed batch)."""
    from prefect.client.orchestration import get_client

    if not flow_run.id or not tags:
        return
    try:
        with get_client(sync_client=True) as client:
            have = set(client.read_flow_run(flow_run.id).tags or ())
            if not tags <= have:
                client.update_flow_run(flow_run.id, tags=sorted(have | tags))
    except Exception as exc:
        get_run_logger().warning("could not tag the run %s: %s", sorted(tags), exc)


def claim_event(event_id: str, limit: int) -> Batch:
    """Claim the event's user (waiting while another drain holds it) with whatever else is pending."""
    deadline = time.monotonic() + WAIT_FOR_USER
    while True:
        batch = claim(1, event_ids=[event_id], run=_this_run(), ended=ended_runs)
        if len(batch) or time.monotonic() > deadline:
            break
        with session_scope() as session:
            event = get_event(session, event_id)
            if event is None or event.status not in (*UNFINISHED, EventStatus.RETRYING):
                return batch  # another drain finished it
        time.sleep(0.2)
    if len(batch) and limit > 1:
        more = claim(limit - 1, owner=batch.owner, ended=ended_runs)
        # A user both claims hold was counted against part of its events by each: not a first run here.
        batch.first_run = (batch.first_run | more.first_run) - (set(batch.events) & set(more.events))
        for user, ids in more.events.items():
            batch.events.setdefault(user, []).extend(e for e in ids if e not in batch.events.get(user, []))
        batch.names.update(more.names)
        batch.triggers |= more.triggers
        batch.crashed_runs |= more.crashed_runs
        batch.expired_runs.update(more.expired_runs)
    return batch


def _this_run() -> Optional[str]:
    return str(flow_run.id) if flow_run.id else None


def run_batch(batch: Batch, config: Config) -> dict[str, list[Outcome]]:
    """The DAG over one batch: per connector, concurrently. Returns each user's outcomes."""
    with untagged_tasks():
        return _run_batch(batch, config)


def _run_batch(batch: Batch, config: Config) -> dict[str, list[Outcome]]:
    logger = get_run_logger()
    options = task_options(config.retry)
    run_id = f"events:{flow_run.id or 'local'}"
    label = batch_name(batch).removeprefix("provision ")
    # quote(): Prefect walks every task argument twice (to resolve futures and record inputs); over a
    # batch's users, events, desired state and outcomes that walk cost seconds per batch, and none of
    # them holds a future.
    users, events, config_ = quote(batch.user_ids), quote(batch.events), quote(config)
    first_run = frozenset(batch.first_run)
    resolved = resolve_policy(events, config_, label)  # the batch's events ride on from here
    for who, ds in list(resolved.by_name().items())[:50]:
        logger.info("user=%s %s", who, "; ".join(f"{d.connector}: {d.action} ({d.reason})" for d in ds))
    resolved = quote(resolved)  # the users, decisions and events ride on to each connector's generate-username
    # Each step is submitted only once the one before it has succeeded, so a connector that fails
    # shows its failed step and nothing after it (no task left NotReady behind it).
    named = {cfg.name: generate_username.with_options(**options).submit(cfg.name, users, config_, resolved)
             for cfg in config.connectors}
    provisioning, per_user = {}, {u: [] for u in batch.user_ids}
    for name, future in named.items():
        try:
            provisioning[name] = provision.with_options(**options).submit(name, quote(future.result()), config_,
                                                                        run_id, quote(first_run))
        except Exception as exc:  # no desired state: provision never ran, so record the failure here
            _raise_if_store_down(exc)
            failed = _failed(name, exc, batch, logger)
            record_failures(failed, run_id, str(flow_run.id) if flow_run.id else None)
            _add(per_user, failed)
    checking = {}
    for name, future in provisioning.items():
        try:
            outcomes = future.result()
        except Exception as exc:  # the whole connector failed for this batch (it recorded each user)
            _raise_if_store_down(exc)
            outcomes = _failed(name, exc, batch, logger)
        else:
            checking[name] = reconcile.with_options(**options).submit(name, quote(outcomes), config_, run_id)
        _add(per_user, outcomes)
    for name, future in checking.items():
        try:
            future.result()
        except Exception as exc:
            logger.warning("connector=%s read-back failed: %s", name, exc)
    return per_user


def _raise_if_store_down(exc: Exception) -> None:
    """A store that went away is no connector's failure: the batch stops, its events stay to run again."""
    if isinstance(exc, STORE_UNAVAILABLE):
        raise exc


def _add(per_user: dict[str, list[Outcome]], outcomes: list[Outcome]) -> None:
    for o in outcomes:
        per_user.setdefault(o.user_id, []).append(o)


def _failed(name: str, exc: BaseException, batch: Batch, logger) -> list[Outcome]:
    """Every user of the batch failed on connector `name` with `exc` (logged once when `logger`)."""
    code = getattr(exc, "code", type(exc).__name__)
    if logger is not None and code == "quarantined":
        logger.warning("connector=%s not provisioned: the connector is quarantined (%s)", name, exc)
    elif logger is not None:
        logger.warning("connector=%s failed for the batch: %s: %s", name, code, exc)
    return [Outcome(name, Intent.PROVISION, Action.NONE, OperationStatus.FAILED, "the connector failed for the batch",
                    error=f"{code}: {exc}", user_id=u, entity_name=batch.names.get(u), code=code,
                    events=tuple(ids)) for u, ids in batch.events.items()]


def event_status(outcomes: list[Outcome]) -> tuple[EventStatus, Optional[str]]:
    """A user's events' status from its outcomes: succeeded; failed (a target refused it); or retrying (also
    when a write's outcome is unknown: the retry's plan reads the target and links what the write made)."""
    failed = [o for o in outcomes if o.status in NOT_DONE]
    if not failed:
        return EventStatus.SUCCEEDED, None
    error = "; ".join(f"{o.connector}: {o.error}" for o in failed)
    return (EventStatus.FAILED if all(is_permanent(o.code) for o in failed) else EventStatus.RETRYING), error


def drain(config: Config, event_id: Optional[str] = None, limit: int = 1000,
          failures: Optional[dict[str, str]] = None, tags: Optional[set[str]] = None) -> int:
    """Claim and provision batches until nothing claimable is left; return how many events were run.

    `failures` collects user@STORE -> what failed, for the run's final state; `tags` the run's
    connector tags (outcome_tags).
    """
    failures = failures if failures is not None else {}
    tags = tags if tags is not None else set()
    if event_id and (flow_run.run_count or 1) > 1:  # the UI's Retry of this run: the event runs again
        retry_now(event_id)
    with run_held(_this_run()):  # a process killed before the run's end leaves it, for the sweeper
        return _drain(config, event_id, limit, failures, tags)


def _drain(config: Config, event_id: Optional[str], limit: int, failures: dict[str, str], tags: set[str]) -> int:
    logger = get_run_logger()
    total, first = 0, True
    while True:
        batch = (claim_event(event_id, limit) if (first and event_id)
                 else claim(limit, run=_this_run(), ended=ended_runs))
        if batch.crashed_runs:  # runs whose process died holding these users: close them in Prefect
            mark_crashed(batch.crashed_runs, _this_run())
        for host in set(batch.expired_runs.values()):  # runs elsewhere whose leases expired: likewise
            mark_crashed([r for r, h in batch.expired_runs.items() if h == host], _this_run(), expired(host))
        if first:  # named after what it holds, even when another drain was quicker and it holds nothing
            _label(batch, config)
        if not len(batch):
            return total
        first = False
        try:
            with leases_kept(batch):
                per_user = run_batch(batch, config)
        except BaseException as exc:  # an orchestrator or store error is not a target's verdict: retry later
            if isinstance(exc, STORE_UNAVAILABLE):  # nothing to record: the events stay running, claimable
                release_or_defer(batch)
                raise
            try:
                finish(batch, {u: (EventStatus.RETRYING, f"internal: {type(exc).__name__}: {exc}")
                                for u in batch.user_ids})
            except Exception:
                release_or_defer(batch)  # the store itself is down: the events stay running, the sweeper takes them
            raise
        outcome = {user: event_status(outs) for user, outs in per_user.items()}
        tags |= outcome_tags(o for outs in per_user.values() for o in outs)
        try:
            finish(batch, outcome)
        except STORE_UNAVAILABLE:  # run again when the store returns: what was applied is found in place
            release_or_defer(batch)
            raise
        if len(batch) == 1:
            attach_explanation(batch.user_ids[0], config, batch.event_ids[-1])
        total += len(batch.event_ids)
        failed = {batch.names.get(u, u): error for u, (status, error) in outcome.items()
                  if status != EventStatus.SUCCEEDED}
        for u, (status, error) in outcome.items():  # those the run's message shows say what to do next
            who = batch.names.get(u, u)
            if status != EventStatus.SUCCEEDED and len(failures) < SHOWN and who not in failures:
                failed[who] = f"{error} ({next_step(per_user[u], batch.events[u][-1], config)})"
        failures.update(failed)
        logger.info("batch of %d events (%d users) done: %d failed", len(batch.event_ids), len(batch), len(failed))


@flow(name="provision-user", flow_run_name=_run_name, retries=0, log_prints=False, validate_parameters=True)
async def provision_user(event_id: Optional[str] = None, config_path: Optional[str] = None,
                         limit: int = 1000) -> int:
    """Provision the users of pending events (this one first), in batches, to every connector the policy selects.

    Ends Failed, naming who failed where, when any user's provisioning failed; the events say
    whether they will be retried (status retrying) or need someone to act (failed). Ends Failed
    naming the store when the state store is unreachable: its events are run again when it returns.
    """
    failures: dict[str, str] = {}
    tags: set[str] = set()
    # The body blocks (store I/O, waiting on task futures): run it in a thread, with this run's
    # context, so the event loop stays free and several runs progress at once in one process.
    try:
        done = await asyncio.to_thread(drain, load_config(config_path), event_id, limit, failures, tags)
    except STORE_UNAVAILABLE as exc:
        message = unreachable_message()
        get_run_logger().error("%s (%s)", message, type(exc).__name__)  # the driver's text may be long; not needed
        return Failed(message=message)
    await asyncio.to_thread(_add_tags, tags)
    if failures:
        return Failed(message=failure_message(failures, done))
    return done


SHOWN = 5  # users named in a run's failure message


def next_step(outcomes: list[Outcome], event_id: str, config: Config) -> str:
    """Where it failed, whether it is tried again and when, and the command to run next:
    `scim-app at https://…/scim/v2; attempt 1 of 8, next at 14:05:00 UTC; to retry now: outbound retry evt-1`."""
    from models.outbox import MAX_ATTEMPTS

    failed = [o for o in outcomes if o.status == OperationStatus.FAILED]
    names = {c.name: c for c in config.connectors}
    where = ", ".join(f"{o.connector} at {names[o.connector].target_url}" for o in failed
                      if o.connector in names and names[o.connector].target_url)
    with session_scope() as session:
        event = get_event(session, event_id)
        status, attempts, at = (event.status, event.attempts, event.retry_at) if event else (None, 0, None)
    when = (f"attempt {attempts} of {MAX_ATTEMPTS}, next at {at:%H:%M:%S} UTC" if status == EventStatus.RETRYING and at
            else "not tried again automatically")
    refused = [o.connector for o in failed if o.code in CREDENTIAL_CODES]
    bad_value = [o.connector for o in failed if o.code == Rejected.code]
    if refused:
        step = (f"fix {refused[0]}'s credential or configuration, check it with `outbound check --connector "
                f"{refused[0]}`, then `outbound retry {event_id}`")
    elif bad_value:  # the target refused a value: retrying as is cannot help
        index = next((i for i, c in enumerate(config.connectors) if c.name == bad_value[0]), None)
        mapping = f"connectors[{index}].attributes" if index is not None else "the connector's attributes"
        step = (f"{bad_value[0]} refused a value (named above): correct it at the source or in {mapping} of "
                f"the configuration, then `outbound retry {event_id}`")
    else:
        step = f"to retry now: `outbound retry {event_id}`"
    return "; ".join(p for p in (where, when, step) if p)


def failure_message(failures: dict[str, str], events: int) -> str:
    """`2 users failed (40 events run): alice@PRIMARY: scim-app: transient: … (scim-app at …; attempt 1 of 8,
    next at …; to retry now: `outbound retry evt-1`); …` (the first five)."""
    shown = "; ".join(f"{who}: {what}" for who, what in list(failures.items())[:SHOWN])
    more = f"; and {len(failures) - SHOWN} more" if len(failures) > SHOWN else ""
    return f"{len(failures)} user{'s' if len(failures) != 1 else ''} failed ({events} events run): {shown}{more}"


def _drainer_name() -> str:
    return f"drain events for {flow_run.parameters.get('run_for_seconds', 75):g} s"


@flow(name="drain-events", flow_run_name=_drainer_name, retries=0, validate_parameters=True)
async def drain_events(config_path: Optional[str] = None, run_for_seconds: float = 75, poll_seconds: float = 0.25,
                       limit: int = 1000) -> int:
    """Watch the outbox for `run_for_seconds`; whenever events wait, provision them in a `provision-user` subflow.

    The scale-out path: on a work pool a scheduled deployment starts one every minute, each lasting a
    little longer than the minute, so two overlap at every hand-over and the outbox is never unwatched;
    under `outbound serve` one is started only when events are due (deployments/serve.py). Latency is
    the poll interval; a burst becomes batches of up to `limit` events, not a run per event.
    Ends Failed when a run it started failed, so the dashboard's count does not depend on "Hide subflows".
    """
    held = ExitStack()
    try:  # a worker killed mid-watch leaves it, for the sweeper to close this run too
        held.enter_context(run_held(_this_run()))
    except STORE_UNAVAILABLE:
        pass  # the store is down: watched all the same, without it
    with held:
        return await _watch(config_path, run_for_seconds, poll_seconds, limit)


async def _watch(config_path: Optional[str], run_for_seconds: float, poll_seconds: float, limit: int):
    from models.outbox import waiting_count

    deadline, done, down, failed = time.monotonic() + run_for_seconds, 0, False, []
    while time.monotonic() < deadline:
        try:
            waiting = await asyncio.to_thread(waiting_count)
        except STORE_UNAVAILABLE as exc:  # keep watching: the store may return before the run ends
            if not down:
                get_run_logger().warning("%s (%s)", unreachable_message(), type(exc).__name__)
            down = True
            await asyncio.sleep(1.0)
            continue
        if waiting:
            state = await provision_user(config_path=config_path, limit=limit, return_state=True)
            # _sync: inside this async flow, State.result would otherwise hand back a coroutine.
            done += state.result(_sync=True) if state.is_completed() else 0
            if state.is_failed() and (state.message or "").startswith(UNREACHABLE):
                down = True
            elif state.is_failed() or state.is_crashed():
                failed.append(state.message or state.type.value)
        else:
            await asyncio.sleep(poll_seconds)
    if down:
        return Failed(message=f"{unreachable_message()} (it was down during this run; {done} events run)")
    if failed:
        return Failed(message=f"{len(failed)} provision run{'s' if len(failed) != 1 else ''} it started failed "
                              f"({done} events run); last: {failed[-1]}")
    return done

"""The sweeper: re-dispatch events that were accepted but did not finish in time.

An event is stored before it is acknowledged; if Prefect, a worker or the API process was down
when it should have run, it stays `accepted` (or `running`, when a run died half-way). When any
event is older than the threshold, `sweep-events` starts one drain of the outbox, in-process, as a
`provision-user` subflow beginning with the oldest (so it is named and tagged like any other
provisioning run); the drain takes everything pending. Running an event again is safe: planning
is level-triggered, so what was already applied is found in place and not sent again.

It is scheduled every 10 minutes, not every minute: almost every sweep finds nothing, and a run a
minute buried the run list under ~1,440 empty runs a day. The check for overdue events is one
indexed query, done first; the run then renames itself after what it found (`sweep: nothing
overdue`, `sweep: 3 overdue events`), so the empty ones are recognisable at a glance.
"""

from typing import Optional

from prefect import flow, get_run_logger, tags
from prefect.states import Failed

from models.availability import STORE_UNAVAILABLE, unreachable_message
from models.runstate import stuck_events


async def _name_run(name: str) -> None:
    """Rename this run after what it found (best effort: only a label)."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if not flow_run.id:
        return
    try:
        async with get_client() as client:
            await client.update_flow_run(flow_run.id, name=name)
    except Exception as exc:
        get_run_logger().warning("could not rename the sweep run: %s: %s", type(exc).__name__, exc)


@flow(name="sweep-events", flow_run_name="sweep overdue events", retries=0)
async def sweep_events(older_than_seconds: float = 300, config_path: Optional[str] = None,
                       limit: int = 100) -> dict:
    """Run again every event accepted or running for longer than `older_than_seconds`.

    Ends Failed naming the store when the state store is unreachable: the next sweep tries again.
    """
    logger = get_run_logger()
    try:
        return await _sweep(older_than_seconds, config_path, limit)
    except STORE_UNAVAILABLE as exc:
        message = unreachable_message("the unfinished events wait for it; the next sweep runs them")
        await _name_run("sweep: state store unreachable")
        logger.error("%s (%s)", message, type(exc).__name__)
        return Failed(message=message)


async def _sweep(older_than_seconds: float, config_path: Optional[str], limit: int) -> dict:
    logger = get_run_logger()
    stuck = stuck_events(older_than_seconds, limit)
    if not stuck:  # the usual case: two queries, no import of the provisioning engine, a plain name
        await _name_run("sweep: nothing overdue")
        logger.info("no event unfinished for more than %ss", older_than_seconds)
        return {"redispatched": [], "failed": [], "closed_runs": await _close_runs_left_behind()}
    await _name_run(f"sweep: {len(stuck)} overdue event{'s' if len(stuck) != 1 else ''}")
    from flows.provision import provision_user

    logger.info("%d events unfinished for more than %ss (oldest %s): draining the outbox", len(stuck),
                older_than_seconds, stuck[0][0])
    try:
        with tags("trigger:sweep"):
            await provision_user(event_id=stuck[0][0], config_path=config_path, return_state=True)
    except Exception as exc:  # the events stay unfinished: the next sweep tries again
        logger.warning("the drain failed: %s: %s", type(exc).__name__, exc)
    left = {event_id for event_id, _ in stuck_events(older_than_seconds, limit)}
    return {"redispatched": [e for e, _ in stuck if e not in left], "failed": [e for e, _ in stuck if e in left],
            "closed_runs": await _close_runs_left_behind()}


async def _close_runs_left_behind() -> list[str]:
    """Set Crashed the drain runs whose process died without ending them (after the drain above took over
    what they held, so those read "taken over"); see flows.crashed."""
    import asyncio

    from prefect.runtime import flow_run

    from flows.crashed import close_runs_left_behind

    closed = await asyncio.to_thread(close_runs_left_behind, str(flow_run.id) if flow_run.id else None)
    if closed:
        get_run_logger().info("closed %d flow runs whose process died before they ended: %s", len(closed),
                              ", ".join(closed))
    return closed

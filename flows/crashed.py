"""Close in Prefect the flow runs whose process died: they never reported an end, so they read Running forever.

A drain learns of one when it takes over a user whose lease a dead process on this machine held,
or whose lease expired because its process (on another machine) stopped (models.outbox.claim);
the lease carries that process's flow run id. A reconciliation learns of one when it marks an
interrupted run `abandoned` (the run's row keeps its flow run id). The sweeper learns of the rest
from the run leases they left (`close_runs_left_behind`): a drain killed after its events were
finished holds no user. The run is set Crashed, as Prefect itself does for a run whose
infrastructure it saw die, so the UI and `outbound` agree that it ended and that another run
finished its work.
"""

import logging
from typing import Iterable, Optional
from uuid import UUID

from models.locks import host_of

log = logging.getLogger("outbound.crashed")

DIED = "its process died while it held events; they were taken over"


def expired(host: str) -> str:
    """The reason for a run whose lease expired: its process on `host` stopped holding it."""
    return f"its lease expired (its process on {host} stopped renewing it); its events were taken over"


def mark_crashed(run_ids: Iterable[str], taken_over_by: Optional[str] = None, reason: str = DIED) -> list[str]:
    """Set each still unfinished flow run of `run_ids` Crashed, saying `reason`; return those marked. Never raises."""
    from prefect.client.orchestration import get_client
    from prefect.states import Crashed

    marked = []
    by = f" by flow run {taken_over_by}" if taken_over_by else ""
    try:
        with get_client(sync_client=True) as client:
            for run_id in sorted(set(run_ids) - {taken_over_by}):
                try:
                    run = client.read_flow_run(UUID(run_id))
                    if run.state is not None and run.state.is_final():
                        continue  # it ended after all (or someone closed it): leave its state alone
                    client.set_flow_run_state(run.id, Crashed(message=f"{reason}{by}"), force=True)
                    marked.append(run_id)
                except Exception as exc:  # a run the API does not know, or a passing API error: not fatal
                    log.warning("could not mark flow run %s crashed: %s", run_id, exc)
    except Exception as exc:
        log.warning("could not reach the Prefect API to mark runs crashed: %s", exc)
    for run_id in marked:
        log.info("flow run %s marked Crashed: %s%s", run_id, reason, by)
    return marked


def _final(run_ids: set[str]) -> Optional[dict[str, bool]]:
    """Run id -> whether Prefect reports that run ended, for the runs it knows; None when it cannot be asked."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    ids = sorted(run_ids)
    found: dict[str, bool] = {}
    try:
        with get_client(sync_client=True) as client:
            for start in range(0, len(ids), 200):
                part = [UUID(r) for r in ids[start:start + 200]]
                for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=part)),
                                                 limit=len(part)):
                    found[str(run.id)] = run.state is not None and run.state.is_final()
    except Exception as exc:  # no answer: nothing is taken over early, the leases run out as before
        log.warning("could not read flow runs' states from the Prefect API: %s: %s", type(exc).__name__, exc)
        return None
    return found


def ended_runs(run_ids: set[str]) -> set[str]:
    """Those of `run_ids` that Prefect reports ended (completed, failed, crashed, cancelled)."""
    return {run for run, final in (_final(run_ids) or {}).items() if final}


def left_behind(host: Optional[str] = None) -> str:
    """The reason for a run that ended without saying so, though it held no event any more."""
    how = f"its lease expired (its process on {host} stopped renewing it)" if host else "its process died"
    return f"{how} before the run ended"


def close_runs_left_behind(by: Optional[str] = None) -> list[str]:
    """Set Crashed the drain runs whose process died or stopped without ending them; drop their run leases.

    A run lease held on another machine within its lifetime is dropped only once Prefect says its
    run ended (a worker that ended while the store was down); otherwise its process may be at work.
    Returns the runs marked Crashed. Never raises for Prefect's sake.
    """
    from models.outbox import drop_run_lease, runs_left_behind

    left = runs_left_behind()
    if not left:
        return []
    final = _final(set(left))
    if final is None:
        return []
    marked = []
    for run, (owner, why) in sorted(left.items()):
        if why == "elsewhere" and not final.get(run, False):
            continue  # alive, or its end not known yet: its lease says when to look again
        if run in final and not final[run]:
            done = mark_crashed([run], None, left_behind(host_of(owner) if why == "expired" else None)
                                + (f"; found by flow run {by}" if by else ""))
            if not done:
                continue  # not closed this time (Prefect did not answer): the next sweep tries again
            marked += done
        drop_run_lease(run, owner)
    return marked

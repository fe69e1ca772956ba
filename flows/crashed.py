"""Close in Prefect the flow runs whose process died: they never reported an end, so they read Running forever.

A drain learns of one when it takes over a user whose lease a dead process on this machine held,
or whose lease expired because its process (on another machine) stopped (models.outbox.claim);
the lease carries that process's flow run id. A reconciliation learns of one when it marks an
interrupted run `abandoned` (the run's row keeps its flow run id). The run is set Crashed, as
Prefect itself does for a run whose infrastructure it saw die, so the UI and `outbound` agree that
it ended and that another run finished its work.
"""

import logging
from typing import Iterable, Optional
from uuid import UUID

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

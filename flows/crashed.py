"""Close in Prefect the flow runs whose process died: they never reported an end, so they read Running forever.

A drain learns of one when it takes over a user whose lease a dead process on this machine held
(models.outbox.claim); the lease carries that process's flow run id. The run is set Crashed, as
Prefect itself does for a run whose infrastructure it saw die, so the UI and `outbound` agree that
it ended and that another run finished its work.
"""

import logging
from typing import Iterable, Optional
from uuid import UUID

log = logging.getLogger("outbound.crashed")


def mark_crashed(run_ids: Iterable[str], taken_over_by: Optional[str] = None) -> list[str]:
    """Set each still unfinished flow run of `run_ids` Crashed; return those marked. Never raises."""
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
                    client.set_flow_run_state(run.id, Crashed(
                        message=f"its process died while it held events; they were taken over{by}"), force=True)
                    marked.append(run_id)
                except Exception as exc:  # a run the API does not know, or a passing API error: not fatal
                    log.warning("could not mark flow run %s crashed: %s", run_id, exc)
    except Exception as exc:
        log.warning("could not reach the Prefect API to mark runs crashed: %s", exc)
    for run_id in marked:
        log.info("flow run %s marked Crashed: its process died; its events were taken over%s", run_id, by)
    return marked

"""An event's outcome per connector, read from the store: what `outbound event` prints and GET /v1/events/{id} returns."""


def stored_outcomes(event_id: str) -> list[dict]:
    from models.db import session_scope
    from models.kinds import Action, Intent
    from models.runstate import operations_of_event

    with session_scope() as session:
        ops = [op for op in operations_of_event(session, event_id)
               if op.action != Intent.VERIFY and op.entity_type == "user"]
        latest = {op.connector: op for op in ops}  # the last operation per connector
        return [{"connector": op.connector, "action": op.action, "operation": op.operation or Action.NONE,
                 "status": op.status, "remote_id": op.remote_id, "remote_name": op.remote_name,
                 "reason": op.reason or "", "error": f"{op.error_code}: {op.error_message}" if op.error_code else None}
                for op in latest.values()]

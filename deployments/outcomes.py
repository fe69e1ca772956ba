"""An event's outcome per connector, read from the store: what `outbound event` prints and GET /v1/events/{id} returns.

Per connector: the user's last operation, then each group operation the same run made for the
event (a group created, the user added to or removed from one), so a failed group_create or
member_add is shown and counted like a failed account.
"""


def stored_outcomes(event_id: str) -> list[dict]:
    from models.db import session_scope
    from models.kinds import Intent
    from models.runstate import operations_of_event

    with session_scope() as session:
        ops = [op for op in operations_of_event(session, event_id) if op.action != Intent.VERIFY]
        latest = {op.connector: op for op in ops if op.entity_type == "user"}  # the last operation per connector
        groups: dict[tuple, object] = {}
        for op in ops:  # an event run again keeps only its last run's group operations
            user_op = latest.get(op.connector)
            if op.entity_type == "group" and (user_op is None or op.flow_run_id == user_op.flow_run_id):
                groups[(op.connector, op.operation, op.remote_name)] = op
        out = []
        for connector in dict.fromkeys(op.connector for op in ops):
            out += [latest[connector]] if connector in latest else []
            out += [op for key, op in groups.items() if key[0] == connector]
        return [_outcome(op) for op in out]


def _outcome(op) -> dict:
    from models.kinds import Action

    return {"connector": op.connector, "action": op.action, "operation": op.operation or Action.NONE,
            "status": op.status, "remote_id": op.remote_id, "remote_name": op.remote_name,
            "reason": op.reason or "", "error": f"{op.error_code}: {op.error_message}" if op.error_code else None}

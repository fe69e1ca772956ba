"""Where a batch's operations come from, and so which events their rows answer.

Every operation row names the event it answers (`event_id`), so each event can be asked what became
of it. A reconciliation's rows answer the run itself (`reconcile:<run id>`); an event batch's rows
answer the outbox events of their user. Which of the two a batch is, is its type, not a missing
value, and the ids are stamped once, where the rows are recorded (`tasks.apply.record_rows`).
"""

from dataclasses import dataclass


@dataclass(frozen=True)
class _Run:
    run_id: str  # the run recording the rows

    @property
    def run_event(self) -> str:
        """The event id of a row no outbox event asked for: the run's own."""
        return f"reconcile:{self.run_id}"


@dataclass(frozen=True)
class Reconciliation(_Run):
    """A reconciliation's chunk: its rows answer the run, and the chunk tells its users' histories itself."""

    def stamp(self, rows: list[dict]) -> tuple[list[dict], list[int]]:
        """The rows as recorded, and the index of the row each came from."""
        return [_recorded(row) for row in rows], list(range(len(rows)))


@dataclass(frozen=True)
class EventBatch(_Run):
    """An event batch: its rows answer their users' outbox events; its report tells the histories."""

    events: dict[str, list[str]]  # local user id -> the batch's event ids of that user, oldest first

    def of(self, user_id: str) -> tuple[str, ...]:
        """The outbox events of `user_id` in the batch, oldest first."""
        return tuple(self.events.get(user_id, ()))

    def stamp(self, rows: list[dict]) -> tuple[list[dict], list[int]]:
        """Each row once per event it answers (newest first), and the index of the row each came from.

        When a batch coalesced several events of one user, the same outcome is recorded for each, so every
        event can be asked what became of it. A group's create (`_member` a tuple: the group's members in
        the batch) is recorded for each of its members' events, or for every event of the batch when none
        of its users is a member: each asked for the group to exist.
        """
        out, source = [], []
        for i, row in enumerate(rows):
            member = row.get("_member")
            if isinstance(member, tuple):
                ids = [e for user in (member or self.events) for e in self.events.get(user, [])]
            else:
                ids = self.events.get(row["entity_id"]) or self.events.get(member or "")
            for event_id in reversed(ids or [self.run_event]):
                out.append({**_recorded(row), "event_id": event_id})
                source.append(i)
        return out, source


Origin = Reconciliation | EventBatch


def _recorded(row: dict) -> dict:
    """The row without what only the planner reads (a group row's `_member`)."""
    return {k: v for k, v in row.items() if k != "_member"} if "_member" in row else row

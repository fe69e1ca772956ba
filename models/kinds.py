"""The words the store records for what was done and how it ended, as StrEnums.

Each member is a `str` equal to its value, so the store keeps the same text it always has and a
row read back (a plain str) compares equal to the member. Widths fit the columns that hold them:
16 characters for events' and operations' status, operations' action and operation; 32 for a
reconciliation run's status; 8 for a connector's health state.
"""

from enum import StrEnum


class Intent(StrEnum):
    """Why an operation row exists (`Operation.action`)."""

    PROVISION = "provision"
    DEPROVISION = "deprovision"
    SKIP = "skip"
    VERIFY = "verify"  # a read-back after a reconciliation
    GROUP = "group"


class Action(StrEnum):
    """What was done, or planned, to one entity (`Operation.operation`, a plan row's action)."""

    CREATE = "create"
    UPDATE = "update"
    DISABLE = "disable"
    ENABLE = "enable"
    DELETE = "delete"
    LINK = "link"  # adopt an existing account
    RELINK = "relink"  # the mapped account is gone: create it again
    ORPHAN = "orphan"  # an account we do not hold a user for
    DELETE_PENDING = "delete_pending"  # suspended on deprovisioning, deleted when its time is up
    GROUP_CREATE = "group_create"
    MEMBER_ADD = "member_add"
    MEMBER_REMOVE = "member_remove"
    NOOP = "noop"  # the account already matches
    NONE = "none"  # nothing was sent (a failure before any call, a policy of doing nothing)
    GONE = "gone"  # the account was already absent
    VERIFY = "verify"  # read back and found as planned
    FIX = "fix"  # read back and found drifted
    CONFLICT = "conflict"  # a plan's count of users who cannot be named (never a row or an operation)


class EventStatus(StrEnum):
    """Where an event of the outbox stands (`Event.status`)."""

    ACCEPTED = "accepted"
    RUNNING = "running"
    RETRYING = "retrying"  # a passing failure: claimable again at retry_at
    SUCCEEDED = "succeeded"
    FAILED = "failed"


class OperationStatus(StrEnum):
    """How an operation, or one attempt of it, ended (`Operation.status`, `OperationAttempt.status`)."""

    RUNNING = "running"
    RETRYING = "retrying"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    ABANDONED = "abandoned"  # its process died before it finished
    # Sent, its answer lost, and the target could not be read to tell whether it applied: never
    # resent blind; the next drain or reconciliation reads the target and links what it finds.
    OUTCOME_UNKNOWN = "outcome_unknown"


# How an operation ends when it leaves work for a later run: refused or failed, or not known to have applied.
NOT_DONE = frozenset({OperationStatus.FAILED, OperationStatus.OUTCOME_UNKNOWN})


class RunStatus(StrEnum):
    """How a reconciliation run ended (`ReconciliationRun.status`)."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    PARTIAL = "partial"  # some operations failed, some succeeded
    BUSY = "busy"  # another reconciliation held the connector's lease
    REJECTED = "rejected"  # an operator rejected the deletions
    STOPPED_BY_GUARD = "stopped-by-guard"  # a CLI run without --yes tripped the deletion guard
    ABANDONED = "abandoned"
    AWAITING_APPROVAL = "awaiting-approval"  # only in rows older versions wrote; nothing waits on it


class HealthState(StrEnum):
    """A connector's circuit (`ConnectorHealth.state`): closed lets calls through, open quarantines."""

    CLOSED = "closed"
    OPEN = "open"

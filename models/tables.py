"""The state store: identity data (desired state) and run state (mappings, operations, events).

Schema changes go through Alembic migrations in `models/migrations/`; never `create_all`.
"""

from datetime import datetime, timezone
from typing import Any, Optional
from uuid import uuid4

from sqlalchemy import JSON, Column, Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from models.kinds import EventStatus, HealthState, OperationStatus, RunStatus


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def new_id() -> str:
    return uuid4().hex


# Default factories for JSON columns. Not the builtins `dict` and `list`: SQLModel asks pydantic
# at every row's construction whether the factory takes arguments, and for a builtin that means
# inspect.signature parsing its text signature with ast.parse, once per row. Python 3.11 before
# 3.11.8 can fail two threads doing that at once (CPython gh-106905); a Python function is
# inspected without compiling anything.
def empty_dict() -> dict:
    return {}


def empty_list() -> list:
    return []


class User(SQLModel, table=True):
    """A local user: the desired state every connector is driven towards."""

    __tablename__ = "users"
    __table_args__ = (UniqueConstraint("tenant", "user_store", "username", name="uq_users_name"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    username: str = Field(max_length=255, index=True)
    user_store: str = Field(default="PRIMARY", max_length=64)
    tenant: str = Field(max_length=255)
    email: Optional[str] = Field(default=None, max_length=320)
    given_name: Optional[str] = Field(default=None, max_length=255)
    family_name: Optional[str] = Field(default=None, max_length=255)
    display_name: Optional[str] = Field(default=None, max_length=255)
    active: bool = True
    attributes: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON, nullable=False))
    # How the user arrived (api, console, self_signup, jit, federated_login, import, directory, scim) and
    # every IdP the user has come through: the policy's level rules read both.
    source: str = Field(max_length=32)
    idps: list[str] = Field(default_factory=empty_list, sa_column=Column(JSON, nullable=False))
    deleted_at: Optional[datetime] = None
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)

    @property
    def qualified_name(self) -> str:
        return f"{self.username}@{self.user_store}"


class Role(SQLModel, table=True):
    __tablename__ = "roles"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    name: str = Field(max_length=255, unique=True)


class UserRole(SQLModel, table=True):
    __tablename__ = "user_roles"
    user_id: str = Field(foreign_key="users.id", primary_key=True, max_length=64)
    role_id: str = Field(foreign_key="roles.id", primary_key=True, max_length=64)


class Group(SQLModel, table=True):
    __tablename__ = "groups"
    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    name: str = Field(max_length=255, unique=True)


class GroupMember(SQLModel, table=True):
    __tablename__ = "group_members"
    group_id: str = Field(foreign_key="groups.id", primary_key=True, max_length=64)
    user_id: str = Field(foreign_key="users.id", primary_key=True, max_length=64)


class GroupNesting(SQLModel, table=True):
    """A group that is a member of another group: `member_group_id`'s members count in `group_id`."""

    __tablename__ = "group_nesting"
    group_id: str = Field(foreign_key="groups.id", primary_key=True, max_length=64)
    member_group_id: str = Field(foreign_key="groups.id", primary_key=True, max_length=64, index=True)


class Mapping(SQLModel, table=True):
    """A local entity linked to its account in one connector's target."""

    __tablename__ = "mappings"
    __table_args__ = (
        UniqueConstraint("connector", "entity_type", "local_id", name="uq_mappings_local"),
        UniqueConstraint("connector", "entity_type", "remote_id", name="uq_mappings_remote"),
        UniqueConstraint("connector", "entity_type", "remote_name", name="uq_mappings_remote_name"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    connector: str = Field(max_length=64)
    entity_type: str = Field(max_length=16)  # user | group
    local_id: str = Field(max_length=64)
    remote_id: str = Field(max_length=255)
    remote_name: str = Field(max_length=255)
    # Hash of the managed attributes last pushed: a cheap "has anything changed?" check.
    pushed_hash: Optional[str] = Field(default=None, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    updated_at: datetime = Field(default_factory=utcnow)


class Suspension(SQLModel, table=True):
    """An account we switched off on deprovisioning, on a connector that deletes it later
    (`deprovision: {first: suspend, then: delete, after_days: N}`): since when."""

    __tablename__ = "suspensions"
    connector: str = Field(primary_key=True, max_length=64)
    local_id: str = Field(primary_key=True, max_length=64)
    remote_id: str = Field(max_length=255)
    suspended_at: datetime = Field(default_factory=utcnow)


class Event(SQLModel, table=True):
    """The outbox: an identity event, stored before it is acknowledged."""

    __tablename__ = "events"

    id: str = Field(primary_key=True, max_length=128)
    type: str = Field(max_length=32)
    trigger: str = Field(max_length=32)
    idp: Optional[str] = Field(default=None, max_length=255)
    user_id: Optional[str] = Field(default=None, max_length=64, index=True)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    status: str = Field(default=EventStatus.ACCEPTED, max_length=16, index=True)  # an EventStatus
    # Runs that ended for a passing reason (a target's 5xx, a quarantine, an orchestrator error):
    # how many, and when the event may be claimed again (status retrying).
    attempts: int = 0
    retry_at: Optional[datetime] = None
    received_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None
    error: Optional[str] = Field(default=None, sa_column=Column(Text))


class Operation(SQLModel, table=True):
    """One thing done (or decided) for one entity on one connector."""

    __tablename__ = "operations"
    __table_args__ = (
        Index("ix_operations_event_connector", "event_id", "connector", "entity_id"),
        Index("ix_operations_status", "status"),
    )

    id: Optional[int] = Field(default=None, primary_key=True)
    event_id: Optional[str] = Field(default=None, max_length=128)
    connector: str = Field(max_length=64)
    entity_type: str = Field(default="user", max_length=16)
    entity_id: str = Field(max_length=64)
    entity_name: str = Field(max_length=320)
    action: str = Field(max_length=16)  # an Intent
    operation: Optional[str] = Field(default=None, max_length=16)  # an Action
    status: str = Field(default=OperationStatus.RUNNING, max_length=16)
    attempts: int = 0
    reason: Optional[str] = Field(default=None, sa_column=Column(Text))
    error_code: Optional[str] = Field(default=None, max_length=64)
    error_message: Optional[str] = Field(default=None, sa_column=Column(Text))
    remote_id: Optional[str] = Field(default=None, max_length=255)
    remote_name: Optional[str] = Field(default=None, max_length=255)
    drift: Optional[dict[str, Any]] = Field(default=None, sa_column=Column(JSON))
    flow_run_id: Optional[str] = Field(default=None, max_length=64)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class OperationAttempt(SQLModel, table=True):
    """Every try of an operation, so retries are visible after the fact."""

    __tablename__ = "operation_attempts"

    id: Optional[int] = Field(default=None, primary_key=True)
    operation_id: int = Field(foreign_key="operations.id", index=True)
    number: int
    status: str = Field(default=OperationStatus.RUNNING, max_length=16)
    error_code: Optional[str] = Field(default=None, max_length=64)
    error_message: Optional[str] = Field(default=None, sa_column=Column(Text))
    flow_run_id: Optional[str] = Field(default=None, max_length=64)
    task_run_id: Optional[str] = Field(default=None, max_length=64)
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None


class ReconciliationRun(SQLModel, table=True):
    """One reconciliation of one connector: when, dry-run or not, the plan's counts and the outcome."""

    __tablename__ = "reconciliation_runs"
    __table_args__ = (Index("ix_reconciliation_runs_connector", "connector", "started_at"),)

    id: str = Field(default_factory=new_id, primary_key=True, max_length=64)
    connector: str = Field(max_length=64)
    flow_run_id: Optional[str] = Field(default=None, max_length=64)
    dry_run: bool = False
    status: str = Field(default=RunStatus.RUNNING, max_length=32)
    counts: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON, nullable=False))  # per plan action
    outcomes: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON, nullable=False))  # succeeded/failed/skipped
    error: Optional[str] = Field(default=None, sa_column=Column(Text))
    started_at: datetime = Field(default_factory=utcnow)
    finished_at: Optional[datetime] = None
    # The deletion guard's decision, when the plan tripped it: approved | rejected (an operator in the
    # Prefect UI) | stopped (a CLI run without --yes) | forced (a CLI run with --yes); by whom, why, when,
    # and the hash of the plan rows it was about (tasks.guard.plan_hash).
    decision: Optional[str] = Field(default=None, max_length=16)
    decided_by: Optional[str] = Field(default=None, max_length=255)
    decision_comment: Optional[str] = Field(default=None, sa_column=Column(Text))
    decided_at: Optional[datetime] = None
    plan_hash: Optional[str] = Field(default=None, max_length=64)


class Lease(SQLModel, table=True):
    """A named lock held by one process until it releases it or the lease expires."""

    __tablename__ = "leases"

    name: str = Field(primary_key=True, max_length=255)
    owner: str = Field(max_length=255)
    acquired_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime


class ConnectorHealth(SQLModel, table=True):
    """A connector's health: consecutive failures, and the quarantine they opened."""

    __tablename__ = "connector_health"

    connector: str = Field(primary_key=True, max_length=64)
    consecutive_failures: int = 0
    state: str = Field(default=HealthState.CLOSED, max_length=8)
    opened_at: Optional[datetime] = None
    retry_at: Optional[datetime] = None  # when the next probe may go
    backoff: float = 0.0  # seconds of the current wait; grows with every failed probe
    last_error_code: Optional[str] = Field(default=None, max_length=64)
    last_error: Optional[str] = Field(default=None, sa_column=Column(Text))  # the connector's message, never a body
    updated_at: datetime = Field(default_factory=utcnow)


class CapabilityProfile(SQLModel, table=True):
    """What `outbound check` found a connector's target can do, and what is wrong with it.

    `capabilities` holds the probe's findings (for SCIM: the ServiceProviderConfig, resource types,
    schemas); `problems` is a list of {severity, what, fix}; `usable` is False when any problem is
    an error. Never a credential.
    """

    __tablename__ = "capability_profiles"

    connector: str = Field(primary_key=True, max_length=64)
    type: str = Field(max_length=16)
    usable: bool = True
    capabilities: dict[str, Any] = Field(default_factory=empty_dict, sa_column=Column(JSON, nullable=False))
    problems: list[dict[str, Any]] = Field(default_factory=empty_list, sa_column=Column(JSON, nullable=False))
    checked_at: datetime = Field(default_factory=utcnow)


class WebhookReceipt(SQLModel, table=True):
    """A webhook received from an identity provider, by its token id (`jti`): a second one with the
    same id is a replay. Stored in the transaction that stores the events it became."""

    __tablename__ = "webhook_receipts"

    jti: str = Field(primary_key=True, max_length=128)  # "<source>:<jti>"
    source: str = Field(max_length=16)  # wso2
    issuer: str = Field(max_length=1024)
    events: int = 0  # identity events stored
    ignored: int = 0  # event types, users or changes left out (each said why in the answer)
    received_at: datetime = Field(default_factory=utcnow, index=True)


class SourceUser(SQLModel, table=True):
    """An identity provider's id for a local user, for its events that name the user only by id."""

    __tablename__ = "source_users"

    source: str = Field(primary_key=True, max_length=16)
    remote_id: str = Field(primary_key=True, max_length=255)
    user_id: str = Field(foreign_key="users.id", max_length=64, index=True)


class DirectoryEntry(SQLModel, table=True):
    """A directory entry (by its anchor: entryUUID, objectGUID) and the local user it became."""

    __tablename__ = "directory_entries"

    directory: str = Field(primary_key=True, max_length=64)
    anchor: str = Field(primary_key=True, max_length=255)
    dn: str = Field(sa_column=Column(Text, nullable=False))
    user_id: str = Field(foreign_key="users.id", max_length=64, index=True)
    pulled_at: datetime = Field(default_factory=utcnow)


class DirectoryWatermark(SQLModel, table=True):
    """Where the last pull of a directory got to; moved in the transaction that stores its events."""

    __tablename__ = "directory_watermarks"

    directory: str = Field(primary_key=True, max_length=64)
    attribute: str = Field(max_length=32)  # modifyTimestamp | uSNChanged
    value: str = Field(max_length=64)
    # sha256 of the settings that choose and map the entries: when they change, the next pull is full.
    settings_hash: str = Field(max_length=64)
    full_pull_at: Optional[datetime] = None
    updated_at: datetime = Field(default_factory=utcnow)

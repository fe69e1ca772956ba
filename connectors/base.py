"""The small protocol every connector implements, and the account shape they exchange."""

from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Iterator, Optional, Protocol

from models.compare import canonical, same
from models.kinds import Action

# The attributes we manage on a remote account; reconciliation compares only these.
MANAGED = ("user_name", "given_name", "family_name", "display_name", "email", "active", "external_id")


@dataclass(frozen=True)
class Account:
    """A user account as we manage it, whatever the target calls its fields."""

    user_name: str
    external_id: Optional[str] = None
    given_name: Optional[str] = None
    family_name: Optional[str] = None
    display_name: Optional[str] = None
    email: Optional[str] = None
    active: bool = True
    id: Optional[str] = None  # the target's id
    extra: dict[str, Any] = field(default_factory=dict)  # connector-specific managed fields

    def managed(self) -> dict[str, Any]:
        values = {k: getattr(self, k) for k in MANAGED}
        values.update({f"extra.{k}": v for k, v in sorted(self.extra.items())})
        return values

    def with_id(self, remote_id: str) -> "Account":
        return replace(self, id=remote_id)


@dataclass(frozen=True)
class RemoteGroup:
    name: str
    id: Optional[str] = None
    member_ids: frozenset[str] = frozenset()
    external_id: Optional[str] = None


@dataclass(frozen=True)
class BatchOp:
    """One call in a batch: create (account), update (remote_id, changes), disable/enable/delete (remote_id)."""

    kind: Action  # CREATE, UPDATE, DISABLE, ENABLE or DELETE
    account: Optional[Account] = None
    remote_id: Optional[str] = None
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Capabilities:
    """What a connector can do, declared rather than probed: callers read this, never getattr."""

    groups: bool = True  # the group calls work (False: callers never call them)
    deletes_users: bool = True  # False: delete_user deactivates instead (the account stays)
    # The most ops one batch request of the target carries; the connector chunks by it (None: the
    # server says, as SCIM's bulk.maxOperations does).
    max_batch: Optional[int] = None
    read_only_attributes: tuple[str, ...] = ()  # managed attributes the target derives itself: never drift
    uses_profile: bool = False  # it acts on the stored capability profile (`use_profile`) rather than asking
    # Whether the target tells group names apart by case (see `same_group_name`): SCIM's Group
    # displayName is caseExact=false unless the server's /Schemas say otherwise; Google compares addresses.
    group_names_case_exact: bool = False
    # `find_users` looks a batch's accounts up in a few requests (SCIM `or` filters, a SOQL IN); False:
    # callers use `find_each` (the per-user `find_user`), or the listing.
    batched_lookup: bool = False
    # `plan_refusal` can tell, before a reconciliation sends its first chunk, that the target cannot
    # take the plan's creates as a whole (Salesforce: the licences they need are not free).
    checks_plan: bool = False
    # An event batch may send a first-run user's create without looking the account up first, adopting
    # on the target's uniqueness refusal; `refuses_repeated_user_names` proves the target does refuse
    # (only called when this is set; tasks/optimistic.py decides).
    optimistic_create: bool = False


class Connector(Protocol):
    """One remote system. Returns remote ids; never touches the store, sleeps or retries.

    On a dry run every write raises DryRunRejected (reads go through); the group calls are only
    made when `capabilities.groups`, `use_profile` only when `capabilities.uses_profile`.
    """

    name: str
    capabilities: Capabilities

    def check_user_name(self, user_name: str) -> None:
        """Raise Rejected (naming the rule) when the target would refuse this username."""

    def create_user(self, account: Account) -> Account: ...
    def get_user(self, remote_id: str) -> Account: ...
    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]: ...
    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account: ...
    def disable_user(self, remote_id: str) -> None: ...
    def enable_user(self, remote_id: str) -> None: ...
    def delete_user(self, remote_id: str) -> None: ...
    def iter_users(self) -> Iterator[Account]: ...

    # Only when `capabilities.batched_lookup`: every account `matching` any of `keys`, as a listing
    # filtered by `matching` would give, in requests that grow with len(keys), not with the target.
    def find_users(self, keys: list["Lookup"]) -> list[Account]: ...

    # Results align with `ops`: each is the resulting Account (create/update), None (done), or the
    # ConnectorError that call met. Never raises for one op. `max_workers` bounds parallel calls
    # where the target has no batch endpoint.
    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]: ...

    # Only when `capabilities.checks_plan`: why the target cannot take these creates (a whole plan's),
    # None when it can. Reads only.
    def plan_refusal(self, creates: list[Account]) -> Optional[str]: ...


@dataclass(frozen=True)
class Lookup:
    """One user's keys to find its candidate accounts by: the mapped account's id, then externalId
    (exact), userName and email (both without case). A key left None is not looked for."""

    remote_id: Optional[str] = None
    external_id: Optional[str] = None
    user_name: Optional[str] = None
    email: Optional[str] = None


def _fold(value: Optional[str]) -> str:
    return (value or "").lower()


def matching(accounts: Iterable[Account], keys: Iterable[Lookup]) -> list[Account]:
    """The accounts that match any key: by id, externalId (exact), userName or email (without case).

    The one rule of what a batch's candidates are, whether they come from a listing or from lookups:
    a server's answer to a filter is narrowed by it, so a server that compares otherwise changes nothing.
    """
    keys = list(keys)
    ids = {k.remote_id for k in keys} - {None}
    externals = {k.external_id for k in keys} - {None}
    names = {_fold(k.user_name) for k in keys} - {""}
    emails = {_fold(k.email) for k in keys} - {""}
    return [a for a in accounts if a.id in ids or a.external_id in externals or _fold(a.user_name) in names
            or _fold(a.email) in emails]


def find_each(connector: "Connector", keys: list[Lookup], workers: int = 4) -> list[Account]:
    """The per-user lookups, for a connector without `find_users`: the mapped account by id, else
    the first `find_user` finds; over up to `workers` threads; each account once."""
    from concurrent.futures import ThreadPoolExecutor

    from connectors.errors import NotFound

    def look(key: Lookup) -> list[Account]:
        if key.remote_id:
            try:
                return [connector.get_user(key.remote_id)]
            except NotFound:
                pass
        if not (key.external_id or key.user_name or key.email):
            return []
        hit = connector.find_user(external_id=key.external_id, user_name=key.user_name,
                                  **({"email": key.email} if key.email else {}))
        return [hit] if hit is not None else []

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(keys) or 1))) as pool:
        accounts = [a for found in pool.map(look, keys) for a in found]
    return list({a.id: a for a in accounts}.values())


class GroupConnector(Connector, Protocol):
    """A connector whose `capabilities.groups` is True also has these."""

    def create_group(self, name: str, member_ids: list[str], external_id: Optional[str] = None) -> RemoteGroup: ...
    def get_group(self, remote_id: str) -> RemoteGroup: ...
    def find_group(self, name: str) -> Optional[RemoteGroup]: ...
    def add_members(self, group_id: str, member_ids: list[str]) -> None: ...
    def remove_members(self, group_id: str, member_ids: list[str]) -> None: ...
    def delete_group(self, remote_id: str) -> None: ...
    def iter_groups(self) -> Iterator[RemoteGroup]: ...


class ProfiledConnector(Connector, Protocol):
    """A connector whose `capabilities.uses_profile` is True also has this."""

    def use_profile(self, capabilities: dict) -> None:
        """Act on the stored capability profile (from `outbound check`) instead of asking the target."""


def same_group_name(want: str, have: Optional[str], case_exact: bool = False) -> bool:
    """Whether a target holding a group named `have` holds the group named `want`: compared as the
    target compares them (trimmed; without case unless `case_exact`), as `differences` compares users."""
    a, b = canonical(want), canonical(have)
    if isinstance(a, str) and isinstance(b, str) and not case_exact:
        return a.casefold() == b.casefold()
    return a == b


def group_named(groups: Iterable[RemoteGroup], name: str, case_exact: bool = False) -> Optional[RemoteGroup]:
    """The target's group `name` is (by `same_group_name`): the one spelt exactly so, else the only
    one equal to it; None when there is none, or several and none exact (no guess between them)."""
    alike = [g for g in groups if same_group_name(name, g.name, case_exact)]
    exact = [g for g in alike if g.name == name]
    if exact:
        return exact[0]
    return alike[0] if len(alike) == 1 else None


def differences(desired: Account, current: Account, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The managed attributes whose desired value differs from the current one.

    A desired value of None means "we hold nothing here": the target's value is left alone.
    `ignore` names attributes the target derives itself (a connector's `read_only_attributes`).
    Values compare by the one rule, `models.compare.same`.
    """
    changes = {}
    have = current.managed()
    for key, want in desired.managed().items():
        if want is None or key in ignore:
            continue
        if not same(key, want, have.get(key)):
            changes[key] = want
    return changes

"""What a Salesforce user may do: profile and role by rule, permission sets per role, licences, freezing.

- `ProfileId` and `UserRoleId` travel in Account.extra as **names** (what the rules give and an
  operator reads); they are resolved to ids with one SOQL query of Profile / UserRole per connector
  (read again once when a name is missing, so a profile created since is found). A name Salesforce
  does not have fails that user's operation, naming the rule's setting and the value.
- `permission_sets` (canonical text of PermissionSet Names, see `models.target_rules`) is read from
  PermissionSetAssignment and set after the User call: missing assignments inserted (DUPLICATE_VALUE
  is "held already"), managed ones not wanted deleted. A set whose licence does not match the
  user's profile is refused by Salesforce (FIELD_INTEGRITY_EXCEPTION): reported naming the user and
  the set. After a create, such a failure is the create's result (naming the new account's id), so
  the next plan links the account and assigns the set.
- Licences: before a batch's creates are sent, the licences they need (by each profile's
  UserLicense) are compared with TotalLicenses - UsedLicenses; when more are needed than are free,
  none of that licence's creates is sent and each says so.
- `suspend_mode: freeze`: disable freezes the user's login (UserLogin.IsFrozen) instead of
  deactivating, enable thaws it; a frozen user reads as inactive.
"""

import logging
from dataclasses import replace
from typing import Any, Iterator, Optional

from connectors.base import Account, BatchOp
from connectors.errors import AlreadyExists, ConnectorError, DryRunRejected, NotFound, Rejected
from connectors.salesforce.batch import Batch
from connectors.salesforce.mapping import soql_quote
from connectors.salesforce.transport import record_id
from models.kinds import Action
from models.target_rules import PERMISSION_SETS, set_of, set_text

log = logging.getLogger("connectors.salesforce")
RULED = {"ProfileId": ("Profile", "profile_rules"), "UserRoleId": ("UserRole", "role_rules")}


class Access(Batch):
    capabilities = replace(Batch.capabilities, checks_plan=True)
    # --- names and ids --------------------------------------------------------------------------

    def _table(self, entity: str, fresh: bool = False) -> dict[str, dict]:
        """Id -> record (Id, Name, and a Profile's UserLicenseId) of a small setup object, read once."""
        cache = self.__dict__.setdefault("_setup", {})
        if fresh or entity not in cache:
            fields = "Id, Name, UserLicenseId" if entity == "Profile" else "Id, Name"
            cache[entity] = {r["Id"]: r for r in self._query(f"SELECT {fields} FROM {entity}")}
        return cache[entity]

    def _id_of(self, entity: str, name: str, setting: str) -> str:
        for fresh in (False, True):
            found = next((i for i, r in self._table(entity, fresh).items() if str(r.get("Name")) == name), None)
            if found:
                return found
        raise Rejected(f"salesforce.{setting} gives {name!r}, but Salesforce has no {entity} named {name!r}: "
                       f"fix the rule or create the {entity}", field=setting)

    def _name_of(self, entity: str, rid: Optional[str]) -> Optional[str]:
        if not rid:
            return None
        record = self._table(entity).get(rid) or self._table(entity, fresh=True).get(rid)
        return record.get("Name") if record else rid

    @property
    def _managed_sets(self) -> bool:
        return PERMISSION_SETS in self.extra_fields

    @property
    def _freezes(self) -> bool:
        return self.settings.suspend_mode == "freeze"

    # --- reading --------------------------------------------------------------------------------

    def _select(self) -> str:
        return ", ".join(f for f in super()._select().split(", ") if f != PERMISSION_SETS)

    def _account(self, record: dict) -> Account:
        account = super()._account(record)
        extra = dict(account.extra)
        for target, (entity, _) in RULED.items():
            if target in extra:
                extra[target] = self._name_of(entity, extra[target])
        extra.pop(PERMISSION_SETS, None)
        return replace(account, extra=extra)

    def _sets_of(self, user_ids: Optional[list[str]] = None) -> dict[str, dict[str, str]]:
        """User id -> {PermissionSet Name: assignment id} of the managed sets (of `user_ids`, or every user)."""
        sets = {i: r["Name"] for i, r in self._table("PermissionSet").items()}
        managed = {g.name for g in self.settings.permission_sets}
        where = (f" WHERE AssigneeId IN ({', '.join(soql_quote(u) for u in user_ids)})" if user_ids is not None
                 else "")
        out: dict[str, dict[str, str]] = {}
        for r in self._query(f"SELECT Id, AssigneeId, PermissionSetId FROM PermissionSetAssignment{where}"):
            name = sets.get(r["PermissionSetId"])
            if name in managed:
                out.setdefault(r["AssigneeId"], {})[name] = r["Id"]
        return out

    def _frozen(self, user_ids: Optional[list[str]] = None) -> dict[str, str]:
        """User id -> its UserLogin id, of the frozen logins (of `user_ids`, or every user)."""
        where = " WHERE IsFrozen = true" + (f" AND UserId IN ({', '.join(soql_quote(u) for u in user_ids)})"
                                            if user_ids is not None else "")
        return {r["UserId"]: r["Id"] for r in self._query(f"SELECT Id, UserId, IsFrozen FROM UserLogin{where}")}

    def _with(self, account: Optional[Account], sets: Optional[dict] = None, frozen: Optional[dict] = None):
        if account is None or not account.id:
            return account
        if self._managed_sets:
            sets = self._sets_of([account.id]) if sets is None else sets
            account = replace(account, extra={**account.extra, PERMISSION_SETS: set_text(sets.get(account.id, {}))})
        if self._freezes:
            frozen = self._frozen([account.id]) if frozen is None else frozen
            if account.id in frozen:
                account = replace(account, active=False)
        return account

    def get_user(self, remote_id: str) -> Account:
        return self._with(super().get_user(remote_id))

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        return self._with(super().find_user(external_id=external_id, user_name=user_name, email=email))

    def iter_users(self) -> Iterator[Account]:
        sets = self._sets_of() if self._managed_sets else {}
        frozen = self._frozen() if self._freezes else {}
        for account in super().iter_users():
            yield self._with(account, sets, frozen)

    # --- writing --------------------------------------------------------------------------------

    def _create_fields(self, account: Account) -> dict:
        plain = replace(account, extra={k: v for k, v in account.extra.items()
                                        if k not in RULED and k != PERMISSION_SETS})
        fields = super()._create_fields(plain)
        for target, (entity, setting) in RULED.items():
            name = account.extra.get(target)
            if name:
                fields[target] = self._id_of(entity, name, setting)
        return fields

    def _resolved(self, changes: dict[str, Any]) -> dict[str, Any]:
        """Changes for the User record: rule names as ids, permission sets left out."""
        out = {}
        for key, value in changes.items():
            target = key[len("extra."):] if key.startswith("extra.") else None
            if target == PERMISSION_SETS:
                continue
            if target in RULED and value:
                entity, setting = RULED[target]
                value = self._id_of(entity, value, setting)
            out[key] = value
        return out

    def set_permission_sets(self, user_id: str, want: set[str], label: str) -> None:
        """Assign the wanted managed permission sets and remove the others; raise naming each failure."""
        have = self._sets_of([user_id]).get(user_id, {})
        failures = []
        for grant in self.settings.permission_sets:
            name = grant.name
            try:
                if name in want and name not in have:
                    self._json_call(f"assign permission set {name} to {label}", "POST",
                                    "sobjects/PermissionSetAssignment",
                                    {"AssigneeId": user_id, "PermissionSetId": self._id_of(
                                        "PermissionSet", name, "permission_sets")})
                elif name not in want and name in have:
                    self._json_call(f"remove permission set {name} from {label}", "DELETE",
                                    f"sobjects/PermissionSetAssignment/{record_id(have[name])}")
            except (AlreadyExists, NotFound):
                pass  # assigned already / removed already
            except DryRunRejected:
                raise
            except ConnectorError as exc:
                failures.append((name, exc))
        if failures:
            first = failures[0][1]
            what = "; ".join(f"permission set {n}: {e}" for n, e in failures)
            raise type(first)(f"user {label}: {what}", status=first.status, field=PERMISSION_SETS) from first

    def _after_create(self, account: Account, made: Account) -> Account:
        want = set_of(account.extra.get(PERMISSION_SETS)) if self._managed_sets else set()
        if want:
            try:
                self.set_permission_sets(made.id, want, account.user_name)
            except DryRunRejected:
                raise
            except ConnectorError as exc:
                raise Rejected(f"{exc}; the account was created (id {made.id}) and is retried for its permission "
                               f"sets", status=exc.status, field=PERMISSION_SETS) from exc
        return self._with(made, {made.id: dict.fromkeys(want, "")}, {}) if self._managed_sets else made

    def create_user(self, account: Account) -> Account:
        return self._after_create(account, super().create_user(account))

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        rest = self._resolved(changes)
        updated = super().update_user(remote_id, rest, current) if rest else current
        extra = {**updated.extra, **{k[len("extra."):]: v for k, v in changes.items() if k.startswith("extra.")}}
        updated = replace(updated, extra=extra)
        key = f"extra.{PERMISSION_SETS}"
        if key in changes and self._managed_sets:
            self.set_permission_sets(remote_id, set_of(changes[key]), current.user_name or remote_id)
        return updated

    def _login_id(self, remote_id: str) -> str:
        record = self._first(f"SELECT Id, UserId, IsFrozen FROM UserLogin WHERE UserId = {soql_quote(remote_id)}")
        if record is None:
            raise NotFound(f"user {remote_id} has no login to freeze")
        return record["Id"]

    def _freeze(self, remote_id: str, frozen: bool) -> None:
        self._json_call(f"{'freeze' if frozen else 'unfreeze'} user {remote_id}", "PATCH",
                        f"sobjects/UserLogin/{record_id(self._login_id(remote_id))}", {"IsFrozen": frozen})

    def disable_user(self, remote_id: str) -> None:
        """Deactivate the user, or with suspend_mode freeze, freeze its login."""
        if self._freezes:
            self._freeze(remote_id, True)
        else:
            super().disable_user(remote_id)

    def enable_user(self, remote_id: str) -> None:
        if self._freezes:
            self._freeze(remote_id, False)
        super().enable_user(remote_id)

    # --- batches --------------------------------------------------------------------------------

    def plan_refusal(self, creates: list[Account]) -> Optional[str]:
        """Why a plan's creates cannot all be made: a licence of which fewer are free than they need."""
        if not creates or not self.settings.check_licences:
            return None
        ops = [BatchOp(Action.CREATE, account=a) for a in creates]
        messages = self._licence_check(ops, list(range(len(ops))), [None] * len(ops), what="the plan")
        return "; ".join(messages) or None

    def _licence_check(self, ops: list[BatchOp], creates: list[int], results: list[Any],
                       what: str = "the batch") -> list[str]:
        """Refuse, before sending, the creates of a licence of which fewer are free than they need;
        return what was refused, one message per licence."""
        profiles = self._table("Profile")
        need: dict[str, list[int]] = {}
        for i in creates:
            account = ops[i].account
            try:
                pid = (self._id_of("Profile", account.extra["ProfileId"], "profile_rules")
                       if account.extra.get("ProfileId") else self.profile_id())
            except ConnectorError as exc:
                results[i] = exc
                continue
            if account.active:
                profile = profiles.get(pid) or self._table("Profile", fresh=True).get(pid) or {}
                need.setdefault(str(profile.get("UserLicenseId")), []).append(i)
        if not need:
            return []
        messages = []
        licences = {r["Id"]: r for r in self._query(
            "SELECT Id, Name, TotalLicenses, UsedLicenses FROM UserLicense")}
        for licence_id, idx in need.items():
            licence = licences.get(licence_id)
            if licence is None:
                continue
            free = int(licence["TotalLicenses"] or 0) - int(licence["UsedLicenses"] or 0)
            if len(idx) > free:
                message = (f"{what} creates {len(idx)} users needing a {licence['Name']} licence but "
                           f"{max(free, 0)} are free (TotalLicenses {licence['TotalLicenses']} - UsedLicenses "
                           f"{licence['UsedLicenses']}): none of them was sent")
                messages.append(message)
                for i in idx:
                    results[i] = Rejected(f"create user {ops[i].account.user_name}: {message}", field="ProfileId")
        return messages

    def apply_batch(self, ops: list[BatchOp], *, max_workers: int = 1) -> list[Any]:
        """sObject Collections for the User records (creates past the free licences are not sent; with
        suspend_mode freeze, disables and enables go to UserLogin), then each op's permission sets."""
        results: list[Any] = [None] * len(ops)
        creates = [i for i, op in enumerate(ops) if op.kind == Action.CREATE]
        if creates and self.settings.check_licences:
            try:
                self._licence_check(ops, creates, results)
            except ConnectorError as exc:
                for i in creates:
                    results[i] = exc
        key = f"extra.{PERMISSION_SETS}"
        send: list[tuple[int, BatchOp]] = []
        later: set[int] = set()  # ops done one by one: freezing, an update of permission sets only
        for i, op in enumerate(ops):
            if results[i] is not None:
                continue
            if op.kind in (Action.DISABLE, Action.ENABLE) and self._freezes:
                later.add(i)
                continue
            if op.kind == Action.UPDATE:
                try:
                    changes = self._resolved(op.changes)
                except ConnectorError as exc:
                    results[i] = exc
                    continue
                if not changes:
                    later.add(i)
                    continue
                op = replace(op, changes=changes)
            send.append((i, op))
        if send:
            for (i, _), result in zip(send, super().apply_batch([op for _, op in send], max_workers=max_workers)):
                results[i] = result
        def follow_up(i: int) -> None:
            op = ops[i]
            if isinstance(results[i], BaseException):
                return
            try:
                if i in later and op.kind == Action.DISABLE:
                    self.disable_user(op.remote_id)
                elif i in later and op.kind == Action.ENABLE:
                    self.enable_user(op.remote_id)
                elif op.kind == Action.CREATE and isinstance(results[i], Account):
                    results[i] = self._after_create(op.account, results[i])
                elif op.kind == Action.UPDATE and key in op.changes and self._managed_sets:
                    self.set_permission_sets(op.remote_id, set_of(op.changes[key]), op.remote_id)
                    if i in later:
                        results[i] = self.get_user(op.remote_id)
            except ConnectorError as exc:
                results[i] = exc

        # Freezes and permission set rows are one call each: `max_workers` at a time.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=max(1, min(max_workers, len(ops) or 1))) as pool:
            list(pool.map(follow_up, range(len(ops))))
        return results

"""Salesforce users: create, read, find, update, activate, deactivate (Salesforce cannot delete), list."""

import re
from dataclasses import replace
from typing import Any, Iterator, Optional

from connectors.base import Account, Lookup, matching
from connectors.errors import AlreadyExists, ConnectorError, Rejected
from connectors.salesforce.mapping import (USERNAME_MAX, applied, create_fields, created, freed_username, patch_fields,
                                           soql_quote, to_account)
from connectors.salesforce.transport import Transport, record_id

_EMAIL_FORM = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class Users(Transport):
    def _account(self, record: dict) -> Account:
        return to_account(record, self.extra_fields)

    def _create_fields(self, account: Account) -> dict:
        return create_fields(account, self.settings.defaults, self.profile_id(), self.extra_fields)

    def check_user_name(self, user_name: str) -> None:
        """Reject a username Salesforce would refuse: it must be an email address of at most 80 characters."""
        if len(user_name) > USERNAME_MAX:
            raise Rejected(f"Username: {len(user_name)} characters; Salesforce allows at most {USERNAME_MAX}",
                           field="Username")
        if not _EMAIL_FORM.match(user_name):
            raise Rejected("Username: Salesforce usernames must be in the form of an email address (name@domain.tld)",
                           field="Username")

    def create_user(self, account: Account) -> Account:
        """Create the user in Salesforce."""
        fields = self._create_fields(account)
        try:
            body = self._json_call(f"create user {account.user_name}", "POST", "sobjects/User", fields)
        except AlreadyExists as exc:
            raise self._username_conflict(account.user_name, exc) from exc
        return created(account, fields, body["id"])

    def _username_conflict(self, user_name: str, exc: ConnectorError) -> ConnectorError:
        """DUPLICATE_USERNAME: AlreadyExists when the user is in this org, else a cross-org collision."""
        if exc.field != "Username":
            return exc
        if self.find_user(user_name=user_name) is not None:
            return AlreadyExists(f"Username {user_name} already exists in this Salesforce org", status=exc.status,
                                 field="Username")
        return Rejected(f"Username {user_name} is taken in another Salesforce org (usernames are unique across "
                        f"all Salesforce orgs): choose another pattern or domain", status=exc.status, field="Username")

    def get_user(self, remote_id: str) -> Account:
        """Read the user by its Id (18 or 15 characters)."""
        path = f"sobjects/User/{record_id(remote_id)}"
        fields = self._select().replace(" ", "")
        return self._account(self._call(f"get user {remote_id}", lambda sf: sf.restful(path, params={"fields": fields}),
                                        path=path))

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        """Find the user (active or not) by FederationIdentifier, then by Username, then by Email."""
        for field, value in (("FederationIdentifier", external_id), ("Username", user_name), ("Email", email)):
            if not value:
                continue
            for record in self._query(f"SELECT {self._select()} FROM User WHERE {field} = {soql_quote(value)} LIMIT 2"):
                if str(record.get(field) or "").lower() == value.lower():
                    return self._account(record)
        return None

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """PATCH only the changed fields."""
        fields = patch_fields(changes)
        if not fields:
            return current
        try:
            self._json_call(f"update user {remote_id}", "PATCH", f"sobjects/User/{record_id(remote_id)}", fields)
        except AlreadyExists as exc:
            raise self._username_conflict(str(fields.get("Username")), exc) from exc
        return applied(current, changes)

    def disable_user(self, remote_id: str) -> None:
        self._json_call(f"disable user {remote_id}", "PATCH", f"sobjects/User/{record_id(remote_id)}", {"IsActive": False})

    def enable_user(self, remote_id: str) -> None:
        self._json_call(f"enable user {remote_id}", "PATCH", f"sobjects/User/{record_id(remote_id)}", {"IsActive": True})

    def delete_user(self, remote_id: str) -> None:
        """Deactivate the user (Salesforce cannot delete users); optionally free its username."""
        fields: dict[str, Any] = {"IsActive": False}
        if self.settings.free_username_on_deprovision:
            user_name = self.get_user(remote_id).user_name
            freed = freed_username(user_name, remote_id)
            if freed != user_name:
                fields["Username"] = freed
        self._json_call(f"deactivate user {remote_id}", "PATCH", f"sobjects/User/{record_id(remote_id)}", fields)

    def iter_users(self) -> Iterator[Account]:
        """Every standard (human) user, active or not, page by page."""
        for record in self._query(f"SELECT {self._select()} FROM User WHERE UserType = 'Standard'"):
            yield self._account(record)

    # --- a batch's accounts in a few queries (tasks.plan.observe) --------------------------------

    capabilities = replace(Transport.capabilities, batched_lookup=True)
    LOOKUP_VALUES = 200  # values in one query's IN lists (SOQL text stays ~10 KB)

    def find_users(self, keys: list[Lookup]) -> list[Account]:
        """Every standard user matching any of `keys` (`connectors.base.matching`), as the listing
        gives: `WHERE UserType = 'Standard' AND (Id IN … OR FederationIdentifier IN … OR Username IN …
        OR Email IN …)`, one query per LOOKUP_VALUES values (SOQL compares text without case)."""
        fields = (("Id", "remote_id"), ("FederationIdentifier", "external_id"), ("Username", "user_name"),
                  ("Email", "email"))
        found: dict[str, Account] = {}
        chunk: dict[str, set[str]] = {f: set() for f, _ in fields}

        def flush() -> None:
            ors = " OR ".join(f"{f} IN ({', '.join(soql_quote(v) for v in sorted(vs))})"
                              for f, vs in chunk.items() if vs)
            if ors:
                for record in self._query(f"SELECT {self._select()} FROM User WHERE UserType = 'Standard' AND ({ors})"):
                    account = self._account(record)
                    found[account.id] = account
            for values in chunk.values():
                values.clear()

        for key in keys:
            values = {f: getattr(key, a) for f, a in fields if getattr(key, a)}
            if sum(map(len, chunk.values())) + len(values) > self.LOOKUP_VALUES:
                flush()
            for f, v in values.items():
                chunk[f].add(v if f in ("Id", "FederationIdentifier") else v.lower())
        flush()
        return matching(found.values(), keys)

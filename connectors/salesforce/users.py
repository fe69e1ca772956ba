"""Salesforce users: create, read, find, update, activate, deactivate (Salesforce cannot delete), list."""

import re
from typing import Any, Iterator, Optional

from connectors.base import Account
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

"""Google users: insert, get, find by externalId or address, patch, suspend, delete, list."""

import logging
from typing import Any, Iterator, Optional

from connectors.base import Account
from connectors.errors import NotFound
from connectors.google.mapping import check_address, insert_body, needs_current, patch_body, query_value, to_account
from connectors.google.transport import Transport, key

log = logging.getLogger("connectors.google")


class Users(Transport):
    def _account(self, user: dict) -> Account:
        return to_account(user, self.extra_targets)

    def _insert_body(self, account: Account) -> dict:
        return insert_body(account, self.settings, self.extra_targets)

    def _patch_body(self, changes: dict[str, Any], external_ids: Optional[list] = None,
                    current: Optional[dict] = None) -> dict:
        body = patch_body(changes, self.settings, self.extra_targets, external_ids, current)
        if not body and changes:
            log.debug("google: changes %s not applicable connector=%s", sorted(changes), self.name)
        return body

    def check_user_name(self, user_name: str) -> None:
        """Raise Rejected unless Google would accept this primary address."""
        check_address(user_name)

    def create_user(self, account: Account) -> Account:
        """Create the user; a taken address raises AlreadyExists (find_user(user_name=) then finds it)."""
        return self._account(self._json(self._request("POST", "users", json_body=self._insert_body(account))))

    def get_user(self, remote_id: str) -> Account:
        return self._account(self._json(self._request("GET", f"users/{key(remote_id)}", params=self._projection or None)))

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        """Find the user by externalId (organization type), then by primary address; None if neither.

        `email` adds nothing here: a Google username is the primary address itself.
        """
        if external_id:
            params = {"customer": self.customer, "query": f"externalId:{query_value(external_id)}", "maxResults": 10,
                      **self._projection}
            for user in self._json(self._request("GET", "users", params=params)).get("users") or []:
                account = self._account(user)
                if account.external_id == external_id:  # the search may match more loosely than we need
                    return account
        if user_name:
            try:
                user = self._json(self._request("GET", f"users/{key(user_name)}", params=self._projection or None))
            except NotFound:
                return None
            # A user key also matches ids and aliases: only the primary address itself is this user.
            if str(user.get("primaryEmail", "")).lower() == user_name.lower():
                return self._account(user)
        return None

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """Change only the given managed attributes (PATCH; never the password)."""
        external_ids, raw = None, None
        if needs_current(changes):
            # PATCH replaces arrays: keep the entries (externalIds of other types, other phones) the target holds.
            raw = self._json(self._request("GET", f"users/{key(remote_id)}"))
            external_ids = raw.get("externalIds")
        body = self._patch_body(changes, external_ids, raw)
        if not body:
            return current
        return self._account(self._json(self._request("PATCH", f"users/{key(remote_id)}", json_body=body)))

    def disable_user(self, remote_id: str) -> None:
        """Suspend the user."""
        self._request("PATCH", f"users/{key(remote_id)}", json_body={"suspended": True})

    def enable_user(self, remote_id: str) -> None:
        self._request("PATCH", f"users/{key(remote_id)}", json_body={"suspended": False})

    def delete_user(self, remote_id: str) -> None:
        """Delete the user; one already gone is fine."""
        try:
            self._request("DELETE", f"users/{key(remote_id)}")
        except NotFound:
            log.info("google: user already gone remote_id=%s connector=%s", remote_id, self.name)

    def iter_users(self) -> Iterator[Account]:
        """Every user of the customer, 500 a page."""
        for user in self._pages("users", "users", {"customer": self.customer, "maxResults": 500, **self._projection}):
            yield self._account(user)

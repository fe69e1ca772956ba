"""SCIM users: create, read, find, update (PATCH or PUT), activate, delete, list."""

from typing import Any, Iterator, Optional

from scim2_models import PatchOp, PatchOperation, User

from connectors.base import Account
from connectors.errors import Rejected
from connectors.scim2.mapping import from_scim, patch_body, patch_paths, set_path, to_scim
from connectors.scim2.transport import Transport, filter_eq


class Users(Transport):
    def _to_scim(self, account: Account) -> dict:
        return to_scim(account, self.extra_targets)

    def _from_scim(self, payload: dict) -> Account:
        return from_scim(payload, self.extra_targets)

    def check_user_name(self, user_name: str) -> None:
        if not user_name.strip():
            raise Rejected("userName: must not be empty", field="userName")

    def create_user(self, account: Account) -> Account:
        """Create the user in the target."""
        return self._from_scim(self._json(self._request("POST", "/Users", json_body=self._to_scim(account))))

    def get_user(self, remote_id: str) -> Account:
        return self._from_scim(self._json(self._request("GET", f"/Users/{remote_id}")))

    def find_user(self, *, external_id: Optional[str] = None, user_name: Optional[str] = None,
                  email: Optional[str] = None) -> Optional[Account]:
        """Find the user by externalId, then by userName, then (only when asked) by a single matching email."""
        if external_id:
            try:
                found = self._search("Users", filter_eq("externalId", external_id))
            except Rejected:  # some servers do not filter on externalId
                found = []
            if found:
                return self._from_scim(found[0])
        if user_name:
            found = self._search("Users", filter_eq("userName", user_name))
            # userName is case-insensitive in SCIM, so an exact match is not guaranteed.
            for item in found:
                if str(item.get("userName", "")).lower() == user_name.lower():
                    return self._from_scim(item)
        if email:
            try:
                found = self._search("Users", filter_eq("emails.value", email))
            except Rejected:  # a server that cannot filter on emails: no match by email
                found = []
            if len(found) == 1:  # an address two accounts share identifies neither
                return self._from_scim(found[0])
        return None

    def update_user(self, remote_id: str, changes: dict[str, Any], current: Account) -> Account:
        """Change only the given managed attributes (PATCH when supported, else PUT)."""
        if not changes:
            return current
        if self.patch_supported():
            response = self._request("PATCH", f"/Users/{remote_id}", json_body=patch_body(changes))
        else:
            # PUT replaces the resource: start from what the target holds so nothing else is reset.
            raw = self._json(self._request("GET", f"/Users/{remote_id}"))
            raw.pop("meta", None)
            for path, value in patch_paths(changes).items():
                set_path(raw, path, value)
            response = self._request("PUT", f"/Users/{remote_id}", json_body=raw)
        body = self._json(response)
        # 204 No Content is allowed by RFC 7644: read the result back.
        return self._from_scim(body) if body else self.get_user(remote_id)

    def disable_user(self, remote_id: str) -> None:
        self._set_active(remote_id, False)

    def enable_user(self, remote_id: str) -> None:
        self._set_active(remote_id, True)

    def _set_active(self, remote_id: str, active: bool) -> None:
        if self.patch_supported():
            op = PatchOp[User](operations=[PatchOperation[User](op="replace", path="active", value=active)])
            self._request("PATCH", f"/Users/{remote_id}", json_body=op.model_dump())
        else:
            self.update_user(remote_id, {"active": active}, self.get_user(remote_id))

    def delete_user(self, remote_id: str) -> None:
        self._request("DELETE", f"/Users/{remote_id}")

    def iter_users(self) -> Iterator[Account]:
        """Every user in the target, page by page (startIndex/count)."""
        for item in self._iter("Users"):
            yield self._from_scim(item)

"""Google groups: addresses made from local names, members added and removed in batches."""

import logging
from typing import Iterator, Optional

from connectors.base import RemoteGroup
from connectors.errors import AlreadyExists, ConnectorError, NotFound
from connectors.google.batch import Batch
from connectors.google.mapping import slugify
from connectors.google.transport import key

log = logging.getLogger("connectors.google")


class Groups(Batch):
    def group_email(self, name: str) -> str:
        """The group's address: `name` itself if it is one, else `<slugified name>@<domain>`."""
        return name.lower() if "@" in name else f"{slugify(name)}@{self.domain}"

    def _member_ids(self, group_id: str) -> frozenset[str]:
        members = self._pages(f"groups/{key(group_id)}/members", "members", {"maxResults": 200})
        return frozenset(m["id"] for m in members if m.get("id"))

    def _group(self, group: dict) -> RemoteGroup:
        return RemoteGroup(id=group["id"], name=group.get("name") or group.get("email", ""),
                           member_ids=self._member_ids(group["id"]))

    def create_group(self, name: str, member_ids: list[str], external_id: Optional[str] = None) -> RemoteGroup:
        """Create the group `<slugified name>@<connector domain, else the admin's domain>`, with members."""
        body = {"email": self.group_email(name), "name": name[:73]}
        group = self._json(self._request("POST", "groups", json_body=body))
        self.add_members(group["id"], member_ids)
        return RemoteGroup(id=group["id"], name=group.get("name", name), member_ids=frozenset(member_ids),
                           external_id=external_id)

    def get_group(self, remote_id: str) -> RemoteGroup:
        return self._group(self._json(self._request("GET", f"groups/{key(remote_id)}")))

    def find_group(self, name: str) -> Optional[RemoteGroup]:
        """The group with the address `name` maps to (see group_email), or None: Google compares
        addresses without case, as `same_group_name` does."""
        try:
            return self.get_group(self.group_email(name))
        except NotFound:
            return None

    def _member_calls(self, calls: list[tuple[str, str, Optional[dict]]], fine: type[ConnectorError]) -> None:
        """Run member calls (one request, or one batch); `fine` errors are the wanted state already."""
        if len(calls) == 1:
            method, path, body = calls[0]
            try:
                self._request(method, path, json_body=body)
            except fine:
                pass
            return
        errors = [r for r in self._batch_calls(calls) if isinstance(r, ConnectorError) and not isinstance(r, fine)]
        if errors:
            raise errors[0]

    def add_members(self, group_id: str, member_ids: list[str]) -> None:
        """Add users (by id) to the group; members already there are fine."""
        path = f"groups/{key(group_id)}/members"
        self._member_calls([("POST", path, {"id": m}) for m in member_ids], AlreadyExists)

    def remove_members(self, group_id: str, member_ids: list[str]) -> None:
        """Remove users (by id) from the group; members already gone are fine."""
        base = f"groups/{key(group_id)}/members/"
        self._member_calls([("DELETE", base + key(m), None) for m in member_ids], NotFound)

    def delete_group(self, remote_id: str) -> None:
        try:
            self._request("DELETE", f"groups/{key(remote_id)}")
        except NotFound:
            log.info("google: group already gone remote_id=%s connector=%s", remote_id, self.name)

    def iter_groups(self) -> Iterator[RemoteGroup]:
        """Every group of the customer with its members (one member listing per group)."""
        for group in self._pages("groups", "groups", {"customer": self.customer, "maxResults": 200}):
            yield self._group(group)

"""SCIM groups: create, read, find by displayName, change members, delete, list."""

import json
from typing import Iterator, Optional

from scim2_models import Group, GroupMember

from connectors.base import RemoteGroup, group_named
from connectors.scim2.mapping import PATCH_OP, group_from_scim
from connectors.scim2.transport import Transport, filter_eq


class Groups(Transport):
    def create_group(self, name: str, member_ids: list[str], external_id: Optional[str] = None) -> RemoteGroup:
        group = Group(display_name=name, external_id=external_id,
                      members=[GroupMember(value=m) for m in member_ids] or None)
        return group_from_scim(self._json(self._request("POST", "/Groups", json_body=group.model_dump())))

    def get_group(self, remote_id: str) -> RemoteGroup:
        return group_from_scim(self._json(self._request("GET", f"/Groups/{remote_id}")))

    def find_group(self, name: str) -> Optional[RemoteGroup]:
        """The group named `name` as the server compares displayName (`same_group_name`), the exact
        spelling first. Its `eq` filter should be caseless for a caseExact=false attribute (RFC 7644
        §3.4.2.2), but some servers compare exactly whatever their schema says (SCIMMY's filter uses
        ===): when the filter finds none, the listing is read. Only a create refused as a duplicate
        or whose answer was lost looks a group up, so that listing is rare."""
        case_exact = self.capabilities.group_names_case_exact
        found = [group_from_scim(item) for item in self._search("Groups", filter_eq("displayName", name), count=10)]
        group = group_named(found, name, case_exact)
        if group is None and not case_exact:
            group = group_named((group_from_scim(item) for item in self._iter("Groups")), name)
        return group

    def _members_patch(self, group_id: str, op: str, member_ids: list[str]) -> None:
        if not member_ids:
            return
        if op == "add":
            ops = [{"op": "add", "path": "members", "value": [{"value": m} for m in member_ids]}]
        else:
            ops = [{"op": "remove", "path": f"members[value eq {json.dumps(m)}]"} for m in member_ids]
        self._request("PATCH", f"/Groups/{group_id}", json_body={"schemas": [PATCH_OP], "Operations": ops})

    def add_members(self, group_id: str, member_ids: list[str]) -> None:
        self._members_patch(group_id, "add", member_ids)

    def remove_members(self, group_id: str, member_ids: list[str]) -> None:
        self._members_patch(group_id, "remove", member_ids)

    def delete_group(self, remote_id: str) -> None:
        self._request("DELETE", f"/Groups/{remote_id}")

    def iter_groups(self) -> Iterator[RemoteGroup]:
        for item in self._iter("Groups"):
            yield group_from_scim(item)

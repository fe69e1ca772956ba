"""What a Salesforce user may do, for the Salesforce sandbox: licences, roles, permission sets, logins.

Storage and rules apart from HTTP (the sandbox routes to `Access`):

- UserLicense (Id, Name, TotalLicenses, UsedLicenses): each profile belongs to one; UsedLicenses is
  the active standard users whose profile holds it. Creating or activating a user past
  TotalLicenses is refused: 400 `LICENSE_LIMIT_EXCEEDED`.
- UserRole (Id, Name): a user's UserRoleId must be one (else `INVALID_CROSS_REFERENCE_KEY`).
- PermissionSet (Id, Name, LicenseId) and PermissionSetAssignment (Id, AssigneeId,
  PermissionSetId): an assignment is unique per user and set (`DUPLICATE_VALUE`), and a set tied to
  a licence is assignable only to users whose profile has that licence (`FIELD_INTEGRITY_EXCEPTION`).
- UserLogin (Id, UserId, IsFrozen): one per user; PATCH IsFrozen freezes or unfreezes the login.
"""

import itertools
from typing import Callable

SCHEMAS = {
    "UserLicense": ("Id", "Name", "TotalLicenses", "UsedLicenses"),
    "UserRole": ("Id", "Name"),
    "PermissionSet": ("Id", "Name", "LicenseId"),
    "PermissionSetAssignment": ("Id", "AssigneeId", "PermissionSetId"),
    "UserLogin": ("Id", "UserId", "IsFrozen"),
}


class Access:
    def __init__(self, error: type, users: dict, profiles: dict, licences: dict[str, int], roles: list[str],
                 permission_sets: dict[str, str | None]):
        self._error = error
        self._users, self._profiles = users, profiles
        self._ids = itertools.count(1)
        self.tables: dict[str, dict[str, dict]] = {name: {} for name in SCHEMAS}
        for name, total in licences.items():
            self.add("UserLicense", "100", {"Name": name, "TotalLicenses": total, "UsedLicenses": 0})
        for name in roles:
            self.add("UserRole", "00E", {"Name": name})
        for name, licence in permission_sets.items():
            self.add("PermissionSet", "0PS", {"Name": name, "LicenseId": self.licence_id(licence) if licence else None})

    def add(self, table: str, prefix: str, fields: dict) -> dict:
        rid = f"{prefix}{next(self._ids):012d}BBB"
        record = {"Id": rid, **fields}
        self.tables[table][rid] = record
        return record

    def licence_id(self, name: str) -> str:
        return next(r["Id"] for r in self.tables["UserLicense"].values() if r["Name"] == name)

    def named(self, table: str, name: str) -> dict | None:
        return next((r for r in self.tables[table].values() if r["Name"] == name), None)

    def table(self, entity: str) -> dict[str, dict]:
        """A table for SOQL, with UsedLicenses counted as of now."""
        if entity == "UserLicense":
            for licence in self.tables["UserLicense"].values():
                licence["UsedLicenses"] = self._used(licence["Id"])
        return self.tables[entity]

    def _used(self, licence_id: str, besides: str | None = None) -> int:
        return sum(1 for u in self._users.values()
                   if u.get("IsActive") and u.get("UserType") == "Standard" and u["Id"] != besides
                   and (self._profiles.get(u.get("ProfileId")) or {}).get("UserLicenseId") == licence_id)

    # --- rules on User writes -----------------------------------------------------------------

    def check_user(self, fields: dict, current: dict | None) -> None:
        """Refuse a User insert/update as Salesforce would: an unknown role, no licence left."""
        role = fields.get("UserRoleId")
        if role and role not in self.tables["UserRole"]:
            raise self._error(400, "INVALID_CROSS_REFERENCE_KEY", "Role ID: id value of incorrect type", ["UserRoleId"])
        merged = {**(current or {}), **fields}
        if merged.get("IsActive") is False or (current is not None and current.get("UserType") != "Standard"):
            return
        becomes = current is None or not current.get("IsActive") or "ProfileId" in fields
        if not becomes:
            return
        licence_id = (self._profiles.get(merged.get("ProfileId")) or {}).get("UserLicenseId")
        licence = self.tables["UserLicense"].get(licence_id)
        if licence is not None and self._used(licence_id, besides=(current or {}).get("Id")) >= licence["TotalLicenses"]:
            raise self._error(400, "LICENSE_LIMIT_EXCEEDED",
                              f"License Limit Exceeded: no {licence['Name']} licence is left "
                              f"({licence['TotalLicenses']} in all)", [])

    def user_created(self, uid: str) -> None:
        self.add("UserLogin", "060", {"UserId": uid, "IsFrozen": False})

    # --- sObjects -----------------------------------------------------------------------------

    def create(self, entity: str, body: dict) -> str:
        if entity != "PermissionSetAssignment":
            raise self._error(400, "INVALID_TYPE", f"cannot create {entity} records through this sandbox")
        assignee, pset_id = body.get("AssigneeId"), body.get("PermissionSetId")
        user = self._users.get(assignee)
        if user is None:
            raise self._error(400, "INVALID_CROSS_REFERENCE_KEY", "Assignee ID: id value of incorrect type",
                              ["AssigneeId"])
        pset = self.tables["PermissionSet"].get(pset_id)
        if pset is None:
            raise self._error(400, "INVALID_CROSS_REFERENCE_KEY", "Permission Set ID: id value of incorrect type",
                              ["PermissionSetId"])
        if any(a["AssigneeId"] == assignee and a["PermissionSetId"] == pset_id
               for a in self.tables["PermissionSetAssignment"].values()):
            raise self._error(400, "DUPLICATE_VALUE", "duplicate value found: PermissionSetId duplicates value on "
                                                      "record with id: " + pset_id, ["PermissionSetId"])
        profile_licence = (self._profiles.get(user.get("ProfileId")) or {}).get("UserLicenseId")
        if pset["LicenseId"] and pset["LicenseId"] != profile_licence:
            raise self._error(400, "FIELD_INTEGRITY_EXCEPTION",
                              f"The user license doesn't match the user license of the permission set "
                              f"{pset['Name']}: {pset['Name']}", ["PermissionSetId"])
        return self.add("PermissionSetAssignment", "0Pa", {"AssigneeId": assignee, "PermissionSetId": pset_id})["Id"]

    def update(self, entity: str, rid: str, body: dict) -> None:
        if entity != "UserLogin":
            raise self._error(400, "INVALID_TYPE", f"cannot update {entity} records through this sandbox")
        record = self.tables["UserLogin"].get(rid)
        if record is None:
            raise self._error(404, "NOT_FOUND", "The requested resource does not exist")
        if set(body) - {"IsFrozen", "attributes"} or not isinstance(body.get("IsFrozen"), bool):
            raise self._error(400, "INVALID_FIELD_FOR_INSERT_UPDATE", "Only IsFrozen can be updated on UserLogin",
                              ["IsFrozen"])
        record["IsFrozen"] = body["IsFrozen"]

    def delete(self, entity: str, rid: str) -> None:
        if entity != "PermissionSetAssignment":
            raise self._error(405, "METHOD_NOT_ALLOWED", f"HTTP Method 'DELETE' not allowed on {entity}")
        if self.tables[entity].pop(rid, None) is None:
            raise self._error(404, "ENTITY_IS_DELETED", "entity is deleted")

    def assigned(self, uid: str) -> set[str]:
        """The names of the permission sets assigned to user `uid` (for tests)."""
        sets = self.tables["PermissionSet"]
        return {sets[a["PermissionSetId"]]["Name"] for a in self.tables["PermissionSetAssignment"].values()
                if a["AssigneeId"] == uid}

    def frozen(self, uid: str) -> bool:
        return any(r["IsFrozen"] for r in self.tables["UserLogin"].values() if r["UserId"] == uid)


def route(access: Access, method: str, rest: str, body_of: Callable[[], dict]):
    """(status, JSON) for /sobjects/<Entity>[/<id>] of the entities above, else None."""
    import re

    match = re.fullmatch(r"/sobjects/(PermissionSetAssignment|UserLogin|PermissionSet|UserRole|UserLicense)"
                         r"(?:/([A-Za-z0-9]{15,18}))?", rest)
    if not match:
        return None
    entity, rid = match.groups()
    if rid is None and method == "POST":
        return 201, {"id": access.create(entity, body_of()), "success": True, "errors": []}
    if rid and method == "PATCH":
        access.update(entity, rid, body_of())
        return 204, None
    if rid and method == "DELETE":
        access.delete(entity, rid)
        return 204, None
    if rid and method == "GET":
        record = access.table(entity).get(rid)
        if record is None:
            raise access._error(404, "NOT_FOUND", "The requested resource does not exist")
        return 200, dict(record)
    return None

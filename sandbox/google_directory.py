"""The Google sandbox's directory apart from HTTP: users, aliases, groups and members with Google's rules
for them (listed in `sandbox.google`), and the user search syntax. The caller holds the lock.
"""

import hashlib
import json
import random
import secrets
from datetime import datetime, timezone
from typing import Any

from sandbox.google_errors import ApiError, not_found
from sandbox.google_workspace import OrgUnits
from sandbox.paging import page


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z")


def _merge(target: dict, patch: dict) -> None:
    """Patch semantics: nested objects merge, arrays and scalars replace, null clears."""
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        elif isinstance(value, dict) and isinstance(target.get(key), dict):
            _merge(target[key], value)
        else:
            target[key] = value


def parse_query(query: str) -> list[tuple[str, str]]:
    """Google's user search syntax: `field:value` terms; values may be 'single-quoted' with \\ escapes."""
    terms, i, n = [], 0, len(query)
    while i < n:
        while i < n and query[i] == " ":
            i += 1
        if i >= n:
            break
        start = i
        while i < n and query[i] not in ":=":
            i += 1
        if i >= n:
            raise ApiError(400, "Invalid Input: query", location="query")
        field = query[start:i].strip()
        i += 1
        value = []
        if i < n and query[i] == "'":
            i += 1
            while True:
                if i >= n:
                    raise ApiError(400, "Invalid Input: query", location="query")
                ch = query[i]
                if ch == "\\" and i + 1 < n:
                    value.append(query[i + 1])
                    i += 2
                elif ch == "'":
                    i += 1
                    break
                else:
                    value.append(ch)
                    i += 1
        else:
            while i < n and query[i] != " ":
                value.append(query[i])
                i += 1
        terms.append((field, "".join(value)))
    return terms


class Directory:
    """The customer's users, aliases, groups and members."""

    def __init__(self, domains: list[str], customer_id: str, org_units: OrgUnits, rng: random.Random):
        self.domains, self.customer_id, self.org_units, self.random = domains, customer_id, org_units, rng
        self.users: dict[str, dict] = {}
        self.user_ids: dict[str, str] = {}   # lower-cased primaryEmail -> id
        self.groups: dict[str, dict] = {}
        self.group_ids: dict[str, str] = {}  # lower-cased email -> id
        self.alias_ids: dict[str, str] = {}  # lower-cased user alias -> user id
        self.members: dict[str, dict[str, dict]] = {}  # group id -> member id -> member
        # Creates refused because the address was taken: where nothing refused them, each would be a
        # second account (the lost-answer tests count them).
        self.duplicate_creates = 0

    # --- users ----------------------------------------------------------------------------

    def user(self, key: str) -> dict:
        user = self.user_or_none(key)
        if user is None:
            raise not_found("userKey")
        return user

    def user_or_none(self, key: str) -> dict | None:
        uid = key if key in self.users else self.user_ids.get(key.lower()) or self.alias_ids.get(key.lower())
        return self.users.get(uid) if uid else None

    def public_user(self, user: dict, full: bool = True) -> dict:
        """The user as the API shows it; custom schema values only in the full projection (as Google)."""
        hidden = ("password", "hashFunction") if full else ("password", "hashFunction", "customSchemas")
        out = {k: v for k, v in user.items() if k not in hidden}
        out["name"] = dict(user.get("name") or {})
        out["name"]["fullName"] = f"{out['name'].get('givenName', '')} {out['name'].get('familyName', '')}".strip()
        return out

    def _check_email(self, email: Any, what: str = "primary_user_email") -> str:
        if not isinstance(email, str) or email.count("@") != 1 or not email.split("@")[0]:
            raise ApiError(400, f"Invalid Input: {what}")
        local, domain = email.lower().split("@")
        if domain not in self.domains:
            raise ApiError(400, "Domain not found.", reason="notFound")
        if len(local) > 64 or ".." in local or local.startswith(".") or local.endswith("."):
            raise ApiError(400, f"Invalid Input: {what}")
        return f"{local}@{domain}"

    def _check_user_fields(self, user: dict, creating: bool) -> None:
        name = user.get("name")
        if creating or "name" in user:
            if not isinstance(name, dict):
                raise ApiError(400, "Invalid Given/Family Name: GivenName")
            for field, label in (("givenName", "GivenName"), ("familyName", "FamilyName")):
                value = name.get(field)
                if not isinstance(value, str) or not value.strip() or len(value) > 60 or set(value) & set("<>="):
                    raise ApiError(400, f"Invalid Given/Family Name: {label}")
        for key in ("organizations", "phones", "relations"):
            if key in user and not (isinstance(user[key], list) and all(isinstance(e, dict) for e in user[key])):
                raise ApiError(400, f"Invalid Input: {key}")
        if "customSchemas" in user and not (isinstance(user["customSchemas"], dict) and all(
                isinstance(v, dict) for v in user["customSchemas"].values())):
            raise ApiError(400, "Invalid Input: customSchemas")
        if creating or "password" in user:
            password = user.get("password")
            if not isinstance(password, str) or (not user.get("hashFunction") and (
                    not 8 <= len(password) <= 100 or not password.isascii())):
                raise ApiError(400, "Invalid Password")

    def insert_user(self, body: dict) -> dict:
        user = json.loads(json.dumps(body))
        for readonly in ("id", "aliases", "nonEditableAliases"):
            user.pop(readonly, None)
        user["primaryEmail"] = self._check_email(user.get("primaryEmail"))
        self._check_user_fields(user, creating=True)
        self.org_units.check_user(user)
        if self._taken(user["primaryEmail"]):
            self.duplicate_creates += 1
            raise ApiError(409, "Entity already exists.", reason="duplicate")
        uid = str(100000000000000000000 + self.random.randrange(10 ** 20))
        # Only a digest is kept: a sandbox has no business holding plaintext passwords either.
        user["password"] = hashlib.sha256(user["password"].encode()).hexdigest()
        user.update(kind="admin#directory#user", id=uid, etag=f'"{secrets.token_hex(8)}"',
                    customerId=self.customer_id, creationTime=_now(), isAdmin=False,
                    suspended=bool(user.get("suspended", False)), orgUnitPath=user.get("orgUnitPath", "/"),
                    emails=[{"address": user["primaryEmail"], "primary": True}])
        self.users[uid] = user
        self.user_ids[user["primaryEmail"]] = uid
        return self.public_user(user)

    def update_user(self, key: str, body: dict) -> dict:
        user = self.user(key)
        patch = json.loads(json.dumps(body))
        for readonly in ("id", "kind", "etag", "customerId", "creationTime", "isAdmin", "aliases", "nonEditableAliases"):
            patch.pop(readonly, None)
        if isinstance(patch.get("name"), dict):
            patch["name"].pop("fullName", None)
            merged = dict(user.get("name") or {})
            _merge(merged, patch["name"])
            self._check_user_fields({"name": merged}, creating=False)
        self._check_user_fields({k: patch[k] for k in ("organizations", "phones", "relations", "customSchemas")
                                 if k in patch}, creating=False)
        self.org_units.check_user(patch)
        if "password" in patch:
            self._check_user_fields({"password": patch["password"], "hashFunction": patch.get("hashFunction")},
                                    creating=False)
            patch["password"] = hashlib.sha256(str(patch["password"]).encode()).hexdigest()
        if "primaryEmail" in patch:
            email = self._check_email(patch["primaryEmail"])
            if email != user["primaryEmail"]:
                if self._taken(email):
                    raise ApiError(409, "Entity already exists.", reason="duplicate")
                del self.user_ids[user["primaryEmail"]]
                self.user_ids[email] = user["id"]
            patch["primaryEmail"] = email
        _merge(user, patch)
        user["etag"] = f'"{secrets.token_hex(8)}"'
        return self.public_user(user)

    def delete_user(self, key: str) -> str:
        """Delete the user; return its id."""
        user = self.user(key)
        del self.users[user["id"]]
        del self.user_ids[user["primaryEmail"]]
        for alias in user.get("aliases") or []:
            self.alias_ids.pop(alias, None)
        for members in self.members.values():
            members.pop(user["id"], None)
        return user["id"]

    def _taken(self, email: str) -> bool:
        """Whether a user's or group's address or a user's alias is `email` (lower-cased)."""
        return email in self.user_ids or email in self.group_ids or email in self.alias_ids

    def _alias(self, user: dict, alias: str) -> dict:
        return {"kind": "admin#directory#alias", "id": user["id"], "etag": f'"{secrets.token_hex(8)}"',
                "primaryEmail": user["primaryEmail"], "alias": alias}

    def list_aliases(self, key: str) -> dict:
        user = self.user(key)
        return {"kind": "admin#directory#aliases", "etag": f'"{secrets.token_hex(8)}"',
                "aliases": [self._alias(user, a) for a in user.get("aliases") or []]}

    def insert_alias(self, key: str, body: dict) -> dict:
        user = self.user(key)
        alias = self._check_email(body.get("alias"), what="alias")
        if self._taken(alias):
            raise ApiError(409, "Entity already exists.", reason="duplicate")
        user.setdefault("aliases", []).append(alias)
        self.alias_ids[alias] = user["id"]
        user["etag"] = f'"{secrets.token_hex(8)}"'
        return self._alias(user, alias)

    def delete_alias(self, key: str, alias: str) -> None:
        user = self.user(key)
        alias = alias.lower()
        if alias not in (user.get("aliases") or []):
            raise not_found("alias")
        user["aliases"].remove(alias)
        if not user["aliases"]:
            del user["aliases"]  # Google leaves the field out when there is none
        del self.alias_ids[alias]
        user["etag"] = f'"{secrets.token_hex(8)}"'

    def _matches(self, user: dict, terms: list[tuple[str, str]]) -> bool:
        for field, value in terms:
            if field == "externalId":
                if not any(e.get("value") == value for e in user.get("externalIds") or []):
                    return False
            elif field == "email":
                if user["primaryEmail"] != value.lower():
                    return False
            elif field == "isSuspended":
                if bool(user.get("suspended")) != (value.lower() == "true"):
                    return False
            elif field in ("givenName", "familyName"):
                if (user.get("name") or {}).get(field, "").lower() != value.lower():
                    return False
            else:
                raise ApiError(400, "Invalid Input: query", location="query")
        return True

    def _scope_filter(self, params: dict) -> str | None:
        """The domain a list is limited to (None: the whole customer)."""
        customer, domain = params.get("customer"), params.get("domain")
        if not customer and not domain:
            raise ApiError(400, "Bad Request", reason="badRequest")
        if customer and customer not in ("my_customer", self.customer_id):
            raise ApiError(400, "Bad Request", reason="badRequest")
        if domain and domain.lower() not in self.domains:
            raise ApiError(400, "Domain not found.", reason="notFound")
        return domain.lower() if domain else None

    def list_users(self, params: dict) -> dict:
        domain = self._scope_filter(params)
        terms = parse_query(params["query"]) if params.get("query") else []
        users = [u for u in self.users.values()
                 if (domain is None or u["primaryEmail"].endswith("@" + domain)) and self._matches(u, terms)]
        return _listing("users", users, params, 500, 100, lambda u: self.public_user(u, full_projection(params)))

    # --- groups and members ---------------------------------------------------------------

    def group(self, key: str) -> dict:
        gid = key if key in self.groups else self.group_ids.get(key.lower())
        if gid is None:
            raise not_found("groupKey")
        return self.groups[gid]

    def insert_group(self, body: dict) -> dict:
        email = self._check_email(body.get("email"), what="email")
        if self._taken(email):
            raise ApiError(409, "Entity already exists.", reason="duplicate")
        name = body.get("name") or email.split("@")[0]
        if len(name) > 73 or set(name) & set("<>="):
            raise ApiError(400, "Invalid Input: name")
        gid = "0" + secrets.token_hex(7)
        group = {"kind": "admin#directory#group", "id": gid, "etag": f'"{secrets.token_hex(8)}"', "email": email,
                 "name": name, "description": body.get("description", ""), "directMembersCount": "0",
                 "adminCreated": True, "nonEditableAliases": []}
        self.groups[gid] = group
        self.group_ids[email] = gid
        self.members[gid] = {}
        return dict(group)

    def update_group(self, key: str, body: dict) -> dict:
        group = self.group(key)
        for field in ("name", "description"):
            if field in body:
                group[field] = body[field]
        return dict(group)

    def delete_group(self, key: str) -> None:
        group = self.group(key)
        del self.groups[group["id"]], self.group_ids[group["email"]], self.members[group["id"]]

    def list_groups(self, params: dict) -> dict:
        domain = self._scope_filter(params)
        groups = [g for g in self.groups.values() if domain is None or g["email"].endswith("@" + domain)]
        return _listing("groups", groups, params, 200, 200, dict)

    def member(self, gid: str, key: str) -> dict:
        members = self.members[gid]
        if key in members:
            return members[key]
        for member in members.values():
            if member["email"] == key.lower():
                return member
        raise not_found("memberKey")

    def insert_member(self, group_key: str, body: dict) -> dict:
        group = self.group(group_key)
        key = body.get("id") or body.get("email")
        if not key:
            raise ApiError(400, "Missing required field: member", reason="required")
        if key in self.users or str(key).lower() in self.user_ids:
            target, kind = self.user(key), "USER"
            email = target["primaryEmail"]
        elif key in self.groups or str(key).lower() in self.group_ids:
            target, kind = self.group(key), "GROUP"
            email = target["email"]
        else:
            raise not_found("memberKey")
        members = self.members[group["id"]]
        if target["id"] in members:
            raise ApiError(409, "Member already exists.", reason="duplicate")
        member = {"kind": "admin#directory#member", "id": target["id"], "email": email,
                  "role": body.get("role", "MEMBER"), "type": kind, "status": "ACTIVE",
                  "etag": f'"{secrets.token_hex(8)}"'}
        members[target["id"]] = member
        group["directMembersCount"] = str(len(members))
        return dict(member)

    def delete_member(self, group_key: str, key: str) -> None:
        group = self.group(group_key)
        self.members[group["id"]].pop(self.member(group["id"], key)["id"])
        group["directMembersCount"] = str(len(self.members[group["id"]]))

    def list_members(self, group_key: str, params: dict) -> dict:
        group = self.group(group_key)
        return _listing("members", list(self.members[group["id"]].values()), params, 200, 200, dict)


def _listing(key: str, items: list, params: dict, limit: int, default: int, render) -> dict:
    """One page of a Directory API list: `key` holds the items (left out when none), then nextPageToken."""
    items, token = page(items, params, limit, default, ApiError)
    out = {"kind": f"admin#directory#{key}", "etag": f'"{secrets.token_hex(8)}"'}
    if items:
        out[key] = [render(item) for item in items]
    if token:
        out["nextPageToken"] = token
    return out


def full_projection(params: dict) -> bool:
    """Whether a users.get/list asks for the full projection (custom schemas included)."""
    return params.get("projection") in ("full", "custom")


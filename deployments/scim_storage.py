"""The identity store as a SCIM 2.0 resource store: Users and Groups read from it, writes turned into
outbox events.

scim2-server does the protocol (parsing, filters, PATCH, PUT, errors, discovery); this storage
answers its reads from the identity store and turns each write into identity events (trigger
`scim`), stored through `models.ingest` in one transaction with whatever the events cannot
say, before the request is answered. The SCIM id of a user is the local user id; of a group, the
local group id. The store keeps a user's own fields (username, email, names, active, roles,
groups) in its columns, `externalId` and the simple strings as attributes `scim.<name>` (for
attribute maps), and the rest of the resource as written (`scim.resource`, without the password).

What a write becomes:
  POST /Users                         user.created
  PUT/PATCH /Users/{id}               user.disabled / user.enabled when only `active` changed,
                                      user.roles_changed when only the roles did, else user.updated
  DELETE /Users/{id}                  user.deleted
  POST/PUT/PATCH/DELETE /Groups       user.updated for each member who joined or left (and each
                                      member of a renamed group), with their groups and roles
"""

import hashlib
import json
import logging
import uuid
from typing import Any, Callable, Optional

from scim2_models import (InvalidValueException, NotFoundException, NotImplementedException,
                          PreconditionFailedException, Resource, ResourceType, ResponseParameters, SearchRequest,
                          UniquenessException)
from scim2_models.path import CompareOperator, Comparison
from scim2_server.storage import ScimStorage, SearchPage
from sqlalchemy.exc import IntegrityError

from models.ingest import Accepted, accept_all
from models.config import Config
from models.db import session_scope
from models.identity import ensure_group
from models.scim_directory import (all_groups, delete_group, group_by_id, group_count, groups_named, live_members,
                                   live_user, live_user_count, live_users, memberships, rename_group, users_named)
from models.tables import Group, User
from models.validation import InvalidInput

log = logging.getLogger("outbound.scim")

TRIGGER = "scim"
PRIMARY = "PRIMARY"
USER_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:User"
GROUP_SCHEMA = "urn:ietf:params:scim:schemas:core:2.0:Group"
EXTERNAL_ID = "scim.externalId"
RESOURCE = "scim.resource"  # the User as last written (JSON), less what NOT_KEPT names
NOT_KEPT = ("id", "meta", "password", "groups")  # ours, never stored (a secret), or the store's
ENTERPRISE = "urn:ietf:params:scim:schemas:extension:enterprise:2.0:User"
# Single-valued SCIM strings also kept as attributes `scim.<name>`, for attribute maps to targets.
KEPT = ("nickName", "title", "userType", "preferredLanguage", "locale", "timezone", "profileUrl")
ENTERPRISE_KEPT = ("employeeNumber", "costCenter", "organization", "division", "department")
PROFILE = ("email", "given_name", "family_name", "display_name")

Dispatch = Callable[[str, str, str], object]


# --- store rows -> SCIM resources ------------------------------------------------------------

def _version(*parts: Any) -> str:
    return 'W/"' + hashlib.sha256(repr(parts).encode()).hexdigest()[:20] + '"'


def scim_user_name(user: User) -> str:
    return user.username if user.user_store == PRIMARY else f"{user.user_store}/{user.username}"


def split_user_name(user_name: str) -> tuple[str, str]:
    """(user store, username) of a SCIM userName; `STORE/name` names a secondary store as in WSO2."""
    store, slash, name = user_name.partition("/")
    return (store.upper(), name) if slash and store and name else (PRIMARY, user_name)


def user_document(user: User, roles: list[str], groups: list[tuple[str, str]]) -> dict:
    """The SCIM User: what the pusher last wrote (kept as `scim.resource`), with the store's own
    fields over it, so a change from another source shows too."""
    attrs = user.attributes or {}
    doc: dict[str, Any] = json.loads(attrs[RESOURCE]) if isinstance(attrs.get(RESOURCE), str) else {}
    doc.setdefault("schemas", [USER_SCHEMA])
    doc.update(id=user.id, userName=scim_user_name(user), active=user.active)
    _put(doc, "externalId", attrs.get(EXTERNAL_ID))
    _put(doc, "displayName", user.display_name)
    name = {**(doc.get("name") or {})}
    _put(name, "givenName", user.given_name)
    _put(name, "familyName", user.family_name)
    _put(doc, "name", name or None)
    emails = [dict(e) for e in doc.get("emails") or [] if isinstance(e, dict)]
    primary = next((e for e in emails if e.get("primary")), emails[0] if emails else None)
    if user.email is None and primary is not None:
        emails.remove(primary)
    elif user.email is not None and primary is None:
        emails.insert(0, {"value": user.email, "primary": True, "type": "work"})
    elif user.email is not None:
        primary["value"] = user.email
    _put(doc, "emails", emails or None)
    detail = {r.get("value"): r for r in doc.get("roles") or [] if isinstance(r, dict)}
    _put(doc, "roles", [detail.get(r, {"value": r}) for r in roles] or None)
    _put(doc, "groups", [{"value": gid, "display": name, "$ref": f"Groups/{gid}"} for gid, name in groups] or None)
    doc["meta"] = {"resourceType": "User", "created": user.created_at.isoformat(),
                   "lastModified": user.updated_at.isoformat(),
                   "version": _version(user.updated_at.isoformat(), user.active, roles, groups)}
    return doc


def _put(doc: dict, key: str, value) -> None:
    if value is None:
        doc.pop(key, None)
    else:
        doc[key] = value


def group_document(group: Group, members: list[User]) -> dict:
    doc: dict[str, Any] = {"schemas": [GROUP_SCHEMA], "id": group.id, "displayName": group.name}
    if members:
        doc["members"] = [{"value": u.id, "display": scim_user_name(u), "type": "User", "$ref": f"Users/{u.id}"}
                          for u in members]
    doc["meta"] = {"resourceType": "Group", "version": _version(group.name, [u.id for u in members])}
    return doc


# --- SCIM resources -> event data ------------------------------------------------------------

def _values(items) -> list[str]:
    return [str(i.value) for i in (items or []) if getattr(i, "value", None) not in (None, "")]


def user_fields(resource, roles_from: list[str]) -> dict:
    """The event's `user` for a SCIM User (the store's fields; None where SCIM has no value)."""
    store, username = split_user_name(resource.user_name or "")
    emails = resource.emails or []
    primary = next((e for e in emails if e.primary), emails[0] if emails else None)
    name = resource.name
    fields: dict[str, Any] = {
        "username": username, "user_store": store,
        "email": primary.value if primary is not None and primary.value else None,
        "given_name": name.given_name if name else None, "family_name": name.family_name if name else None,
        "display_name": resource.display_name,
        "active": True if resource.active is None else bool(resource.active),
    }
    roles = []
    if "roles" in roles_from:
        roles += _values(resource.roles)
    if "entitlements" in roles_from:
        roles += _values(resource.entitlements)
    for key in PROFILE:  # an empty string is no value (Okta sends "middleName": "")
        if isinstance(fields[key], str) and not fields[key].strip():
            fields[key] = None
    fields["roles"] = sorted(set(roles)) if roles_from else None  # no role source: roles are not SCIM's to set
    doc = resource.model_dump(mode="json", exclude_none=True)
    for key in NOT_KEPT:
        doc.pop(key, None)
    attrs = {EXTERNAL_ID: resource.external_id, RESOURCE: json.dumps(doc, separators=(",", ":"), sort_keys=True)}
    for key in KEPT:
        attrs[f"scim.{key}"] = _scalar(doc.get(key))
    enterprise = doc.get(ENTERPRISE) or {}
    for key in ENTERPRISE_KEPT:
        attrs[f"scim.{key}"] = _scalar(enterprise.get(key))
    attrs["scim.manager"] = _scalar((enterprise.get("manager") or {}).get("value"))
    fields["attributes"] = attrs
    return fields


def _beyond_columns(attrs: dict, roles_from: list[str]) -> dict:
    """The attributes less what the store's columns already say (`active`, the roles), so that a
    change of `active` alone stays a user.disabled/enabled and of roles alone a user.roles_changed."""
    out = dict(attrs)
    if isinstance(out.get(RESOURCE), str):
        doc = json.loads(out[RESOURCE])
        for key in ("active", *(k for k in ("roles", "entitlements") if k in roles_from)):
            doc.pop(key, None)
        out[RESOURCE] = doc
    return out


def _scalar(value) -> Optional[str]:
    return None if value is None or isinstance(value, (dict, list)) else str(value)


def _event(type_: str, user: dict) -> dict:
    return {"id": f"scim-{uuid.uuid4().hex}", "type": type_, "trigger": TRIGGER,
            "user": {k: v for k, v in user.items() if v is not None}}


def _invalid(exc: InvalidInput) -> InvalidValueException:
    return InvalidValueException(detail="; ".join(exc.problems))


class StoreStorage(ScimStorage):
    """Users and Groups of the identity store, for scim2-server's ScimHandler."""

    def __init__(self, config: Config, models: dict[str, type], dispatch: Optional[Dispatch] = None):
        self.config = config
        self.models = models  # resource type name -> the provider's model (with its extensions)
        self.tenant = config.tenant_domain
        self.roles_from = list(config.api.scim_roles_from) if config.api else ["groups", "roles"]
        self.dispatch = dispatch  # set once the API knows its dispatcher; None: the sweeper starts them

    # --- reads

    def _model(self, resource_type: ResourceType):
        return self.models[resource_type.name]

    def _users(self, session, users: list[User]) -> list[dict]:
        roles, groups = memberships(session, [u.id for u in users])
        return [user_document(u, roles.get(u.id, []), groups.get(u.id, [])) for u in users]

    def _groups(self, session, groups: list[Group]) -> list[dict]:
        members = live_members(session, [g.id for g in groups])
        return [group_document(g, members.get(g.id, [])) for g in groups]

    def _document(self, session, resource_type: ResourceType, resource_id: str) -> dict:
        if resource_type.name == "User":
            user = live_user(session, self.tenant, resource_id)
            if user is not None:
                return self._users(session, [user])[0]
        else:
            group = group_by_id(session, resource_id)
            if group is not None:
                return self._groups(session, [group])[0]
        raise NotFoundException(detail=f"{resource_type.name} {resource_id!r} not found")

    def get(self, resource_type: ResourceType, resource_id: str, *,
            response_parameters: Optional[ResponseParameters] = None) -> Resource:
        with session_scope() as session:
            doc = self._document(session, resource_type, resource_id)
        return self._model(resource_type).model_validate(doc)

    def search(self, resource_types: list[ResourceType], search_request: SearchRequest, *,
               position: Any = None) -> SearchPage:
        if len(resource_types) != 1:
            raise NotImplementedException(detail="search one resource type at a time (/Users or /Groups)")
        resource_type = resource_types[0]
        model = self._model(resource_type)
        start = search_request.start_index_0 or 0
        count = search_request.count
        scim_filter = search_request.filter
        with session_scope() as session:
            if scim_filter is None:  # a page straight from the store
                if resource_type.name == "User":
                    total = live_user_count(session, self.tenant)
                    docs = self._users(session, live_users(session, self.tenant, start, count)) if count != 0 else []
                else:
                    total = group_count(session)
                    docs = self._groups(session, all_groups(session, start, count)) if count != 0 else []
                return SearchPage(total=total, resources=[model.model_validate(d) for d in docs])
            docs, exact = self._candidates(session, resource_type, scim_filter)
        found = [r for r in (model.model_validate(d) for d in docs) if exact or scim_filter.match(r)]
        stop = None if count is None else start + count
        return SearchPage(total=len(found), resources=found[start:stop])

    def _candidates(self, session, resource_type: ResourceType, scim_filter) -> tuple[list[dict], bool]:
        """Documents the filter may match, and whether they are exactly its matches: those a lone `eq` on
        userName (`PRIMARY/john` is john) or displayName names, from an index; else every one."""
        node = scim_filter.ast
        if isinstance(node, Comparison) and node.op == CompareOperator.eq and isinstance(node.value, str):
            attr = str(node.attr_path).rsplit(":", 1)[-1]
            if resource_type.name == "User" and attr.lower() == "username":
                return self._users(session, users_named(session, self.tenant, *split_user_name(node.value))), True
            if resource_type.name == "Group" and attr.lower() == "displayname":
                return self._groups(session, groups_named(session, node.value)), True
        if resource_type.name == "User":
            return self._users(session, live_users(session, self.tenant)), False
        return self._groups(session, all_groups(session)), False

    # --- writes

    def _accept(self, events: list[dict], prepare=None) -> list[Accepted]:
        try:
            accepted = accept_all(events, self.config, before=prepare)
        except InvalidInput as exc:
            raise _invalid(exc) from None
        except IntegrityError:  # a concurrent request took the userName or displayName first
            raise UniquenessException(detail="the userName or displayName was taken meanwhile") from None
        if self.dispatch is not None:
            for raw, done in zip(events, accepted):
                try:
                    self.dispatch(done.event_id, raw["type"], TRIGGER)
                except Exception as exc:  # stored already: the sweeper re-dispatches it
                    log.warning("event=%s stored; dispatch failed (%s: %s); sweep-events will retry",
                                done.event_id, type(exc).__name__, exc)
        return accepted

    def create(self, resource_type: ResourceType, resource: Resource) -> Resource:
        if resource_type.name == "User":
            return self._create_user(resource_type, resource)
        return self._create_group(resource_type, resource)

    def update(self, resource_type: ResourceType, resource: Resource, *,
               expected_version: Optional[str] = None) -> Resource:
        if resource_type.name == "User":
            return self._update_user(resource_type, resource, expected_version)
        return self._update_group(resource_type, resource, expected_version)

    def delete(self, resource_type: ResourceType, resource_id: str, *, expected_version: Optional[str] = None) -> None:
        if resource_type.name == "User":
            self._delete_user(resource_type, resource_id, expected_version)
        else:
            self._update_group(resource_type, None, expected_version, resource_id)

    def _check_version(self, session, resource_type, resource_id, expected: Optional[str]) -> dict:
        doc = self._document(session, resource_type, resource_id)
        if expected is not None and doc["meta"]["version"] != expected:
            raise PreconditionFailedException(detail=f"{resource_type.name} {resource_id!r} changed meanwhile")
        return doc

    # users

    def _taken(self, session, store: str, username: str, other_than: Optional[str] = None) -> None:
        if any(u.id != other_than for u in users_named(session, self.tenant, store, username)):
            raise UniquenessException(detail=f"userName {username if store == PRIMARY else store + '/' + username!r} "
                                             f"is taken")

    def _create_user(self, resource_type, resource) -> Resource:
        fields = user_fields(resource, self.roles_from)
        accepted = self._accept([_event("user.created", fields)],
                                prepare=lambda session: self._taken(session, fields["user_store"], fields["username"]))
        return self.get(resource_type, accepted[0].user_id)

    def _update_user(self, resource_type, resource, expected_version) -> Resource:
        fields = user_fields(resource, self.roles_from)
        with session_scope() as session:
            current = self._check_version(session, resource_type, resource.id, expected_version)
            user = live_user(session, self.tenant, resource.id)
            renamed = (fields["user_store"], fields["username"].lower()) != (user.user_store, user.username.lower())
            if renamed:  # Entra ID replaces userName when the UPN changes: the user keeps its id
                self._taken(session, fields["user_store"], fields["username"], other_than=user.id)
                problem = self.config.username_rule(fields["user_store"]).problem(
                    "userName", fields["username"], fields["user_store"])
                if problem:
                    raise InvalidValueException(detail=problem)
            else:
                fields["username"] = user.username  # the stored spelling
            if "groups" in self.roles_from and fields["roles"] is not None:  # group-given roles stay with the membership
                _, groups = memberships(session, [user.id])
                fields["roles"] = sorted(set(fields["roles"]) | {n for _, n in groups.get(user.id, [])})
            before = {"email": user.email, "given_name": user.given_name, "family_name": user.family_name,
                      "display_name": user.display_name, "active": user.active,
                      "roles": sorted(r["value"] for r in current.get("roles", [])),
                      "attributes": {k: (user.attributes or {}).get(k) for k in fields["attributes"]}}
        if fields["roles"] is None:
            del before["roles"]
        changed = {k for k in before if k != "attributes" and before[k] != fields[k]}
        if renamed:
            changed.add("userName")
        if _beyond_columns(before["attributes"], self.roles_from) != _beyond_columns(fields["attributes"],
                                                                                   self.roles_from):
            changed.add("attributes")
        if not changed:
            return self.get(resource_type, resource.id)
        cleared = [k for k in PROFILE if before[k] is not None and fields[k] is None]
        gone = [k for k, v in fields["attributes"].items() if v is None and before["attributes"].get(k) is not None]
        key = {"username": fields["username"], "user_store": fields["user_store"]}
        if changed == {"active"}:
            event = _event("user.enabled" if fields["active"] else "user.disabled", key)
        elif changed == {"roles"}:
            event = _event("user.roles_changed", {**key, "roles": fields["roles"]})
        else:
            event = _event("user.updated", {**fields, "attributes": {k: v for k, v in fields["attributes"].items()
                                                                     if v is not None} or None})

        kept = fields["attributes"][RESOURCE]
        stale = event["type"] != "user.updated" and before["attributes"].get(RESOURCE) != kept

        def clear(session):  # what an event cannot say: a value removed, a user renamed, the kept resource
            row = live_user(session, self.tenant, resource.id)
            if stale:  # e.g. the roles' display and type beside a user.roles_changed
                row.attributes = {**row.attributes, RESOURCE: kept}
            if renamed:
                self._taken(session, fields["user_store"], fields["username"], other_than=row.id)
                row.username, row.user_store = fields["username"], fields["user_store"]
            for name in cleared:
                setattr(row, name, None)
            if gone:
                row.attributes = {k: v for k, v in row.attributes.items() if k not in gone}
            # `row` is the session's own (live_user read it): its changes go with the transaction.

        self._accept([event], prepare=clear if cleared or gone or renamed or stale else None)
        return self.get(resource_type, resource.id)

    def _delete_user(self, resource_type, resource_id, expected_version) -> None:
        with session_scope() as session:
            self._check_version(session, resource_type, resource_id, expected_version)
            user = live_user(session, self.tenant, resource_id)
            key = {"username": user.username, "user_store": user.user_store}
        self._accept([_event("user.deleted", key)])

    # groups

    def _member_users(self, session, resource) -> list[User]:
        users, unknown = [], []
        for member in resource.members or []:
            user = live_user(session, self.tenant, str(member.value)) if member.value else None
            (users.append(user) if user is not None else unknown.append(str(member.value)))
        if unknown:
            raise InvalidValueException(detail=f"members: no user with id {', '.join(map(repr, unknown[:5]))}")
        return users

    def _membership_events(self, session, users: list[User], old: Optional[str], new: Optional[str],
                           joined: set[str]) -> list[dict]:
        """user.updated for each of `users`: group `old` left, group `new` joined by those in `joined`."""
        roles, groups = memberships(session, [u.id for u in users])
        events = []
        for user in users:
            names = {n for _, n in groups.get(user.id, [])} - {old}
            held = set(roles.get(user.id, [])) - {old}
            if new is not None and user.id in joined:
                names.add(new)
                held.add(new)
            data: dict[str, Any] = {"username": user.username, "user_store": user.user_store,
                                    "groups": sorted(names)}
            if "groups" in self.roles_from:
                data["roles"] = sorted(held)
            events.append(_event("user.updated", data))
        return events

    def _create_group(self, resource_type, resource) -> Resource:
        name = resource.display_name
        with session_scope() as session:
            if groups_named(session, name):
                raise UniquenessException(detail=f"displayName {name!r} is taken")
            members = self._member_users(session, resource)
            events = self._membership_events(session, members, None, name, {u.id for u in members})

        def create(session):
            if groups_named(session, name):
                raise UniquenessException(detail=f"displayName {name!r} is taken")
            ensure_group(session, name)

        self._accept(events, prepare=create)
        with session_scope() as session:
            group_id = groups_named(session, name)[0].id
        return self.get(resource_type, group_id)

    def _update_group(self, resource_type, resource, expected_version, deleted_id: Optional[str] = None):
        group_id = deleted_id or resource.id
        with session_scope() as session:
            self._check_version(session, resource_type, group_id, expected_version)
            group = group_by_id(session, group_id)
            old = group.name
            before = {u.id: u for u in live_members(session, [group_id]).get(group_id, [])}
            if deleted_id is not None:
                new, after = None, {}
            else:
                new = resource.display_name
                if new.lower() != old.lower() and groups_named(session, new):
                    raise UniquenessException(detail=f"displayName {new!r} is taken")
                after = {u.id: u for u in self._member_users(session, resource)}
            affected = [u for uid, u in {**before, **after}.items()
                        if new != old or (uid in before) != (uid in after)]
            events = self._membership_events(session, affected, old, new, set(after))

        def prepare(session):
            row = group_by_id(session, group_id)
            if row is None:
                raise NotFoundException(detail=f"Group {group_id!r} not found")
            if deleted_id is not None:
                delete_group(session, group_id)
            elif new != old:
                rename_group(session, row, new)

        self._accept(events, prepare=prepare)
        return None if deleted_id is not None else self.get(resource_type, group_id)

"""Apply identity events to the identity store, and read a user back with roles and groups."""

from dataclasses import dataclass, field
from typing import Optional

from sqlalchemy import insert
from sqlmodel import Session, delete, select

from models.config import Config
from models.events import EventUser, IdentityEvent
from models.nesting import ancestry, inherited, nesting
from models.tables import Group, GroupMember, Role, User, UserRole, utcnow
from models.validation import InvalidInput

_PROFILE = ("email", "given_name", "family_name", "display_name")


@dataclass(frozen=True)
class UserView:
    """A user as the policy sees it: plain values, safe to pass between threads and tasks."""

    id: str
    username: str
    user_store: str
    tenant: str
    email: Optional[str]
    given_name: Optional[str]
    family_name: Optional[str]
    display_name: Optional[str]
    active: bool
    deleted: bool
    source: str
    idps: tuple[str, ...] = ()
    roles: frozenset[str] = frozenset()
    groups: frozenset[str] = frozenset()
    attributes: dict = field(default_factory=dict)
    inherited: frozenset[str] = frozenset()  # groups the user is in through nested groups, beyond `groups`

    @property
    def qualified_name(self) -> str:
        return f"{self.username}@{self.user_store}"


def find_user(session: Session, tenant: str, user_store: str, username: str) -> Optional[User]:
    return session.exec(select(User).where(User.tenant == tenant, User.user_store == user_store,
                                           User.username == username)).first()


def find_users(session: Session, tenant: str, usernames: set[str]) -> list[User]:
    """The tenant's users named any of `usernames`, in any user store, in queries of 500 names."""
    return [u for names in name_chunks(usernames)
            for u in session.exec(select(User).where(User.tenant == tenant, User.username.in_(names)))]


def _named(session: Session, model, name: str):
    row = session.exec(select(model).where(model.name == name)).first()
    if row is None:
        row = model(name=name)
        session.add(row)
        session.flush()
    return row


# What a user is linked to by each kind of name: roles through UserRole, groups through GroupMember.
LINKS = {Role: (UserRole, "role_id"), Group: (GroupMember, "group_id")}


class Lookups:
    """How applying an event reads and writes the store: a query per user, role and group it names."""

    def __init__(self, session: Session):
        self.session = session

    def user(self, tenant: str, user_store: str, username: str) -> Optional[User]:
        return find_user(self.session, tenant, user_store, username)

    def added(self, user: User) -> None:
        """`user` was just added to the session."""

    def named(self, model, name: str):
        return _named(self.session, model, name)

    def replace_links(self, model, user: User, names: list[str]) -> None:
        """`user`'s roles (model Role) or groups (model Group) become exactly `names`."""
        link, column = LINKS[model]
        self.session.exec(delete(link).where(link.user_id == user.id))
        for name in sorted(set(names)):
            self.session.add(link(user_id=user.id, **{column: self.named(model, name).id}))

    def flush(self) -> None:
        self.session.flush()

    def finish(self) -> None:
        """Write what is still held back (nothing here: every change is in the session already)."""


class Preloaded(Lookups):
    """The same reads and writes for a whole group of events, done once: the users they name, and
    the roles and groups they give, are read in one query per 500 names; what the events change is
    answered from memory for the events after them, and written by `finish` in a few statements (a
    few ORM statements per event made a single writer the event API's limit).
    """

    def __init__(self, session: Session, tenant: str, users: list[EventUser]):
        super().__init__(session)
        self._users = {(u.user_store, u.username): u for u in find_users(session, tenant, {d.username for d in users})}
        self._names = {model: {row.name: row
                               for names in name_chunks({n for d in users for n in (getattr(d, attr) or ())})
                               for row in session.exec(select(model).where(model.name.in_(names)))}
                       for model, attr in ((Role, "roles"), (Group, "groups"))}
        self._new: set[str] = set()  # ids of the users this group creates: they have no links stored
        self._links: dict[tuple, set[str]] = {}  # (model, user id) -> the ids it links to, written by finish

    def user(self, tenant: str, user_store: str, username: str) -> Optional[User]:
        return self._users.get((user_store, username))

    def added(self, user: User) -> None:
        self._users[(user.user_store, user.username)] = user
        self._new.add(user.id)

    def named(self, model, name: str):
        known = self._names[model]
        if name not in known:
            known[name] = model(name=name)
            self.session.add(known[name])
        return known[name]

    def replace_links(self, model, user: User, names: list[str]) -> None:
        link, _ = LINKS[model]
        if user.id not in self._new and (model, user.id) not in self._links:  # stored links, replaced once
            self.session.exec(delete(link).where(link.user_id == user.id))
        self._links[(model, user.id)] = {self.named(model, name).id for name in names}

    def flush(self) -> None:
        """Nothing until `finish`: every later read of this group is answered from memory."""

    def finish(self) -> None:
        self.session.flush()  # the users, roles and groups the links refer to
        for model, (link, column) in LINKS.items():
            rows = [{"user_id": user_id, column: target} for (kind, user_id), targets in self._links.items()
                    if kind is model for target in sorted(targets)]
            if rows:
                self.session.execute(insert(link), rows)
        self._links.clear()


def name_chunks(names: set[str], size: int = 500) -> list[list[str]]:
    """`names`, sorted, in lists of at most `size`: one IN (…) of a query each."""
    ordered = sorted(names)
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def set_roles(session: Session, user: User, roles: list[str], lookups: Optional[Lookups] = None) -> None:
    (lookups or Lookups(session)).replace_links(Role, user, roles)


def set_groups(session: Session, user: User, groups: list[str], lookups: Optional[Lookups] = None) -> None:
    (lookups or Lookups(session)).replace_links(Group, user, groups)


def upsert_changes(deleted: bool, attributes: dict, data: EventUser, source: str,
                   replace_profile: bool = False) -> dict:
    """The columns an upsert of `data` sets on a user (deleted or not, with these attributes)."""
    # A deleted user created again starts afresh.
    changes: dict = {"deleted_at": None, "source": source, "active": True} if deleted else {}
    for name in _PROFILE:
        value = getattr(data, name)
        if value is not None or replace_profile:
            changes[name] = value
    if data.active is not None:
        changes["active"] = data.active
    if data.attributes is not None:
        changes["attributes"] = {**attributes, **data.attributes}
    changes["updated_at"] = utcnow()
    return changes


def upsert_user(session: Session, data: EventUser, tenant: str, source: str, idp: Optional[str] = None,
                replace_profile: bool = False, lookups: Optional[Lookups] = None) -> User:
    """Create or update a user from event data; fields the event leaves out are kept."""
    lookups = lookups or Lookups(session)
    user = lookups.user(tenant, data.user_store, data.username)
    if user is None:
        user = User(username=data.username, user_store=data.user_store, tenant=tenant, source=source)
        session.add(user)
        lookups.added(user)
    for name, value in upsert_changes(user.deleted_at is not None, user.attributes, data, source,
                                      replace_profile).items():
        setattr(user, name, value)
    if idp and idp not in user.idps:
        user.idps = [*user.idps, idp]
    lookups.flush()
    if data.roles is not None:
        set_roles(session, user, data.roles, lookups)
    if data.groups is not None:
        set_groups(session, user, data.groups, lookups)
    return user


CREATING = ("user.created", "user.federated_login")


def username_problems(event: IdentityEvent, config: Config) -> list[str]:
    """The user store's username rule, for an event that may create the user."""
    rule = config.username_rule(event.user.user_store)
    problem = rule.problem("user.username", event.user.username, event.user.user_store)
    return [problem] if problem else []


def apply_event(session: Session, event: IdentityEvent, config: Config, lookups: Optional[Lookups] = None) -> User:
    """Bring the identity store to the state the event describes; return the user.

    Only user.created and user.federated_login create a user; any other event for a user the store
    does not know is refused (InvalidInput, nothing changed) unless `events.upsert_unknown_users`.
    """
    data, tenant, lookups = event.user, config.tenant_domain, lookups or Lookups(session)
    if event.type == "user.roles_changed" and data.roles is None:
        raise InvalidInput("event", ["user.roles: a user.roles_changed event needs the full list of roles"])
    if event.type in CREATING:
        return upsert_user(session, data, tenant, source=event.trigger, idp=event.idp, lookups=lookups)
    user = lookups.user(tenant, data.user_store, data.username)
    # An update must not bring a deleted user back: that is what user.created is for.
    unknown = user is None or (event.type == "user.updated" and user.deleted_at is not None)
    if unknown:
        if not config.events.upsert_unknown_users:
            state = "deleted user" if user is not None else "unknown user"
            raise InvalidInput("event", [f"user.username: {state} {data.username}@{data.user_store}; send "
                                         f"user.created first (or set events.upsert_unknown_users: true)"])
        problems = username_problems(event, config)
        if problems:
            raise InvalidInput("event", problems)
        user = upsert_user(session, data, tenant, source=event.trigger, idp=event.idp, lookups=lookups)
    elif event.type == "user.updated":
        return upsert_user(session, data, tenant, source=event.trigger, idp=event.idp, lookups=lookups)
    if event.type == "user.deleted":
        user.deleted_at = utcnow()
    elif event.type in ("user.disabled", "user.enabled"):
        user.active = event.type == "user.enabled"
    elif event.type == "user.roles_changed":
        set_roles(session, user, data.roles, lookups)
    user.updated_at = utcnow()
    if event.idp and event.idp not in user.idps:
        user.idps = [*user.idps, event.idp]
    lookups.flush()
    return user


def roles_of(session: Session, user_id: str) -> frozenset[str]:
    rows = session.exec(select(Role.name).join(UserRole, UserRole.role_id == Role.id).where(UserRole.user_id == user_id))
    return frozenset(rows)


def groups_of(session: Session, user_id: str) -> frozenset[str]:
    rows = session.exec(select(Group.name).join(GroupMember, GroupMember.group_id == Group.id)
                        .where(GroupMember.user_id == user_id))
    return frozenset(rows)


def view(session: Session, user: User) -> UserView:
    groups = groups_of(session, user.id)
    return UserView(
        id=user.id, username=user.username, user_store=user.user_store, tenant=user.tenant,
        email=user.email, given_name=user.given_name, family_name=user.family_name,
        display_name=user.display_name, active=user.active, deleted=user.deleted_at is not None,
        source=user.source, idps=tuple(user.idps), roles=roles_of(session, user.id),
        groups=groups, attributes=dict(user.attributes), inherited=inherited(groups, ancestry(nesting(session))),
    )


def load_view(session: Session, user_id: str) -> UserView:
    user = session.get(User, user_id)
    if user is None:
        raise KeyError(user_id)
    return view(session, user)


def load_views(session: Session, tenant: str, user_ids: Optional[list[str]] = None) -> list[UserView]:
    """Users of the tenant as the policy sees them (all, or `user_ids`), oldest first, in three queries."""
    users = select(User).where(User.tenant == tenant).order_by(User.created_at, User.id)
    role_q = select(UserRole.user_id, Role.name).join(Role, Role.id == UserRole.role_id)
    group_q = select(GroupMember.user_id, Group.name).join(Group, Group.id == GroupMember.group_id)
    if user_ids is not None:
        users = users.where(User.id.in_(user_ids))
        role_q, group_q = role_q.where(UserRole.user_id.in_(user_ids)), group_q.where(GroupMember.user_id.in_(user_ids))
    roles: dict[str, set] = {}
    for user_id, name in session.exec(role_q):
        roles.setdefault(user_id, set()).add(name)
    groups: dict[str, set] = {}
    for user_id, name in session.exec(group_q):
        groups.setdefault(user_id, set()).add(name)
    up = ancestry(nesting(session))
    return [UserView(id=u.id, username=u.username, user_store=u.user_store, tenant=u.tenant, email=u.email,
                     given_name=u.given_name, family_name=u.family_name, display_name=u.display_name,
                     active=u.active, deleted=u.deleted_at is not None, source=u.source, idps=tuple(u.idps),
                     roles=frozenset(roles.get(u.id, ())), groups=frozenset(groups.get(u.id, ())),
                     attributes=dict(u.attributes), inherited=inherited(groups.get(u.id, ()), up))
            for u in session.exec(users)]


def qualified_names(session: Session, user_ids: list[str]) -> dict[str, str]:
    """User id -> user@STORE, in queries of 500 ids."""
    names: dict[str, str] = {}
    for start in range(0, len(user_ids), 500):
        for user_id, username, store in session.exec(select(User.id, User.username, User.user_store)
                                                     .where(User.id.in_(user_ids[start:start + 500]))):
            names[user_id] = f"{username}@{store}"
    return names


def group_ids(session: Session, names: list[str]) -> dict[str, str]:
    """Group name -> id, of the local groups among `names`."""
    return dict(session.exec(select(Group.name, Group.id).where(Group.name.in_(names))).all())


def group_members(session: Session, names: list[str]) -> dict[str, set[str]]:
    """Group name -> its members' user ids, of the local groups among `names` that have any."""
    members: dict[str, set[str]] = {}
    for name, user_id in session.exec(select(Group.name, GroupMember.user_id)
                                      .join(GroupMember, GroupMember.group_id == Group.id)
                                      .where(Group.name.in_(names))):
        members.setdefault(name, set()).add(user_id)
    return members


def ensure_group(session: Session, name: str) -> Group:
    """The local group `name`, created empty when nobody has joined it yet."""
    return _named(session, Group, name)

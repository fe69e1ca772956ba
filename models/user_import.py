"""Write an import's users: the rows `upsert_user` would leave, in a few statements per chunk.

For each chunk of users (file order), the stored users, roles and groups it names are read as plain
rows; the chunk is merged in memory exactly as one `upsert_user` per row would change them (a user
named twice ends as the two upserts in file order leave it); then each kind of write is one
statement executed for many rows: new users, updated users, new roles and groups, the replaced links
deleted, the links inserted. Everything happens in the caller's transaction.

Why not `upsert_user` per row: building one SQLModel object per row (pydantic's defaults, SQLAlchemy's
instance state) and flushing each was most of an import's time, more than reading and validating
the file.
"""

from sqlalchemy import ARRAY, String, and_, bindparam, delete, func, insert, literal, select, tuple_, update
from sqlmodel import Session

from models.events import EventUser
from models.identity import LINKS, name_chunks, upsert_changes
from models.tables import Group, Role, User, new_id, utcnow

CHUNK = 1000
_USERS = User.__table__
# What an upsert may change on a stored user (the rest is the user's identity, or not the import's).
_UPDATED = ("email", "given_name", "family_name", "display_name", "active", "attributes", "source", "deleted_at",
            "updated_at")
# Each kind of name: its table, and the link table with the column naming it (identity.LINKS).
_KINDS = {kind: (model.__table__, LINKS[model][0].__table__, LINKS[model][1])
          for kind, model in (("roles", Role), ("groups", Group))}
# Executed for many rows: SET takes the columns its rows name (_UPDATED), WHERE the id as b_id.
_SET = update(_USERS).where(_USERS.c.id == bindparam("b_id"))


def import_users(session: Session, users: list[EventUser], tenant: str, source: str = "import") -> None:
    """Create or update `users` in file order; fields a row leaves out are kept (as `upsert_user`)."""
    for first in range(0, len(users), CHUNK):
        _import_chunk(session, users[first:first + CHUNK], tenant, source)


def _import_chunk(session: Session, users: list[EventUser], tenant: str, source: str) -> None:
    stored = _stored_users(session, tenant, {(u.user_store, u.username) for u in users})
    new: dict[tuple, dict] = {}  # (user store, username) -> the row to insert
    changed: dict[tuple, dict] = {}  # the same, of stored users: the row to update
    links: dict[str, dict[str, set[str]]] = {kind: {} for kind in _KINDS}  # kind -> user id -> names
    for data in users:
        key = (data.user_store, data.username)
        row = new.get(key) or changed.get(key)
        if row is None and key in stored:
            row = changed[key] = stored[key]
        elif row is None:
            row = new[key] = {"id": new_id(), "username": data.username, "user_store": data.user_store,
                              "tenant": tenant, "email": None, "given_name": None, "family_name": None,
                              "display_name": None, "active": True, "attributes": {}, "source": source,
                              "idps": [], "deleted_at": None, "created_at": utcnow()}
        row.update(upsert_changes(row["deleted_at"] is not None, row["attributes"], data, source))
        for kind in _KINDS:
            names = getattr(data, kind)
            if names is not None:
                links[kind][row["id"]] = set(names)
    if new:
        session.execute(insert(_USERS), list(new.values()))
    if changed:
        session.execute(_SET, [{"b_id": row["id"], **{name: row[name] for name in _UPDATED}}
                               for row in changed.values()])
    stored_ids = {row["id"] for row in changed.values()}
    for kind, (names_table, link_table, column) in _KINDS.items():
        _replace_links(session, names_table, link_table, column, links[kind], stored_ids)


def _stored_users(session: Session, tenant: str, keys: set[tuple]) -> dict[tuple, dict]:
    """(user store, username) -> the stored user's id and what an upsert reads or changes."""
    columns = [_USERS.c.id, _USERS.c.username, _USERS.c.user_store, *(_USERS.c[name] for name in _UPDATED)]
    by_store: dict[str, set[str]] = {}
    for store, username in keys:
        by_store.setdefault(store, set()).add(username)
    postgres = session.get_bind().dialect.name == "postgresql"
    found = {}
    for store, usernames in sorted(by_store.items()):
        for names in name_chunks(usernames):
            if postgres:
                # Each name looked up in the unique index (tenant, user store, username), whatever the
                # plan: `tenant = … AND username IN (…)` was planned as a walk of all the tenant's users
                # for every 500 names, in a store without statistics yet (a fresh store, a first
                # import) and under the generic plan psycopg's prepared statement gets after five runs:
                # 30-50 ms a read at 10,000 users, 12-20 ms at 100,000; 1-2 ms so.
                wanted = select(literal(tenant), literal(store), func.unnest(literal(names, ARRAY(String))))
                where = tuple_(_USERS.c.tenant, _USERS.c.user_store, _USERS.c.username).in_(wanted)
            else:
                where = and_(_USERS.c.tenant == tenant, _USERS.c.user_store == store, _USERS.c.username.in_(names))
            for row in session.execute(select(*columns).where(where)):
                found[(row.user_store, row.username)] = dict(row._mapping)
    return found


def _replace_links(session: Session, names_table, link_table, column: str, links: dict[str, set[str]],
                   stored_ids: set[str]) -> None:
    """Each user's links of this kind become exactly its names (the names created when new)."""
    if not links:
        return
    wanted = {name for names in links.values() for name in names}
    ids = {}
    for names in name_chunks(wanted):
        ids.update(session.execute(select(names_table.c.name, names_table.c.id)
                                   .where(names_table.c.name.in_(names))).all())
    missing = [{"id": new_id(), "name": name} for name in sorted(wanted - ids.keys())]
    if missing:
        session.execute(insert(names_table), missing)
        ids.update((row["name"], row["id"]) for row in missing)
    for users in name_chunks(stored_ids & links.keys()):  # a new user has no links stored
        session.execute(delete(link_table).where(link_table.c.user_id.in_(users)))
    rows = [{"user_id": user_id, column: target} for user_id, names in links.items()
            for target in sorted(ids[name] for name in names)]
    if rows:
        session.execute(insert(link_table), rows)

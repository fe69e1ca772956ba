"""What the store remembers of a directory: each entry's anchor -> local user, and the watermark."""

from dataclasses import dataclass
from datetime import datetime
from typing import Optional

from sqlalchemy import insert, update
from sqlmodel import Session, select

from models.identity import UserView, load_views
from models.tables import DirectoryEntry, DirectoryWatermark, Role, User, UserRole, utcnow

CHUNK = 500  # ids per IN (...): well under every backend's limit on bound parameters


@dataclass(frozen=True)
class Watermark:
    attribute: str
    value: str
    settings_hash: str
    full_pull_at: Optional[datetime]


@dataclass(frozen=True)
class Link:
    dn: str
    user_id: str


def links(session: Session, directory: str) -> dict[str, Link]:
    """Anchor -> (DN, user id) of every entry the directory's pulls have linked."""
    rows = session.exec(select(DirectoryEntry.anchor, DirectoryEntry.dn, DirectoryEntry.user_id)
                        .where(DirectoryEntry.directory == directory))
    return {anchor: Link(dn, user_id) for anchor, dn, user_id in rows}


def roles_of_linked(session: Session, directory: str) -> dict[str, frozenset[str]]:
    """User id -> roles, of the directory's linked users that hold any (one query)."""
    roles: dict[str, set[str]] = {}
    rows = session.exec(select(UserRole.user_id, Role.name).join(Role, Role.id == UserRole.role_id)
                        .join(DirectoryEntry, DirectoryEntry.user_id == UserRole.user_id)
                        .where(DirectoryEntry.directory == directory))
    for user_id, name in rows:
        roles.setdefault(user_id, set()).add(name)
    return {user_id: frozenset(names) for user_id, names in roles.items()}


def views(session: Session, tenant: str, user_ids: list[str]) -> dict[str, UserView]:
    found: dict[str, UserView] = {}
    for start in range(0, len(user_ids), CHUNK):
        found.update((v.id, v) for v in load_views(session, tenant, user_ids[start:start + CHUNK]))
    return found


def user_ids_by_name(session: Session, tenant: str, user_store: str, usernames: list[str]) -> dict[str, str]:
    """Username -> user id, of those among `usernames` the store holds in `user_store`."""
    found: dict[str, str] = {}
    for start in range(0, len(usernames), CHUNK):
        found.update(session.exec(select(User.username, User.id).where(
            User.tenant == tenant, User.user_store == user_store,
            User.username.in_(usernames[start:start + CHUNK]))).all())
    return found


def link(session: Session, directory: str, tenant: str, user_store: str, entries: list[tuple[str, str, str]]) -> None:
    """Record (anchor, DN, username) of pulled entries against the users their events created or updated:
    one INSERT and one UPDATE statement (executemany) for the batch, not an object per entry."""
    ids = user_ids_by_name(session, tenant, user_store, [username for _, _, username in entries])
    anchors = [anchor for anchor, _, _ in entries]
    known = {anchor for start in range(0, len(anchors), CHUNK) for anchor in session.exec(
        select(DirectoryEntry.anchor).where(DirectoryEntry.directory == directory,
                                            DirectoryEntry.anchor.in_(anchors[start:start + CHUNK])))}
    now = utcnow()
    rows = [{"directory": directory, "anchor": anchor, "dn": dn, "user_id": ids[username], "pulled_at": now}
            for anchor, dn, username in entries]
    new = [r for r in rows if r["anchor"] not in known]
    moved = [r for r in rows if r["anchor"] in known]
    if new:
        session.execute(insert(DirectoryEntry), new)
    if moved:
        session.execute(update(DirectoryEntry), moved)  # by primary key (directory, anchor)


def entry_of(session: Session, user_id: str) -> Optional[DirectoryEntry]:
    """The directory entry the latest pull linked to this user, or None."""
    return session.exec(select(DirectoryEntry).where(DirectoryEntry.user_id == user_id)
                        .order_by(DirectoryEntry.pulled_at.desc())).first()


def watermark(session: Session, directory: str) -> Optional[Watermark]:
    row = session.get(DirectoryWatermark, directory)
    return None if row is None else Watermark(row.attribute, row.value, row.settings_hash, row.full_pull_at)


def set_watermark(session: Session, directory: str, attribute: str, value: str, settings_hash: str,
                  full: bool) -> None:
    row = session.get(DirectoryWatermark, directory) or DirectoryWatermark(
        directory=directory, attribute=attribute, value=value, settings_hash=settings_hash)
    row.attribute, row.value, row.settings_hash, row.updated_at = attribute, value, settings_hash, utcnow()
    if full:
        row.full_pull_at = row.updated_at
    session.add(row)

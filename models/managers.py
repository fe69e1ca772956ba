"""The store's side of manager references: which live users a manager reference (a username or an id) names."""

from sqlmodel import Session, or_, select

from models.tables import User


def users_by_key(session: Session, tenant: str, keys: set[str]) -> list[tuple[str, str, str]]:
    """(id, username, user_store) of the tenant's live users whose id or username is among `keys`."""
    found: list[tuple[str, str, str]] = []
    keys = sorted(keys)
    for start in range(0, len(keys), 500):
        part = keys[start:start + 500]
        found += session.exec(select(User.id, User.username, User.user_store).where(
            User.tenant == tenant, User.deleted_at.is_(None), or_(User.id.in_(part), User.username.in_(part)))).all()
    return [tuple(row) for row in found]

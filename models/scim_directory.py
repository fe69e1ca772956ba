"""The identity store as the SCIM service provider reads it: live users and groups, pages of them,
and each user's roles and groups with the groups' ids (a SCIM `groups` value is a group's id).

Writes go through the outbox (models.ingest), except what no user event can say: a group
created empty, renamed or deleted (`rename_group`, `delete_group`).
"""

from typing import Optional

from sqlalchemy import func
from sqlmodel import Session, delete, select

from models.tables import Group, GroupMember, Role, User, UserRole


def live_user(session: Session, tenant: str, user_id: str) -> Optional[User]:
    """The user of this tenant with this id, unless deleted."""
    user = session.get(User, user_id)
    if user is None or user.tenant != tenant or user.deleted_at is not None:
        return None
    return user


def users_named(session: Session, tenant: str, user_store: str, username: str) -> list[User]:
    """Live users of the store whose username equals `username` ignoring case (SCIM's userName is not caseExact)."""
    return list(session.exec(select(User).where(User.tenant == tenant, User.user_store == user_store,
                                                func.lower(User.username) == username.lower(),
                                                User.deleted_at.is_(None)).order_by(User.created_at, User.id)))


def live_users(session: Session, tenant: str, offset: int = 0, limit: Optional[int] = None) -> list[User]:
    """Live users of the tenant, oldest first, from `offset` (0-based), at most `limit`."""
    query = (select(User).where(User.tenant == tenant, User.deleted_at.is_(None))
             .order_by(User.created_at, User.id).offset(offset))
    return list(session.exec(query if limit is None else query.limit(limit)))


def live_user_count(session: Session, tenant: str) -> int:
    return session.exec(select(func.count()).select_from(User).where(User.tenant == tenant,
                                                                     User.deleted_at.is_(None))).one()


def memberships(session: Session, user_ids: list[str]) -> tuple[dict[str, list[str]], dict[str, list[tuple[str, str]]]]:
    """(user id -> role names, user id -> (group id, group name)) for these users, in queries of 500 ids."""
    roles: dict[str, list[str]] = {}
    groups: dict[str, list[tuple[str, str]]] = {}
    for start in range(0, len(user_ids), 500):
        chunk = user_ids[start:start + 500]
        for user_id, name in session.exec(select(UserRole.user_id, Role.name).join(Role, Role.id == UserRole.role_id)
                                          .where(UserRole.user_id.in_(chunk)).order_by(Role.name)):
            roles.setdefault(user_id, []).append(name)
        for user_id, group_id, name in session.exec(
                select(GroupMember.user_id, Group.id, Group.name).join(Group, Group.id == GroupMember.group_id)
                .where(GroupMember.user_id.in_(chunk)).order_by(Group.name)):
            groups.setdefault(user_id, []).append((group_id, name))
    return roles, groups


def group_by_id(session: Session, group_id: str) -> Optional[Group]:
    return session.get(Group, group_id)


def groups_named(session: Session, name: str) -> list[Group]:
    """Groups whose name equals `name` ignoring case (SCIM's displayName is not caseExact)."""
    return list(session.exec(select(Group).where(func.lower(Group.name) == name.lower())))


def all_groups(session: Session, offset: int = 0, limit: Optional[int] = None) -> list[Group]:
    query = select(Group).order_by(Group.name, Group.id).offset(offset)
    return list(session.exec(query if limit is None else query.limit(limit)))


def group_count(session: Session) -> int:
    return session.exec(select(func.count()).select_from(Group)).one()


def live_members(session: Session, group_ids: list[str]) -> dict[str, list[User]]:
    """Group id -> its live members, oldest first."""
    members: dict[str, list[User]] = {}
    if not group_ids:
        return members
    for group_id, user in session.exec(select(GroupMember.group_id, User).join(User, User.id == GroupMember.user_id)
                                       .where(GroupMember.group_id.in_(group_ids), User.deleted_at.is_(None))
                                       .order_by(User.created_at, User.id)):
        members.setdefault(group_id, []).append(user)
    return members


def rename_group(session: Session, group: Group, name: str) -> None:
    """Rename in place, so the group keeps its id (its SCIM id, and every mapping to it)."""
    group.name = name
    session.add(group)
    session.flush()


def delete_group(session: Session, group_id: str) -> None:
    """Drop a group that no live user belongs to any more (deleted users' rows go with it)."""
    from models.nesting import forget_group

    session.exec(delete(GroupMember).where(GroupMember.group_id == group_id))
    forget_group(session, group_id)
    session.exec(delete(Group).where(Group.id == group_id))

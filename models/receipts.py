"""Webhooks received from identity providers: their token ids (replays), and the providers' user ids.

A receipt is written in the transaction that stores the webhook's events, so a webhook is either
received whole (receipt and events) or not at all; its primary key makes a second delivery of the
same token id fail to commit even when the two arrive at once.
"""

from typing import Optional

from sqlmodel import Session, select

from models.identity import find_user, roles_of
from models.tables import SourceUser, User, WebhookReceipt
from models.wso2 import Known, local_name


def receipt_key(source: str, jti: str) -> str:
    return f"{source}:{jti}"


def seen(session: Session, source: str, jti: str) -> Optional[WebhookReceipt]:
    """The receipt of this token id, if it was received before."""
    return session.get(WebhookReceipt, receipt_key(source, jti))


def record(session: Session, source: str, jti: str, issuer: str, events: int, ignored: int,
           links: list[tuple[str, str, str]], tenant: str) -> None:
    """Keep the receipt, and link each (remote id, user store, username) to its local user."""
    session.add(WebhookReceipt(jti=receipt_key(source, jti), source=source, issuer=issuer[:1024],
                               events=events, ignored=ignored))
    for remote_id, user_store, username in links:
        user = find_user(session, tenant, user_store, username)
        if user is None:  # the username was normalised differently; the next event finds it by name
            continue
        link = session.get(SourceUser, (source, remote_id))
        if link is None:
            session.add(SourceUser(source=source, remote_id=remote_id, user_id=user.id))
        else:
            link.user_id = user.id
    session.flush()


def ignored_count(session: Session, source: str) -> int:
    """How many event types, users or changes webhooks from `source` carried that were left out."""
    from sqlalchemy import func

    return session.exec(select(func.coalesce(func.sum(WebhookReceipt.ignored), 0))
                        .where(WebhookReceipt.source == source)).one()


class StoreDirectory:
    """models.wso2.Directory over the state store."""

    def __init__(self, session: Session, source: str, tenant: str):
        self.session, self.source, self.tenant = session, source, tenant

    def find(self, remote_id: Optional[str], user_store: Optional[str], username: Optional[str]) -> Optional[Known]:
        user = None
        if remote_id:
            link = self.session.get(SourceUser, (self.source, remote_id))
            user = self.session.get(User, link.user_id) if link else None
        if user is None and username:
            user = find_user(self.session, self.tenant, *local_name(user_store or "PRIMARY", username))
        if user is None or user.deleted_at is not None:
            return None
        return Known(user.user_store, user.username, roles_of(self.session, user.id))

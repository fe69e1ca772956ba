"""Pull a directory into the outbox: what changed in LDAP / AD becomes identity events.

The events go through the one ingest (models.ingest), trigger `directory`, so the drain, the
policy and the nightly reconciliation treat them as any other organisation-level event. Each stored
batch also records the anchors it linked; the watermark moves only after every batch is stored,
and only when no entry was refused: a refused entry is read again by the next pull.

Deletes are found by anchor absence in a full pull, and, on Active Directory, by the tombstones an
incremental pull reads in CN=Deleted Objects (objectGUID of a linked entry, uSNChanged above the
watermark); only when no entry was refused (a refused entry's anchor may be the missing one, and
the kept watermark reads the tombstones again). More than max_deletions stops the pull before
anything is stored.
"""

import hashlib
import json
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from typing import Optional

from connectors.ldap import DirectoryError, connected, deleted_objects, highest_committed_usn, search
from models.config import Config, LdapSourceSettings
from models.db import session_scope
from models.directory import (EntryProblem, Mapped, changed_filter, changes, deleted_objects_container, map_entry,
                              next_watermark, normalized_dn, requested_attributes, roles_by_dn, tombstone_anchors,
                              watermark_problem)
from models.directory_state import links, link, roles_of_linked, set_watermark, user_ids_by_name, views, watermark
from models.errors import ProvisioningError
from models.events import parse_event
from models.ingest import accept_all, check_against_config
from models.locks import lease
from models.validation import InvalidInput

BATCH = 500  # entries whose events are stored in one transaction


class PullFailed(ProvisioningError):
    """Entries were refused (their events not stored, the watermark kept), or the guard stopped the pull."""

    code = "pull_failed"

    def __init__(self, message: str, result: "PullResult"):
        super().__init__(message)
        self.result = result


@dataclass
class PullResult:
    directory: str
    full: bool
    why: str  # why full, or "incremental since <watermark>"
    users_read: int = 0
    groups_read: int = 0
    events: Counter = field(default_factory=Counter)
    problems: list[str] = field(default_factory=list)
    deletions: int = 0
    stopped_by_guard: bool = False
    tombstones_read: Optional[int] = None  # AD's Deleted Objects read by an incremental pull (None: not read)
    store_seconds: float = 0.0  # of `seconds`, spent in the ingest (models.ingest.accept_all)
    watermark: Optional[str] = None  # the new one, when it moved
    seconds: float = 0.0

    def summary(self) -> str:
        kind = "full" if self.full else "incremental"
        counts = ", ".join(f"{n} {t}" for t, n in sorted(self.events.items())) or "no events"
        moved = f"watermark {self.watermark}" if self.watermark else "watermark not moved"
        return (f"{self.directory}: {kind} pull ({self.why}): {self.users_read} users and {self.groups_read} groups "
                f"read in {self.seconds:.1f} s; {counts}; {len(self.problems)} entries refused; {moved}")

    def as_dict(self) -> dict:
        return {"directory": self.directory, "full": self.full, "why": self.why, "users_read": self.users_read,
                "groups_read": self.groups_read, "events": dict(self.events), "problems": self.problems,
                "deletions": self.deletions, "tombstones_read": self.tombstones_read, "stopped_by_guard": self.stopped_by_guard,
                "watermark": self.watermark, "seconds": round(self.seconds, 3),
                "store_seconds": round(self.store_seconds, 3)}


def settings_hash(settings: LdapSourceSettings) -> str:
    """What decides which entries are read and what they become: a change makes the next pull full."""
    chosen = settings.model_dump(include={"url", "base_dn", "group_base_dn", "user_filter", "group_filter",
                                          "member_attribute", "anchor", "attributes", "user_store", "roles",
                                          "disabled", "watermark"}, mode="json")
    return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()


def deletion_limit(settings: LdapSourceSettings, linked: int, override: Optional[int]) -> int:
    if override is not None:
        return override
    return settings.max_deletions if settings.max_deletions is not None else max(10, linked // 10)


def _read_groups(conn, settings: LdapSourceSettings) -> dict[str, set[str]]:
    member = settings.member_attribute.lower()
    groups: dict[str, set[str]] = {}
    for dn, raw in search(conn, settings.group_base_dn or settings.base_dn, settings.group_filter,
                          [settings.member_attribute], settings.page_size, "group_filter"):
        values = next((v for k, v in raw.items() if k.lower() == member), [])
        groups[normalized_dn(dn)] = {normalized_dn(v.decode("utf-8", "replace")) for v in values}
    return groups


def _refuse_duplicates(mapped: list[Mapped], key, what: str, problems: list[EntryProblem], attribute: str) -> list[Mapped]:
    by_key: dict[str, list[Mapped]] = {}
    for m in mapped:
        by_key.setdefault(key(m), []).append(m)
    kept = []
    for value, entries in by_key.items():
        if len(entries) == 1:
            kept.append(entries[0])
            continue
        dns = "; ".join(e.dn for e in entries)
        problems += [EntryProblem(e.dn, attribute, f"{what} {value!r} is also that of {len(entries) - 1} other "
                                                   f"entries ({dns}); none of them is pulled") for e in entries]
    return kept


def _username(m: Mapped) -> str:
    return m.username


LEASE_SECONDS = 3 * 3600  # longer than a full pull of a large directory; a killed pull's lease is taken over


def pull(config: Config, full: bool = False, max_deletions: Optional[int] = None, log=print) -> PullResult:
    """One pull of `sources.ldap`; raise DirectoryError (nothing stored), PullFailed (see the module),
    or LockTimeout when another pull of the directory is running (two would store the same events)."""
    settings = config.sources.ldap
    if settings is None:
        raise DirectoryError("sources.ldap is not configured: there is no directory to pull")
    with lease(f"pull:{settings.name}", ttl=LEASE_SECONDS, wait=0):
        return _pull(config, settings, full, max_deletions, log)


def _pull(config: Config, settings: LdapSourceSettings, full: bool, max_deletions: Optional[int], log) -> PullResult:
    started = time.monotonic()
    digest = settings_hash(settings)
    with session_scope() as session:
        mark = watermark(session, settings.name)
        linked = links(session, settings.name)
    with connected(settings) as conn:
        usn = highest_committed_usn(conn) if settings.watermark == "uSNChanged" else None
        value = mark.value if mark is not None and mark.attribute == settings.watermark else None
        why = ("asked for (--full)" if full else watermark_problem(settings.watermark, value, usn)
               or ("the settings that choose or map entries changed" if mark.settings_hash != digest else None))
        result = PullResult(settings.name, full=why is not None, why=why or f"since {settings.watermark} {value}")
        user_filter = settings.user_filter if result.full else changed_filter(
            settings.user_filter, settings.watermark, value, settings.watermark_overlap_seconds)
        groups = _read_groups(conn, settings) if settings.roles else {}
        result.groups_read = len(groups)
        mapped, problems = [], []
        for dn, raw in search(conn, settings.base_dn, user_filter, requested_attributes(settings),
                              settings.page_size, "user_filter"):
            entry = map_entry(dn, raw, settings)
            (problems if isinstance(entry, EntryProblem) else mapped).append(entry)
        result.users_read = len(mapped) + len(problems)
        tombstoned = _tombstones(conn, settings, value, result, log) if not result.full and reads_tombstones(settings) \
            else []
    # Every anchor the search returned, refused entries' too: none of them is absent, and a refused
    # entry emits nothing (not even a role change).
    read_anchors = {m.anchor for m in mapped}
    username_attribute = next(a for a, t in settings.attributes.items() if t == "username")
    for m in [m for m in mapped if _username_problem(m, username_attribute, problems)]:
        mapped.remove(m)
    mapped = _refuse_duplicates(mapped, lambda m: m.anchor, "the anchor", problems, settings.anchor)
    mapped = _refuse_duplicates(mapped, _username, "the username", problems, username_attribute)
    role_of = roles_by_dn(groups, settings.roles) if settings.roles else None

    pull_id = uuid.uuid4().hex[:12]
    numbering = iter(range(1, 10 ** 9))

    def event(kind: str, user: dict) -> dict:
        return {"id": f"dir.{settings.name}.{pull_id}.{next(numbering)}", "type": kind, "trigger": "directory",
                "user": user}

    # Each entry's events, batch by batch; the ingest validates them when they are stored.
    batches: list[list[Planned]] = []
    owners = {link.user_id: anchor for anchor, link in linked.items()}
    for start in range(0, len(mapped), BATCH):
        chunk = mapped[start:start + BATCH]
        batches.append(_chunk_events(config, settings, chunk, linked, owners, role_of, problems, event,
                                     username_attribute))
    # A full pull reads every entry: what it did not read is gone, not a role change.
    # A tombstone of an entry the search read alive (restored since) is not a delete.
    gone = [a for a in linked if a not in read_anchors] if result.full else \
        [a for a in dict.fromkeys(tombstoned) if a in linked and a not in read_anchors]
    roles_only = _role_changes(config, settings, linked, read_anchors | set(gone), role_of, event) \
        if role_of is not None and not result.full else []
    deletes: list[dict] = []
    if gone and not problems:
        deletes = _deletions(config, linked, gone, event)
    result.problems = [str(p) for p in problems]
    result.deletions = len(deletes)
    if (result.full or tombstoned) and problems:
        log(f"deletes not looked for: {len(problems)} entries were refused, and the anchor of a refused entry "
            f"may be one that looks absent (the kept watermark reads any tombstones again)")
    limit = deletion_limit(settings, len(linked), max_deletions)
    if len(deletes) > limit:
        result.stopped_by_guard = True
        result.seconds = time.monotonic() - started
        how = ("full pull", "--full ", "check base_dn and user_filter") if result.full else \
            ("incremental pull (AD's tombstones)", "", "check the Deleted Objects container")
        raise PullFailed(f"{settings.name}: the {how[0]} would delete {len(deletes)} users, more than "
                         f"max_deletions {limit}; nothing was stored. If the directory really lost them, run "
                         f"`outbound pull {how[1]}--max-deletions {len(deletes)}`; else {how[2]}", result)
    read_problems = len(problems)
    stored = time.monotonic()
    for planned in batches:
        _store_batch(config, settings, planned, problems, result)
    if len(problems) > read_problems and deletes:
        log(f"deletes not stored: {len(problems) - read_problems} entries' events were refused, and the "
            f"pull stores deletes only when every entry was taken")
        deletes = []
        result.deletions = 0
    for raws in (roles_only, deletes):
        if raws:
            accept_all(raws, config)
            result.events.update(r["type"] for r in raws)
    result.store_seconds = time.monotonic() - stored
    result.problems = [str(p) for p in problems]
    if not problems:
        new = next_watermark(settings.watermark, value if not result.full else None,
                             (m.stamp for m in mapped), usn)
        if new is not None:
            with session_scope() as session:
                set_watermark(session, settings.name, settings.watermark, new, digest, result.full)
            result.watermark = new
    result.seconds = time.monotonic() - started
    if problems:
        raise PullFailed(f"{settings.name}: {len(problems)} entries refused (no event for them; the watermark "
                         f"was not moved):\n  " + "\n  ".join(result.problems[:50]), result)
    return result


def _username_problem(m: Mapped, attribute: str, problems: list[EntryProblem]) -> bool:
    try:
        _username(m)
    except ValueError as exc:
        problems.append(EntryProblem(m.dn, attribute, str(exc)))
        return True
    return False


def _chunk_events(config, settings, chunk, linked, owners, role_of, problems, event, username_attribute):
    """The events of one batch of entries, and (anchor, DN, username) of those to link."""
    with session_scope() as session:
        by_name = user_ids_by_name(session, config.tenant_domain, settings.user_store,
                                   [_username(m) for m in chunk if m.anchor not in linked])
        ids = [linked[m.anchor].user_id if m.anchor in linked else by_name.get(_username(m)) for m in chunk]
        stored = views(session, config.tenant_domain, [i for i in ids if i])
    planned = []
    for m, user_id in zip(chunk, ids):
        view = stored.get(user_id) if user_id else None
        username = _username(m)
        if view is not None and m.anchor in linked and view.username != username and not view.deleted:
            problems.append(EntryProblem(m.dn, username_attribute, f"the username changed from {view.username!r} to "
                                         f"{username!r}; a rename is not pulled (the targets' accounts would be "
                                         f"new ones): rename it back, or delete and re-create the user"))
            continue
        if view is not None and m.anchor not in linked and owners.get(user_id) not in (None, m.anchor):
            other = linked[owners[user_id]].dn
            problems.append(EntryProblem(m.dn, username_attribute, f"the username {username!r} is that of the user "
                                         f"pulled from {other} (another anchor); none of its events is stored"))
            continue
        roles = role_of.get(normalized_dn(m.dn), set()) if role_of is not None else None
        entry_events = [event(kind, user) for kind, user in _changes(m, roles, view)]
        relink = m.anchor not in linked or linked[m.anchor].dn != m.dn or linked[m.anchor].user_id != user_id
        if entry_events or relink:
            planned.append(Planned(m, entry_events, (m.anchor, m.dn, username) if relink else None))
    return planned


@dataclass
class Planned:
    """One entry's events, and (anchor, DN, username) when its link is new or moved."""

    entry: Mapped
    events: list[dict]
    link: Optional[tuple[str, str, str]]


def _store_batch(config, settings, planned: list[Planned], problems: list[EntryProblem], result: PullResult) -> None:
    """Store a batch's events and links in one transaction. The ingest validates each event once; when
    it refuses some, the batch is checked entry by entry, the refused entries are named by their LDAP
    attribute and left out, and the rest is stored (a page is not lost for one bad entry)."""
    def store(entries: list[Planned]) -> None:
        raws = [e for p in entries for e in p.events]
        linking = [p.link for p in entries if p.link is not None]
        accept_all(raws, config, also=lambda session: link(
            session, settings.name, config.tenant_domain, settings.user_store, linking) if linking else None)
        result.events.update(r["type"] for r in raws)

    if not planned:
        return
    try:
        store(planned)
        return
    except InvalidInput:
        kept = []
        for p in planned:
            problem = _invalid(p.events, config, p.entry)
            (kept.append(p) if problem is None else problems.append(problem))
        if len(kept) == len(planned):
            raise  # not an entry's own fault: the store refused the batch
    if kept:
        store(kept)


def _changes(m: Mapped, roles: Optional[set[str]], view) -> list[tuple[str, dict]]:
    """models.directory.changes, for a directory that manages roles or (no role rules) leaves them alone."""
    if roles is not None:
        return changes(m, roles, view)
    found = changes(m, set(view.roles) if view is not None and not view.deleted else set(), view)
    for kind, user in found:
        if kind == "user.created":
            user.pop("roles")
    return found


def _invalid(raws: list[dict], config: Config, m: Mapped) -> Optional[EntryProblem]:
    """The first problem the ingest finds with an entry's events, named by the LDAP attribute."""
    for raw in raws:
        try:
            check_against_config(parse_event(raw), config)
        except InvalidInput as exc:
            first = exc.problems[0]
            field_name = first.split(":", 1)[0].removeprefix("user.")
            target = field_name if field_name in m.sources else f"attributes.{field_name.removeprefix('attributes.')}"
            return EntryProblem(m.dn, m.sources.get(target, field_name), first)
    return None


def _role_changes(config, settings, linked, seen, role_of, event) -> list[dict]:
    """roles_changed for linked users whose entry did not change but whose groups did."""
    with session_scope() as session:
        held = roles_of_linked(session, settings.name)
        differ = [link.user_id for anchor, link in linked.items() if anchor not in seen
                  and held.get(link.user_id, frozenset()) != role_of.get(normalized_dn(link.dn), set())]
        stored = views(session, config.tenant_domain, differ)
    by_user = {link.user_id: link for link in linked.values()}
    return [event("user.roles_changed", {"username": v.username, "user_store": v.user_store,
                                         "roles": sorted(role_of.get(normalized_dn(by_user[v.id].dn), set()))})
            for v in stored.values() if not v.deleted]


def reads_tombstones(settings: LdapSourceSettings) -> bool:
    """`kind: ad`, or (kind not set) a uSNChanged watermark: only AD's rootDSE has highestCommittedUSN."""
    return settings.watermark == "uSNChanged" and settings.kind != "ldap"


def _tombstones(conn, settings: LdapSourceSettings, value: str, result: PullResult, log) -> list[str]:
    """The anchors of AD's tombstones changed since the watermark; none (logged) when unreadable."""
    container = deleted_objects_container(settings.base_dn)
    if container is None:
        log(f"tombstones not read: base_dn {settings.base_dn!r} has no DC= components to find CN=Deleted Objects")
        return []
    found, why_not = deleted_objects(conn, container, int(value), settings.anchor, settings.page_size)
    if found is None:
        log(f"tombstones not read ({why_not}): deletes are found by full pulls only; give the bind account "
            f"List Contents and Read Property on {container} (docs/sources.md)")
        return []
    result.tombstones_read = len(found)
    return tombstone_anchors(found, settings.anchor)


def _deletions(config, linked, gone_anchors, event) -> list[dict]:
    gone = [linked[anchor].user_id for anchor in gone_anchors]
    with session_scope() as session:
        stored = views(session, config.tenant_domain, gone)
    return [event("user.deleted", {"username": v.username, "user_store": v.user_store})
            for v in stored.values() if not v.deleted]

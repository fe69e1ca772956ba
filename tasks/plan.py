"""plan: what one connector's target should hold, what it does hold, and the difference as a typed plan.

This is the one decision engine: an event batch (a few users) and a full reconciliation (every
user) both plan here. The desired state comes from the store through the policy
(`tasks.policy.decide`) and the username rule (`tasks.username.assign_names`); the target's state
from the connector's paged listing (every user) or from lookups of just the batch's accounts
(`observe`). The diff is vectorised pandas (merges on keys), so a million accounts plan in seconds.

A plan is a DataFrame with one row per action (`PLAN_COLUMNS`):

  action       create | update | disable | enable | delete | link | relink | orphan
  op           what apply sends: create | update | disable | enable | delete | none
  local_id     the local user (None for an orphan)
  entity_name  user@STORE, or the remote username of an orphan
  user_name    the remote username the account should have
  remote_id    the target's id (None for create/relink)
  changes      {field: {"had": …, "want": …}} for update and link, else None
  reason       why (the policy's reason, or what matched)
  decision     provision (the user is wanted here) | deprovision (out of scope, or an orphan)

With `groups` configured on a connector that supports them, the plan also holds `group_rows`
(`GROUP_COLUMNS`), applied after the user rows: group_create (a configured group missing from the
target), member_add and member_remove, the set differences between the members a group should
have (its local members desired on the connector) and the members it has that are ours (accounts
mapped to a user of this connector). Members that are not ours are left alone.
"""

import math
from datetime import datetime
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional

import numpy as np
import pandas as pd
from prefect import task
from prefect.cache_policies import NO_CACHE
from sqlmodel import Session

from connectors.base import MANAGED, Account, Lookup, RemoteGroup, find_each, group_named, matching
from connectors.errors import Rejected
from models import compare
from models.config import Config, ConnectorConfig
from models.identity import UserView, group_ids, group_members, load_views, qualified_names
from models.kinds import Action, Intent
from models.mapping import local_values
from models.nesting import cycle_problems, members_through, nesting
from models.runstate import count_user_links, group_links, links_of_accounts, user_links
from models.suspensions import suspended
from models.tables import utcnow
from tasks.staged import staged_rows
from tasks.managers import Managers, creation_order, resolve_managers
from tasks.policy import Decision, decide
from tasks.username import MAX_SUFFIX, assign_names, user_name_for, with_suffix

# The members, bound once: the diff and the per-row loops compare against these, not `Action.X`.
CREATE, UPDATE, DISABLE, ENABLE, DELETE = Action.CREATE, Action.UPDATE, Action.DISABLE, Action.ENABLE, Action.DELETE
LINK, RELINK, ORPHAN, NONE = Action.LINK, Action.RELINK, Action.ORPHAN, Action.NONE
GROUP_CREATE, MEMBER_ADD, MEMBER_REMOVE = Action.GROUP_CREATE, Action.MEMBER_ADD, Action.MEMBER_REMOVE
PROVISION, DEPROVISION = Intent.PROVISION, Intent.DEPROVISION

ACTIONS = (CREATE, UPDATE, DISABLE, ENABLE, DELETE, LINK, RELINK, ORPHAN)
PLAN_COLUMNS = ("action", "op", "local_id", "entity_name", "user_name", "remote_id", "changes", "reason", "decision")
# Compared as text; `active` is compared as a flag and planned as enable/disable.
TEXT_FIELDS = tuple(f for f in MANAGED if f != "active")
GROUP_ACTIONS = (GROUP_CREATE, MEMBER_ADD, MEMBER_REMOVE)
# group: the group's name; group_id: its local id (None until the local group exists); group_remote_id:
# its id in the target (None before it is created); local_id/remote_id: the member (remote_id None when
# its account is created by this plan: apply reads it from the mapping the create wrote).
GROUP_COLUMNS = ("action", "group", "group_id", "group_remote_id", "local_id", "entity_name", "remote_id", "reason")
DESTRUCTIVE = (DELETE, DISABLE)
# Which fields compare without case is the one rule in models/compare.py (`same`); `_differs` is its
# vectorised twin.
CASELESS = compare.CASELESS


@dataclass
class Plan:
    """The plan for one connector, and what the guard needs to know about it."""

    connector: str
    rows: pd.DataFrame
    target_count: int
    desired_count: int
    unmanaged: int = 0
    max_deletions: Optional[int] = None
    desired: dict[str, Account] = field(default_factory=dict)  # local_id -> account, for create/relink/link
    group_rows: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(GROUP_COLUMNS)))
    # Users the policy wants here who cannot have an account (a username collision, a name the
    # target refuses): local_id -> (user@STORE, the error). Each is a failed operation.
    conflicts: dict[str, tuple[str, Rejected]] = field(default_factory=dict)
    # Per user of the plan: the decision's action and reason, and the account it has (for the
    # per-user outcome of an event batch).
    decisions: dict[str, tuple[str, Decision]] = field(default_factory=dict)  # local_id -> (user@STORE, decision)
    mapped: dict[str, str] = field(default_factory=dict)  # local_id -> remote_id, before the plan
    present: set[str] = field(default_factory=set)  # a batch's plan: the remote ids found in the target
    # What the store holds that cannot be honoured as it stands (a nested-group cycle): one line
    # each, logged once per run; the plan goes ahead around it.
    problems: list[str] = field(default_factory=list)
    # Users created by this plan without their manager, because the manager is created by it too:
    # planned again once this plan is applied (the run's second pass).
    followups: list[str] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        counts = {a: 0 for a in ACTIONS}
        if self.conflicts:
            counts[Action.CONFLICT] = len(self.conflicts)
        counts.update(self.rows["action"].value_counts().to_dict())
        if len(self.group_rows):
            counts.update({a: 0 for a in GROUP_ACTIONS})
            counts.update(self.group_rows["action"].value_counts().to_dict())
        return {k: int(v) for k, v in counts.items()}

    @property
    def deletions(self) -> int:
        """Deletes and disables this plan would send (what the guard counts)."""
        return int(self.rows["op"].isin(DESTRUCTIVE).sum())

    @property
    def threshold(self) -> int:
        if self.max_deletions is not None:
            return self.max_deletions
        return min(math.floor(self.target_count * 0.10), 50)

    @property
    def guard_tripped(self) -> bool:
        return self.deletions > self.threshold

    def summary(self) -> str:
        counts = ", ".join(f"{k} {v}" for k, v in self.counts().items() if v)
        return (f"{self.connector}: {self.desired_count} desired, {self.target_count} in the target "
                f"({self.unmanaged} unmanaged); plan: {counts or 'nothing to do'}; "
                f"deletes+disables {self.deletions} (limit {self.threshold})"
                + "".join(f"; problem: {p}" for p in self.problems))


# --- frames --------------------------------------------------------------------------------

ACCOUNT_COLUMNS = ("remote_id", *TEXT_FIELDS, "active")


def extra_columns(cfg: ConnectorConfig) -> list[str]:
    """One frame column per mapped extra attribute (`extra.<target>`), compared like the managed fields."""
    return [f"extra.{t}" for t in cfg.attribute_map.extra_targets]


def target_frame(accounts: Iterable[Account], extra: tuple[str, ...] = ()) -> pd.DataFrame:
    """The target's accounts as a frame (remote_id, the managed fields, active, the `extra` targets)."""
    rows = [(a.id, *(getattr(a, f) for f in TEXT_FIELDS), bool(a.active), *(a.extra.get(t) for t in extra))
            for a in accounts]
    frame = pd.DataFrame.from_records(rows, columns=[*ACCOUNT_COLUMNS, *(f"extra.{t}" for t in extra)])
    return _typed(frame)


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    for col in frame.columns:
        if col == "active":
            frame[col] = frame[col].astype(bool)
        elif col != "changes":
            frame[col] = frame[col].astype("str") if len(frame) else frame[col].astype(object)
    return frame


def desired_account(user: UserView, user_name: str, cfg: ConnectorConfig, manager: Any = None) -> Account:
    """The account `user` should have on `cfg`, named `user_name`; `manager`: what the target knows
    the user's manager's account by (`tasks.managers`), None while it has none."""
    display = user.display_name or " ".join(p for p in (user.given_name, user.family_name) if p) or None
    values = {"given_name": user.given_name, "family_name": user.family_name, "display_name": display,
              "email": user.email}
    extra = {}
    mapping = cfg.attribute_map
    if mapping:  # the connector's `attributes:` (a mapped core field replaces its default)
        core, extra = mapping.evaluate(local_values(user, user_name), user.attributes)
        values.update(core)
        if mapping.manager_target:
            extra[mapping.manager_target] = manager
    return Account(user_name=user_name, external_id=user.id, active=user.active, extra=extra, **values)


@dataclass
class DesiredState:
    """The store's side: desired accounts, users to deprovision, the mappings and every known local id."""

    desired: pd.DataFrame  # local_id, entity_name, reason, the managed fields, active
    deprovision: pd.DataFrame  # local_id, entity_name, mode, reason (mapped users out of scope)
    mappings: pd.DataFrame  # local_id, remote_id, remote_name
    known_ids: pd.Series  # every local user id (an externalId among them is ours)
    accounts: dict[str, Account]
    conflicts: dict[str, tuple[str, Rejected]] = field(default_factory=dict)
    decisions: dict[str, tuple[str, Decision]] = field(default_factory=dict)
    user_ids: Optional[list[str]] = None  # the batch, or None for every user
    managers: Managers = field(default_factory=Managers)
    # Users of the batch whose accounts are not looked up: created first, adopted on the target's
    # uniqueness refusal (tasks/optimistic.py decides who).
    unseen: frozenset = frozenset()


MAPPING_COLUMNS = ["local_id", "remote_id", "remote_name"]


def _mappings(session: Session, cfg: ConnectorConfig, views: list[UserView], config: Config,
              user_ids: Optional[list[str]]) -> pd.DataFrame:
    """The connector's user mappings: all of them, or for a batch its own and those holding a name it may take."""
    links = None
    if user_ids is not None:
        generated = {user_name_for(u, cfg, config).user_name for u in views}
        wanted = {g.lower() for g in generated}
        if cfg.on_collision == "suffix":
            wanted |= {with_suffix(g, n).lower() for g in generated for n in range(2, MAX_SUFFIX + 1)}
        if len(wanted) <= 5000:  # else reading every mapping is cheaper than a huge IN list
            links = user_links(session, cfg.name, user_ids, wanted)
    if links is None:
        links = user_links(session, cfg.name)
    return pd.DataFrame.from_records(links, columns=MAPPING_COLUMNS)


def _qualified_names(session: Session, views: list[UserView], mapped: dict[str, str]) -> dict[str, str]:
    """user@STORE of the users planned and of every other user holding a name they may collide with."""
    names = {u.id: u.qualified_name for u in views}
    names.update(qualified_names(session, [i for i in mapped if i not in names]))
    return names


def desired_state(session: Session, config: Config, cfg: ConnectorConfig, user_ids: Optional[list[str]] = None,
                  check_name=lambda _: None, views: Optional[list[UserView]] = None,
                  decisions: Optional[dict[str, Decision]] = None) -> DesiredState:
    """Read the desired state of connector `cfg` from the store, for every user or the batch `user_ids`.

    `views`, `decisions`: the batch's users and their decisions on `cfg` as resolve-policy read and
    made them (tasks.desired), used as they are rather than read and decided again.
    """
    if views is None:
        views = load_views(session, config.tenant_domain, user_ids)
    mappings = _mappings(session, cfg, views, config, user_ids)
    mapped = dict(zip(mappings["local_id"], mappings["remote_name"]))
    if decisions is None or any(u.id not in decisions for u in views):
        decisions = {u.id: decide(u, cfg, config, provisioned=u.id in mapped) for u in views}
    wanted = [u for u in views if decisions[u.id].action == PROVISION]
    names, errors = assign_names(wanted, cfg, config, mapped,
                                 taken={n.lower(): i for i, n in mapped.items()},
                                 names=_qualified_names(session, views, mapped), check=check_name)
    desired, deprovision, accounts = [], [], {}
    extra = extra_columns(cfg)
    managers = resolve_managers(session, config, cfg, [u for u in wanted if u.id in names])
    for user in views:
        decision = decisions[user.id]
        if decision.action == PROVISION and user.id in names:
            account = desired_account(user, names[user.id].user_name, cfg, managers.values.get(user.id))
            accounts[user.id] = account
            values = account.managed()
            desired.append((user.id, user.qualified_name, decision.reason,
                            *(values[f] for f in TEXT_FIELDS), bool(account.active), *(values[c] for c in extra)))
        elif decision.action == DEPROVISION:
            deprovision.append((user.id, user.qualified_name, decision.mode or cfg.deprovision_mode, decision.reason))
    return DesiredState(
        desired=_typed(pd.DataFrame.from_records(desired, columns=["local_id", "entity_name", "reason", *TEXT_FIELDS,
                                                                   "active", *extra])),
        deprovision=pd.DataFrame.from_records(deprovision, columns=["local_id", "entity_name", "mode", "reason"]),
        mappings=mappings, known_ids=pd.Series([u.id for u in views], dtype=object), accounts=accounts,
        conflicts={i: (next(u.qualified_name for u in views if u.id == i), e) for i, e in errors.items()},
        decisions={u.id: (u.qualified_name, decisions[u.id]) for u in views}
        if user_ids is not None else {},  # a batch reports per user; a full run per row
        user_ids=user_ids, managers=managers)


# A listing page holds ~100 accounts, a lookup costs a request or two per user: a batch reads the
# whole target instead when that is fewer requests (the target is under LIST_RATIO × the batch).
LIST_RATIO = 100
# With batched lookups (`find_users`) a request covers ~50 users' keys (100 eq terms): the listing is
# fewer requests only while the target is under BATCHED_LIST_RATIO × the batch.
BATCHED_LIST_RATIO = 2


def observe(connector, cfg: ConnectorConfig, state: DesiredState, workers: int = 4,
            target_size: Optional[int] = None) -> list[Account]:
    """The target's accounts of a batch of users: by lookups, or from a listing when that is cheaper.

    The candidates by the connector's match keys and the mapped id (`connectors.base.matching`):
    the same ones a full listing would offer the diff, so both paths decide alike. Lookups are the
    connector's batched `find_users` when it has them (a few requests, whatever the target's size),
    else one `find_user` per user over `workers` threads. `target_size`: an estimate of how many
    accounts the target holds (the connector's mappings).
    """
    mapped = dict(zip(state.mappings["local_id"], state.mappings["remote_id"]))
    batch = (set(state.desired["local_id"]) | set(state.deprovision["local_id"])) - state.unseen
    if not batch:
        return []
    keys = _lookups(state, batch, mapped, set(cfg.match))
    batched = connector.capabilities.batched_lookup
    ratio = BATCHED_LIST_RATIO if batched else LIST_RATIO
    if target_size is not None and len(batch) > 1 and target_size < ratio * len(batch):
        return _listed(connector, keys)
    if batched:
        return connector.find_users(keys)
    return find_each(connector, keys, workers)


def _lookups(state: DesiredState, batch: set[str], mapped: dict[str, str], keys: set[str]) -> list[Lookup]:
    """Each user's keys, by the connector's `match`: its mapped id, its id as externalId, the username
    and email its account should have (a user to deprovision has only the first two)."""
    out = []
    for local_id in sorted(batch):
        account = state.accounts.get(local_id)
        out.append(Lookup(remote_id=mapped.get(local_id) or None,
                          external_id=local_id if "external_id" in keys else None,
                          user_name=account.user_name if account is not None and "user_name" in keys else None,
                          email=(account.email or None) if account is not None and "email" in keys else None))
    return out


def _listed(connector, keys: list[Lookup]) -> list[Account]:
    """The batch's candidates out of a full listing: the same accounts the lookups would find."""
    return matching(connector.iter_users(), keys)


# --- the diff ------------------------------------------------------------------------------

def _canon(values: pd.Series, lower: bool = False) -> pd.Series:
    """Canonical text: trimmed, empty as absent, case-folded when `lower` (see CASELESS)."""
    text = values.astype("str").str.strip()
    if lower:
        text = text.str.lower()
    return text.where(text.ne("") & values.notna())


def _differs(want: pd.Series, have: pd.Series, name: str) -> np.ndarray:
    """Where a desired value is set and the target's differs once both are canonical: `compare.same`
    over a column (caseless when `compare.caseless(name)`).

    Raw equality implies canonical equality, so only the rows that differ raw are canonicalised:
    at 1% drift that is a small fraction of the work.
    """
    lower = compare.caseless(name)
    w, h = want.to_numpy(dtype=object, na_value=None), have.to_numpy(dtype=object, na_value=None)
    out = want.notna().to_numpy() & (w != h)
    pos = np.flatnonzero(out)
    if len(pos):
        cw = _canon(want.iloc[pos], lower).to_numpy(dtype=object, na_value=None)
        ch = _canon(have.iloc[pos], lower).to_numpy(dtype=object, na_value=None)
        out[pos] = pd.notna(cw) & (pd.isna(ch) | (cw != ch))
    return out


def _rows(frame: pd.DataFrame, **values) -> pd.DataFrame:
    out = pd.DataFrame(index=range(len(frame)))
    for col in PLAN_COLUMNS:
        value = values.get(col, frame[col] if col in frame else PROVISION if col == "decision" else None)
        out[col] = value.to_numpy(dtype=object) if isinstance(value, pd.Series) else value
    return out


def diff(desired: pd.DataFrame, target: pd.DataFrame, mappings: pd.DataFrame,
         deprovision: Optional[pd.DataFrame] = None, known_ids: Optional[pd.Series] = None, *,
         read_only: tuple[str, ...] = (), orphans: str = "report",
         match: tuple[str, ...] = ("external_id", "user_name"), partial: bool = False,
         staged: Optional[tuple[dict, int, datetime]] = None) -> tuple[pd.DataFrame, int]:
    """The plan rows for `desired` against `target`, given our `mappings`; and the unmanaged count.

    `staged`: for a connector that suspends, then deletes: (local id -> when its account was
    suspended, after how many days it is deleted, now); see `tasks.staged`.

    `match`: the keys an unlinked account is adopted by, in order. `partial`: `target` holds only
    the accounts of the users planned (an event batch), so nothing can be called an orphan.
    """
    deprovision = deprovision if deprovision is not None else pd.DataFrame(columns=["local_id", "entity_name",
                                                                                    "mode", "reason"])
    # The managed fields, and one `extra.<target>` column per mapped attribute the desired frame has.
    compared = [f for f in (*TEXT_FIELDS, *(c for c in desired.columns if c.startswith("extra.")))
                if f not in read_only]
    parts: list[pd.DataFrame] = []

    # 1. Where our mapping points: present (compare) or gone (relink, unless a match is found below).
    d = desired.merge(mappings[["local_id", "remote_id"]], on="local_id", how="left")
    present = d["remote_id"].isin(target["remote_id"]).to_numpy()
    unresolved = d.loc[~present]

    # 2. Unlinked accounts matching a desired user: externalId, then username, then email (adopt).
    free = target.loc[~target["remote_id"].isin(mappings["remote_id"]),
                      ["remote_id", "external_id", "user_name", "email"]]
    found = []
    for key, how in (("external_id", "externalId"), ("user_name", "username"), ("email", "email")):
        if key not in match:
            continue
        if unresolved.empty or free.empty:
            break
        want_key = unresolved["local_id"] if key == "external_id" else _canon(unresolved[key], lower=True)
        have_key = free[key] if key == "external_id" else _canon(free[key], lower=True)
        left = pd.DataFrame({"local_id": unresolved["local_id"].to_numpy(), "k": want_key.to_numpy()}).dropna()
        right = pd.DataFrame({"remote_id": free["remote_id"].to_numpy(), "k": have_key.to_numpy(),
                              "ext": free["external_id"].to_numpy()}).dropna(subset=["k"])
        # An ambiguous key matches nothing: two accounts (or two users) with one email is not an adoption.
        right = right.drop_duplicates("k", keep=False)
        left = left.drop_duplicates("k", keep=False)
        m = left.merge(right, on="k")
        if key != "external_id":  # never adopt an account that carries someone else's externalId
            m = m[m["ext"].isna() | (m["ext"] == m["local_id"])]
        if m.empty:
            continue
        found.append(m[["local_id", "remote_id"]].assign(how=how))
        unresolved = unresolved[~unresolved["local_id"].isin(m["local_id"])]
        free = free[~free["remote_id"].isin(m["remote_id"])]
    links = pd.concat(found, ignore_index=True) if found else pd.DataFrame(columns=["local_id", "remote_id", "how"])
    was_mapped = set(d.loc[~present & d["remote_id"].notna(), "local_id"])

    # 3. Nothing to link: create (or re-create, when the mapping pointed at an account that is gone).
    missing = unresolved
    relink = missing["remote_id"].notna().to_numpy()
    if len(missing):
        parts.append(_rows(missing, action=np.where(relink, RELINK, CREATE), op=CREATE, remote_id=None,
                           changes=None, reason=np.where(relink, "the mapped account is gone: create it again",
                                                         missing["reason"].to_numpy(dtype=object))))

    # 4. Compare every matched pair, field by field, canonicalised.
    cmp = pd.concat([d.loc[present].assign(how="mapped").merge(target, on="remote_id", suffixes=("", "_t")),
                     links.merge(desired, on="local_id").merge(target, on="remote_id", suffixes=("", "_t"))],
                    ignore_index=True)
    diffs = {f: _differs(cmp[f], cmp[f + "_t"], f) for f in compared}
    any_diff = np.zeros(len(cmp), dtype=bool)
    for mask in diffs.values():
        any_diff |= mask
    changes = np.full(len(cmp), None, dtype=object)
    for f, mask in diffs.items():
        pos = np.flatnonzero(mask)
        if not len(pos):
            continue
        wants, hads = cmp[f].to_numpy(dtype=object)[pos], cmp[f + "_t"].to_numpy(dtype=object)[pos]
        for p, w, h in zip(pos, wants, hads):
            if changes[p] is None:
                changes[p] = {}
            changes[p][f] = {"had": None if _isna(h) else h, "want": w}
    is_link = (cmp["how"] != "mapped").to_numpy()
    rows = is_link | any_diff
    if rows.any():
        sel = cmp.loc[rows]
        link_sel = is_link[rows]
        how = sel["how"].to_numpy(dtype=object)
        relinked = sel["local_id"].isin(was_mapped).to_numpy()
        reason = np.where(link_sel, np.where(relinked, "the mapped account is gone; adopt the account matching by ",
                                             "adopt the unlinked account matching by ") + how.astype(str),
                          "drift in managed attributes")
        parts.append(_rows(sel, action=np.where(link_sel, LINK, UPDATE),
                           op=np.where(any_diff[rows], UPDATE, NONE), changes=changes[rows], reason=reason))
    want_active, have_active = cmp["active"].to_numpy(dtype=bool), cmp["active_t"].to_numpy(dtype=bool)
    for action, mask in ((DISABLE, ~want_active & have_active), (ENABLE, want_active & ~have_active)):
        if mask.any():
            parts.append(_rows(cmp.loc[mask], action=action, op=action, changes=None,
                               reason=f"the user is {'inactive' if action == DISABLE else 'active'} in the store"))

    # 5. Mapped users the policy no longer wants here: deprovision as the event path would.
    claimed = [cmp["remote_id"]]
    if len(deprovision):
        dep = deprovision.merge(mappings[["local_id", "remote_id"]], on="local_id").merge(
            target[["remote_id", "user_name", "active"]], on="remote_id")
        dep = dep[~dep["remote_id"].isin(cmp["remote_id"])]
        claimed.append(dep["remote_id"])
        delete = dep[dep["mode"] == "delete"]
        disable = dep[(dep["mode"] == "disable") & dep["active"].astype(bool)]
        for action, frame in ((DELETE, delete), (DISABLE, disable)):
            if len(frame):
                parts.append(_rows(frame, action=action, op=action, changes=None, decision=DEPROVISION))
        if staged is not None:  # switched off already: a pending delete, a due one, or a clock to start
            off = dep[(dep["mode"] == "disable") & ~dep["active"].astype(bool)]
            for action, op, frame, reason in staged_rows(off, *staged):
                parts.append(_rows(frame, action=action, op=op, changes=None, decision=DEPROVISION, reason=reason))

    # 6. Accounts we manage (mapped, or carrying an externalId of ours) that no desired user wants.
    rest = target[~target["remote_id"].isin(pd.concat(claimed, ignore_index=True))]
    if partial:
        rest = rest.iloc[0:0]
    ours = rest["remote_id"].isin(mappings["remote_id"])
    if known_ids is not None:
        ours |= rest["external_id"].isin(known_ids)
    orphan = rest[ours.to_numpy()]
    unmanaged = len(rest) - len(orphan)
    if len(orphan):
        if orphans == "delete":
            op = DELETE
        elif orphans == "disable":
            op = np.where(orphan["active"].to_numpy(dtype=bool), DISABLE, NONE)
        else:
            op = NONE
        owner = orphan[["remote_id"]].merge(mappings[["local_id", "remote_id"]], on="remote_id", how="left")
        parts.append(_rows(orphan, action=ORPHAN, op=op, decision=DEPROVISION,
                           local_id=owner["local_id"].to_numpy(dtype=object),
                           entity_name=orphan["user_name"], changes=None,
                           reason=f"managed by us, wanted by no user (orphans: {orphans})"))

    plan = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=list(PLAN_COLUMNS))
    plan = plan.astype({c: object for c in PLAN_COLUMNS})
    return plan.where(plan.notna(), None), unmanaged


def _isna(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


# --- groups --------------------------------------------------------------------------------

def _remote_group(name: str, group_id: Optional[str], group_maps: dict[str, str],
                  remote: list[RemoteGroup], case_exact: bool = False) -> Optional[RemoteGroup]:
    """The target's group for configured group `name`: the mapped one, else the one of that name as the
    target compares names (adopted, spelt as the target has it), when it is ours to take (`group_owned`)."""
    by_id = {g.id: g for g in remote}
    if group_id and group_maps.get(group_id) in by_id:
        return by_id[group_maps[group_id]]
    found = group_named(remote, name, case_exact)
    owner = next((local for local, remote_id in group_maps.items() if found and remote_id == found.id), None)
    return found if found is not None and group_owned(found, group_id, owner) else None


def group_owned(group: RemoteGroup, group_id: Optional[str], owner: Optional[str]) -> bool:
    """Whether the target's `group` may be adopted as local group `group_id`: not when it carries
    another externalId, nor when it is linked to another local group (`owner`), as for accounts."""
    if group.external_id and group_id and group.external_id != group_id:
        return False
    return owner is None or owner == group_id


def group_diff(names: list[str], local_groups: dict[str, str], local_members: dict[str, set[str]],
               remote: list[RemoteGroup], group_maps: dict[str, str], members: dict[str, Optional[str]],
               entity_names: dict[str, str], ours: dict[str, Optional[str]], case_exact: bool = False) -> pd.DataFrame:
    """The group rows: each configured group's membership as set differences.

    names: the configured groups; local_groups: name -> local group id; local_members: name -> local
    user ids; remote: the target's groups; group_maps: local group id -> remote id; members: every user
    desired on the connector -> its account's remote id (None when this plan creates it); ours: remote
    ids of the accounts we manage -> their local id (only those can be removed from a group);
    case_exact: whether the target tells group names apart by case (`same_group_name`).
    """
    out = []
    for name in names:
        group_id = local_groups.get(name)
        group = _remote_group(name, group_id, group_maps, remote, case_exact)
        have = set(group.member_ids) if group else set()
        if group is None:
            out.append((GROUP_CREATE, name, group_id, None, None, name, None,
                        f"configured group {name} is missing from the target"))
        wanted = {u: members[u] for u in sorted(local_members.get(name, ())) if u in members}
        for local_id, remote_id in wanted.items():
            if remote_id is None or remote_id not in have:
                out.append((MEMBER_ADD, name, group_id, group and group.id, local_id,
                            f"{name} ({entity_names.get(local_id, local_id)})", remote_id,
                            f"in group {name} locally and desired on the connector"))
        keep = {r for r in wanted.values() if r}
        for remote_id in sorted(have - keep):
            if remote_id in ours:  # a member we do not manage is left alone
                local_id = ours[remote_id]
                out.append((MEMBER_REMOVE, name, group_id, group.id, local_id,
                            f"{name} ({entity_names.get(local_id, remote_id)})", remote_id,
                            f"our account is in {name} but should not be"))
    frame = pd.DataFrame.from_records(out, columns=list(GROUP_COLUMNS)).astype(object)
    return frame.where(frame.notna(), None)


def pushed_members(session: Session, names: list[str], nest: dict[str, set[str]]) -> dict[str, set[str]]:
    """Group name -> the user ids its target group should hold: its own members, and with nesting
    (`nest`, empty for `group_nesting.push: direct`) those of the groups nested in it."""
    if not nest:
        return group_members(session, names)
    every = set(names) | set(nest) | {c for children in nest.values() for c in children}
    return members_through(names, group_members(session, sorted(every)), nest)


def plan_groups(session: Session, cfg: ConnectorConfig, connector, state: DesiredState,
                rows: pd.DataFrame, nest: dict[str, set[str]], push: str = "flatten") -> pd.DataFrame:
    """The group rows of connector `cfg`, given the user plan `rows` (creates, links, deletes to come);
    `nest`: the store's group nesting, `push`: how it counts (`group_nesting.push`)."""
    names = list(cfg.groups)
    local_groups = group_ids(session, names)
    local_members = pushed_members(session, names, nest if push == "flatten" else {})
    group_maps = group_links(session, cfg.name)
    # Each desired user's account: the mapped one, the one this plan links, or None (this plan creates it).
    mapped = dict(zip(state.mappings["local_id"], state.mappings["remote_id"]))
    members: dict[str, Optional[str]] = {u: mapped.get(u) for u in state.desired["local_id"]}
    for row in rows.itertuples():
        if row.local_id in members and row.action in (CREATE, RELINK):
            members[row.local_id] = None
        elif row.local_id in members and row.action == LINK:
            members[row.local_id] = row.remote_id
    ours = {r: u for u, r in mapped.items()}
    if state.user_ids is not None:  # a batch: only its own users' memberships are decided here
        batch = set(state.user_ids)
        local_members = {n: m & batch for n, m in local_members.items()}
        ours = {r: u for r, u in ours.items() if u in batch}
    ours.update({row.remote_id: row.local_id for row in rows.itertuples() if row.action == LINK})
    # A deleted account is removed from its groups too: not every target drops the references itself.
    entity_names = dict(zip(state.desired["local_id"], state.desired["entity_name"]))
    entity_names.update(zip(state.deprovision["local_id"], state.deprovision["entity_name"]))
    return group_diff(names, local_groups, local_members, list(connector.iter_groups()), group_maps, members,
                      entity_names, ours, connector.capabilities.group_names_case_exact)


def _staged(session: Session, cfg: ConnectorConfig, state: DesiredState) -> Optional[tuple[dict, int, datetime]]:
    """What `diff` needs to stage the deprovisioned users' deletes (None: the connector does not stage)."""
    if cfg.staged is None:
        return None
    ids = list(state.deprovision["local_id"])
    return suspended(session, cfg.name, ids) if ids else {}, cfg.staged.after_days, utcnow()


def _managers_first(rows: pd.DataFrame, manager_of: dict[str, str]) -> pd.DataFrame:
    """The rows with every create after the creates of its user's managers (the rest keep their order)."""
    creates = rows["action"].isin([CREATE, RELINK]).to_numpy()
    if creates.sum() < 2:
        return rows
    depth = creation_order(list(rows.loc[creates, "local_id"]), manager_of)
    key = np.where(creates, [depth.get(u, 0) for u in rows["local_id"]], 0)
    return rows.iloc[np.argsort(key, kind="stable")].reset_index(drop=True)


def _mapped_elsewhere(session: Session, cfg: ConnectorConfig, remote_ids: list[str], known: pd.DataFrame) -> pd.DataFrame:
    """Mappings of accounts a batch's lookups found, beyond those already read: whose are they?"""
    ids = [r for r in remote_ids if r not in set(known["remote_id"])]
    if not ids:
        return known
    more = pd.DataFrame.from_records(links_of_accounts(session, cfg.name, ids), columns=MAPPING_COLUMNS)
    return pd.concat([known, more], ignore_index=True) if len(more) else known


def make_plan(config: Config, cfg: ConnectorConfig, connector, session: Session,
              user_ids: Optional[list[str]] = None, state: Optional[DesiredState] = None) -> Plan:
    """Read the store and the target (all of it, or the accounts of `user_ids`) and diff them.

    `state`: the desired state already read (generate-username's result), else it is read here.
    """
    if state is None:
        state = desired_state(session, config, cfg, user_ids, check_name=connector.check_user_name)
    user_ids = state.user_ids
    if user_ids is None:
        accounts = connector.iter_users()
    else:
        known = count_user_links(session, cfg.name)
        accounts = observe(connector, cfg, state, cfg.max_concurrency or 4, target_size=known + len(state.desired))
        state.mappings = _mapped_elsewhere(session, cfg, [a.id for a in accounts], state.mappings)
    target = target_frame(accounts, cfg.attribute_map.extra_targets)
    rows, unmanaged = diff(state.desired, target, state.mappings, state.deprovision, state.known_ids,
                           read_only=connector.capabilities.read_only_attributes, orphans=cfg.orphans,
                           match=tuple(cfg.match), partial=user_ids is not None,
                           staged=_staged(session, cfg, state))
    if state.conflicts and len(rows):  # a user who cannot be named keeps the account it has, untouched
        rows = rows[~rows["local_id"].isin(list(state.conflicts))].reset_index(drop=True)
    plan = Plan(cfg.name, rows, target_count=len(target), desired_count=len(state.desired), unmanaged=unmanaged,
                max_deletions=cfg.max_deletions, desired=state.accounts, conflicts=state.conflicts,
                decisions=state.decisions, mapped=dict(zip(state.mappings["local_id"], state.mappings["remote_id"])),
                present=set(target["remote_id"]) if user_ids is not None else set())
    if state.managers.manager_of:
        plan.rows = _managers_first(plan.rows, state.managers.manager_of)
        # A report whose manager this plan creates (or links) gets its manager on the run's second pass.
        planned = set(plan.rows.loc[plan.rows["action"].isin([CREATE, RELINK, LINK]), "local_id"])
        plan.followups = sorted(r for r, m in state.managers.pending.items() if m in planned)
    nest = nesting(session)
    plan.problems = cycle_problems(nest) + state.managers.problems
    if cfg.groups and connector.capabilities.groups:
        plan.group_rows = plan_groups(session, cfg, connector, state, rows, nest, config.nesting(cfg).push)
    return plan


@task(name="plan", task_run_name="plan {connector_name}", cache_policy=NO_CACHE)
def plan_task(connector_name: str, config: Config, dry_run: bool = False,
              user_ids: Optional[list[str]] = None) -> Plan:
    """Snapshot the target and the desired state (of every user, or of `user_ids`), and diff them into a plan."""
    from models.db import session_scope
    from tasks import retry
    from tasks.door import target

    cfg = config.connector(connector_name)

    def snapshot() -> Plan:
        with target(cfg, config, dry_run=dry_run) as connector, session_scope() as session:
            return make_plan(config, cfg, connector, session, user_ids)

    # Listing is a read: a transient failure of the target lists again, by the retry policy.
    return retry.run_task(snapshot, config.retry, f"connector={cfg.name} plan")

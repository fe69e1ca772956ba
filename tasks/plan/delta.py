"""The diff: desired against observed frames, into the plan's user rows; vectorised pandas (merges on
keys), so a million accounts plan in seconds. It reads neither the store nor the target.

Which values differ is models/compare.py's one rule; `_differs` applies it over a column.
"""

import math
from datetime import datetime
from typing import Optional

import numpy as np
import pandas as pd

from models import compare
from tasks.plan.shape import (CREATE, DELETE, DEPROVISION, DISABLE, ENABLE, LINK, NONE, ORPHAN, PLAN_COLUMNS,
                              PROVISION, RELINK, TEXT_FIELDS, UPDATE)
from tasks.staged import staged_rows

# Which fields compare without case is the one rule in models/compare.py (`same`); `_differs` is its
# vectorised twin.
CASELESS = compare.CASELESS


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

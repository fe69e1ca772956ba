"""Plan N desired users against N remote accounts with 1% drift of each kind; print time and peak RSS.

    .venv/bin/python bench/plan.py 1000000 [--mapped M]

Times `tasks.plan.diff` (canonicalise, merge, compare, build the plan rows) on frames built as the
store and the target would give them; building the frames is not timed. A tenth of the target's
emails are upper-cased and a tenth of its names padded with spaces: they must show no drift.
With `--mapped M`, both sides also carry M mapped attributes (`extra.attr<j>` columns, as a
connector's `attributes:` section adds), which drift on the same 1% of rows as the updates.
"""

import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from tasks.plan import ACTIONS, diff  # noqa: E402


def frames(n: int, mapped_attributes: int = 0):
    ids = np.array([f"{i:032x}" for i in range(n)], dtype=object)
    names = np.array([f"user{i}" for i in range(n)], dtype=object)
    emails = np.array([f"user{i}@example.com" for i in range(n)], dtype=object)
    given = np.array(["Given"] * n, dtype=object)
    family = np.array([f"Family{i % 997}" for i in range(n)], dtype=object)
    display = np.array([f"Given Family{i % 997}" for i in range(n)], dtype=object)
    k = max(n // 100, 1)
    # slices of 1% each: create, update, disable, enable, delete, link, relink, orphan
    cut = {name: slice(j * k, (j + 1) * k) for j, name in enumerate(ACTIONS)}
    active = np.ones(n, dtype=bool)
    active[cut["disable"]] = False
    desired = pd.DataFrame({"local_id": ids, "entity_name": names, "reason": "organisation-level connector",
                            "user_name": names, "external_id": ids, "given_name": given, "family_name": family,
                            "display_name": display, "email": emails, "active": active})
    in_scope = np.ones(n, dtype=bool)
    in_scope[cut["delete"]] = False
    in_scope[cut["orphan"]] = False
    deprovision = pd.DataFrame({"local_id": ids[cut["delete"]], "entity_name": names[cut["delete"]],
                                "mode": "delete", "reason": "the user was deleted"})
    known = pd.Series(ids[~np.isin(np.arange(n), np.arange(n)[cut["orphan"]])])
    t_extra = {}
    for j in range(mapped_attributes):
        values = np.array([f"Dept{i % 50}" for i in range(n)], dtype=object)
        desired[f"extra.attr{j}"] = values
        t_extra[f"extra.attr{j}"] = values.copy()
        t_extra[f"extra.attr{j}"][cut["update"]] = "Elsewhere"
    desired = desired[in_scope].reset_index(drop=True)

    remote = np.array([f"r{i}" for i in range(n)], dtype=object)
    t_email = emails.copy()
    t_email[::10] = [e.upper() for e in t_email[::10]]  # a server that upper-cases: no drift
    t_given = given.copy()
    t_given[cut["update"]] = "Changed"
    t_family = family.copy()
    t_family[1::10] = [f"  {v} " for v in t_family[1::10]]  # padding: no drift
    t_active = np.ones(n, dtype=bool)
    t_active[cut["enable"]] = False
    target = pd.DataFrame({"remote_id": remote, "user_name": names, "external_id": ids, "given_name": t_given,
                           "family_name": t_family, "display_name": display, "email": t_email, "active": t_active,
                           **t_extra})
    keep = np.ones(n, dtype=bool)
    keep[cut["create"]] = False
    keep[cut["relink"]] = False
    target = target[keep].reset_index(drop=True)

    mapped = np.ones(n, dtype=bool)
    mapped[cut["create"]] = False
    mapped[cut["link"]] = False
    m_remote = remote.copy()
    m_remote[cut["relink"]] = [f"gone{i}" for i in range(k)]
    m_local = ids.copy()
    m_local[cut["orphan"]] = [f"{i:032x}-deleted" for i in range(k)]
    mappings = pd.DataFrame({"local_id": m_local[mapped], "remote_id": m_remote[mapped],
                             "remote_name": names[mapped]})
    for frame in (desired, target, mappings, deprovision):
        for col in frame.columns:
            if frame[col].dtype == object:
                frame[col] = frame[col].astype("str")
    return desired, target, mappings, deprovision, known


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    args = sys.argv[1:]
    mapped_attributes = 0
    if "--mapped" in args:
        at = args.index("--mapped")
        mapped_attributes = int(args[at + 1])
        del args[at:at + 2]
    n = int(args[0]) if args else 10_000
    desired, target, mappings, deprovision, known = frames(n, mapped_attributes)
    before = peak_rss_mib()
    start = time.perf_counter()
    plan, unmanaged = diff(desired, target, mappings, deprovision, known)
    elapsed = time.perf_counter() - start
    counts = plan["action"].value_counts().to_dict()
    print(f"N={n:,}" + (f" with {mapped_attributes} mapped attributes" if mapped_attributes else "") + f": planned in {elapsed:.2f} s; peak RSS {peak_rss_mib():.0f} MiB "
          f"(after building the frames: {before:.0f} MiB); rows {len(plan):,}; unmanaged {unmanaged}")
    print("  " + ", ".join(f"{a} {counts.get(a, 0):,}" for a in ACTIONS))
    k = max(n // 100, 1)
    wrong = {a: counts.get(a, 0) for a in ACTIONS if counts.get(a, 0) != k}
    if wrong:
        print(f"  unexpected counts (each should be {k:,}): {wrong}")


if __name__ == "__main__":
    main()

"""The accounts as frames: the columns both sides of the diff share, typed alike.

`target_frame` is what the target holds; `tasks.plan.wanted` builds the desired frame with the same
columns and `_typed`, so the diff compares like with like.
"""

from typing import Iterable

import pandas as pd

from connectors.base import Account
from models.config import ConnectorConfig
from tasks.plan.shape import TEXT_FIELDS


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

"""One comparison rule: the plan, the connectors and the lost-answer check agree on every field's case."""

import pandas as pd

from connectors.base import Account, BatchOp, differences
from connectors.outcome import applied
from models.compare import same
from models.kinds import Action
from tasks.plan import _differs


class _Holding:
    """A target that holds one account (enough for `applied`'s read of an update)."""

    def __init__(self, account: Account):
        self.account = account

    def get_user(self, remote_id: str) -> Account:
        return self.account


def test_the_plan_the_connectors_and_the_outcome_check_agree_on_case():
    want = Account(user_name="Alice@Example.COM", email="Alice@Example.com", display_name="Alice")
    got = Account(user_name=" alice@example.com", email="alice@example.com ", display_name="alice", id="r1")
    assert differences(want, got) == {"display_name": "Alice"}
    for name in ("user_name", "email", "display_name"):
        w, g = getattr(want, name), getattr(got, name)
        differs = bool(_differs(pd.Series([w]), pd.Series([g]), name)[0])
        assert differs == (not same(name, w, g)) == (name in differences(want, got))
        held, _ = applied(_Holding(got), BatchOp(Action.UPDATE, remote_id="r1", changes={name: w}))
        assert held == same(name, w, g)


def test_same_treats_empty_as_absent():
    assert same("display_name", "", None) and same("email", [], None)
    assert not same("display_name", "A", "a")

"""The data rides the DAG: a batch's users are read once and the policy decided once per connector.

resolve-policy reads the batch's users and decides for every connector; each connector's
generate-username plans from that result instead of reading the users and deciding again.
"""

import asyncio
import os
import uuid

import pytest

from connectors.factory import clear_cache
from helpers import event
from models.config import load_config
from sandbox.scim import ScimSandbox

pytestmark = pytest.mark.usefixtures("prefect_harness")


def test_users_are_read_once_and_the_policy_decided_once_per_connector(tmp_path, sqlite_url, monkeypatch):
    import tasks.desired as desired
    import tasks.plan.wanted as plan  # desired_state's own module: where it looks its names up
    import tasks.policy as policy
    from flows.provision import provision_user
    from models.ingest import accept

    reads, decided = [], []
    real_load, real_decide = desired.load_views, policy.decide

    def load_views(*args, **kwargs):
        reads.append(args[2] if len(args) > 2 else kwargs.get("user_ids"))
        return real_load(*args, **kwargs)

    def decide(*args, **kwargs):
        decided.append(args[1].name)
        return real_decide(*args, **kwargs)

    monkeypatch.setattr(desired, "load_views", load_views)
    monkeypatch.setattr(plan, "load_views", load_views)
    monkeypatch.setattr(policy, "decide", decide)
    monkeypatch.setattr(plan, "decide", decide)
    with ScimSandbox() as one, ScimSandbox() as two:
        entries = []
        for name, scim in (("one", one), ("two", two)):
            env = f"DATA_SCIM_{uuid.uuid4().hex[:6]}"
            os.environ[env] = scim.token
            entries.append(f"""  - name: {name}
    type: scim2
    scim2:
      base_url: {scim.url}
      auth: {{type: bearer, token: env:{env}}}
      create: optimistic
""")
        path = tmp_path / "outbound.yaml"
        path.write_text("tenant_domain: example.com\nretry: {attempts: 2, base_delay: 0.01, max_delay: 0.05}\n"
                        "connectors:\n" + "".join(entries))
        clear_cache()
        cfg = load_config(path)
        for i in range(5):
            accept(event(username=f"rides{i}"), cfg)
        reads.clear()
        decided.clear()
        state = asyncio.run(provision_user(config_path=str(path), return_state=True))
        assert state.is_completed(), state.message
        assert len(one.users()) == len(two.users()) == 5
    # one read of the batch's users (resolve-policy's); the creates' answers vouch for the accounts,
    # so the read-back reads none again
    assert len([r for r in reads if r is not None]) == 1, reads
    assert sorted(decided) == ["one"] * 5 + ["two"] * 5  # each user decided once per connector

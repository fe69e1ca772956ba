"""Start each kind of target's sandbox and build a connector against it (for the contract suite).

Each entry is a context manager yielding (connector, sandbox). Google and Salesforce register
theirs here too, so one suite runs over every connector.
"""

from contextlib import contextmanager

from connectors.factory import get_connector
from models.config import ConnectorConfig


def scim2_config(sandbox, name: str = "app", env_var: str = "SANDBOX_SCIM_TOKEN", **extra) -> ConnectorConfig:
    import os

    os.environ[env_var] = sandbox.token
    return ConnectorConfig.model_validate({
        "name": name, "type": "scim2",
        "scim2": {"base_url": sandbox.url, "auth": {"type": "bearer", "token": f"env:{env_var}"},
                  "page_size": 10, **extra},
    })


@contextmanager
def scim2_target(**extra):
    from sandbox.scim import ScimSandbox

    with ScimSandbox() as sandbox:
        yield get_connector(scim2_config(sandbox, **extra)), sandbox


TARGETS = {"scim2": scim2_target}

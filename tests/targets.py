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


def salesforce_config(sandbox, name: str = "salesforce", auth: dict | None = None, **extra) -> ConnectorConfig:
    """A Salesforce connector entry for the sandbox, signing in with the JWT bearer flow by default."""
    auth = auth or {"type": "jwt", "client_id": sandbox.client_id, "username": sandbox.username,
                    "private_key": f"file:{sandbox.private_key_file}"}
    return ConnectorConfig.model_validate({
        "name": name, "type": "salesforce", "domain": "example.com", "deprovision": "disable",
        "salesforce": {"login_url": sandbox.url, "ca_bundle": sandbox.ca_file, "auth": auth, **extra},
    })


@contextmanager
def salesforce_target(**extra):
    from sandbox.salesforce import SalesforceSandbox

    with SalesforceSandbox(query_batch_size=10) as sandbox:
        yield get_connector(salesforce_config(sandbox, **extra)), sandbox


TARGETS["salesforce"] = salesforce_target


def google_config(sandbox, name: str = "google-main", env_var: str = "SANDBOX_GOOGLE_KEY", key: dict | None = None,
                  **extra) -> ConnectorConfig:
    """A google connector entry whose key (JSON text in an env var) is the sandbox's service account."""
    import json
    import os

    os.environ[env_var] = json.dumps(key or sandbox.service_account_info())
    google = {"service_account_key": f"env:{env_var}", "admin_email": sandbox.admins[0],
              "api_base_url": sandbox.url}
    google.update(extra.pop("google", {}))
    return ConnectorConfig.model_validate({"name": name, "type": "google", "domain": sandbox.domains[0],
                                           "google": google, **extra})


@contextmanager
def google_target(**extra):
    from sandbox.google import GoogleSandbox

    with GoogleSandbox() as sandbox:
        yield get_connector(google_config(sandbox, **extra)), sandbox


TARGETS["google"] = google_target

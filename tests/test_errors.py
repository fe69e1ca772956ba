"""Every error the engine raises on purpose is a ProvisioningError, and keeps the base its callers catch."""

import pickle

import pytest

from connectors.errors import (AlreadyExists, AuthFailed, ConfigError, ConnectorError, NotFound, OutcomeUnknown,
                               ProvisioningError, RateLimited, Rejected, TransientError, is_permanent)
from models import errors

ONE_ROOT = [
    (errors.SecretError, ConfigError), (errors.PatternError, ConfigError), (errors.MappingError, ConfigError),
    (errors.InvalidInput, ProvisioningError), (errors.LockTimeout, ProvisioningError),
    (ConnectorError, ProvisioningError), (TransientError, ConnectorError), (RateLimited, TransientError),
    (OutcomeUnknown, TransientError), (NotFound, ConnectorError), (AlreadyExists, ConnectorError),
    (Rejected, ConnectorError), (AuthFailed, ConnectorError),
]
# The standard bases callers and libraries catch them by (pydantic turns a ValueError into a field error).
KEPT_BASES = [(errors.PatternError, ValueError), (errors.MappingError, ValueError), (errors.InvalidInput, ValueError),
              (errors.LockTimeout, TimeoutError)]


def test_connectors_and_models_share_one_root():
    assert ProvisioningError is errors.ProvisioningError and ConfigError is errors.ConfigError


@pytest.mark.parametrize("error,parent", ONE_ROOT + KEPT_BASES, ids=lambda v: v.__name__)
def test_in_the_tree(error, parent):
    assert issubclass(error, parent)


def test_errors_outside_models_and_connectors():
    from deployments.prefect_api import PrefectUnavailable
    from flows.reconcile import Busy
    from tasks.capabilities import NotStored
    from tasks.health import Quarantined

    assert issubclass(PrefectUnavailable, ProvisioningError) and issubclass(PrefectUnavailable, RuntimeError)
    assert issubclass(Busy, ProvisioningError) and issubclass(NotStored, ProvisioningError)
    assert issubclass(Quarantined, TransientError)


def test_codes_keep_a_retry_for_what_may_heal():
    # Only ConfigError itself is final; a secret set later, or a lease let go, lets the event succeed.
    for error in (errors.SecretError, errors.PatternError, errors.MappingError, errors.InvalidInput,
                  errors.LockTimeout):
        assert error.code != ConfigError.code and not is_permanent(error.code)
    assert errors.LockTimeout.code == "busy"


def test_errors_carry_their_fields_and_pickle():
    mapping = errors.MappingError("bad", ["a: bad", "b: bad"])
    invalid = errors.InvalidInput("event", ["user.username: missing"])
    assert mapping.problems == ["a: bad", "b: bad"] and str(invalid) == "invalid event:\n  - user.username: missing"
    for error in (mapping, errors.LockTimeout("user:1 is held"), errors.SecretError("env:X: not set")):
        copy = pickle.loads(pickle.dumps(error))
        assert type(copy) is type(error) and str(copy) == str(error)

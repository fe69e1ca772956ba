"""Whether the SCIM server refuses a second account of one userName: what an optimistic create rests on.

A create sent without a look-up first keeps "one account per user" only if the server answers a
repeated userName with 409 (RFC 7644 §3.3: scimType `uniqueness`), which the drain then adopts.
RFC 7643 makes userName unique per server, but not every application enforces it (some key their
accounts on `id` alone), and a /Schemas document saying `uniqueness: server` proves nothing. So it
is tried, once per connector: an inactive throwaway user is created twice and deleted again. Any
answer but a 409 to the second create (or a failure of the probe itself) says "do not rely on it",
and the batch looks accounts up before creating, as it does by default.
"""

import logging
import threading
import uuid

from connectors.base import Account
from connectors.errors import AlreadyExists, ConnectorError, NotFound
from connectors.scim2.users import Users

log = logging.getLogger("connectors.scim2")
PROBE_PREFIX = "outbound-uniqueness-probe-"  # the throwaway account's userName (and externalId) prefix


class Uniqueness(Users):
    _unique_names: "bool | None" = None
    _unique_lock = threading.Lock()

    def refuses_repeated_user_names(self) -> bool:
        """Whether the server answers a second create of one userName with 409 (tried once, then remembered)."""
        with self._unique_lock:
            if self._unique_names is None:
                self._unique_names = self._probe_uniqueness()
            return self._unique_names

    def _probe_uniqueness(self) -> bool:
        name = f"{PROBE_PREFIX}{uuid.uuid4().hex[:12]}"
        probe = Account(user_name=name, external_id=name, given_name="Outbound", family_name="Probe",
                        display_name="outbound uniqueness probe (deleted at once)", active=False)
        made, refused = [], False
        try:
            made.append(self.create_user(probe).id)
            try:
                made.append(self.create_user(probe).id)
            except AlreadyExists:
                refused = True
        except ConnectorError as exc:
            log.warning("connector=%s could not tell whether the server refuses a repeated userName (%s): "
                        "creates look the account up first", self.name, exc)
            refused = False
        finally:
            for remote_id in filter(None, made):
                try:
                    self.delete_user(remote_id)
                except NotFound:
                    pass
                except ConnectorError as exc:  # left behind, inactive: named so an operator can remove it
                    log.warning("connector=%s could not delete the probe account %s (%s): %s", self.name, name,
                                remote_id, exc)
        if not refused:
            log.warning("connector=%s: the server accepted a second account named %s: scim2.create: optimistic "
                        "is not safe here; creates look the account up first", self.name, name)
        return refused

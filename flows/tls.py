"""One verified TLS context per CA file for Prefect's API clients, instead of one per client.

Prefect 3 builds a new `ssl.SSLContext` from its CA file (certifi's bundle: about 14 ms of CPU,
holding the GIL) for every `PrefectClient` and `SyncPrefectClient`, and its task engine makes one
or two of those per task run on a worker thread: 1.8 s of a 10,000-user reconciliation's 17 CPU
seconds (`bench/import_reconcile.py --profile`). A verified context is only read once built, so
clients and threads can share it; it is built again when the CA file changes. The unverified
context (PREFECT_API_TLS_INSECURE_SKIP_VERIFY) Prefect alters after creating it: that one is still
built per client.
"""

import os
import ssl
import threading

_lock = threading.Lock()
_built: dict[tuple, ssl.SSLContext] = {}


def _verified(cafile: str) -> ssl.SSLContext:
    try:
        stat = os.stat(cafile)
        key = (cafile, stat.st_mtime_ns, stat.st_size)
    except OSError:  # let ssl name the missing file, as it would have
        return ssl.create_default_context(cafile=cafile)
    with _lock:
        if key not in _built:
            _built[key] = ssl.create_default_context(cafile=cafile)
        return _built[key]


class _SharedVerifiedContexts:
    """The `ssl` module as Prefect's client module sees it: `create_default_context(cafile=…)` shared."""

    def __getattr__(self, name: str):
        return getattr(ssl, name)

    @staticmethod
    def create_default_context(purpose=ssl.Purpose.SERVER_AUTH, *, cafile=None, capath=None, cadata=None):
        if cafile and capath is None and cadata is None and purpose == ssl.Purpose.SERVER_AUTH:
            return _verified(os.fspath(cafile))
        return ssl.create_default_context(purpose, cafile=cafile, capath=capath, cadata=cadata)


def share_prefect_tls() -> None:
    """Make Prefect's API clients share their verified TLS context (idempotent)."""
    import prefect.client.orchestration as orchestration

    if getattr(orchestration, "ssl", None) is ssl:
        orchestration.ssl = _SharedVerifiedContexts()

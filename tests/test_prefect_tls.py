"""Prefect's API clients share one verified TLS context per CA file (flows/tls.py)."""

import shutil

import certifi
import pytest

import flows  # noqa: F401  (installs the sharing, as every process running our flows does)
from prefect.client.orchestration import get_client
from prefect.settings import PREFECT_API_SSL_CERT_FILE, PREFECT_API_TLS_INSECURE_SKIP_VERIFY, PREFECT_API_URL, \
    temporary_settings


def _context(client):
    return client._client._transport._pool._ssl_context


@pytest.fixture
def api_url():
    with temporary_settings({PREFECT_API_URL: "https://127.0.0.1:9/api"}):
        yield


def test_clients_share_the_verified_context_of_one_ca_file(api_url):
    first, second = get_client(sync_client=True), get_client(sync_client=True)
    third = get_client()  # the async client too
    assert _context(first) is _context(second) is _context(third)
    assert _context(first).verify_mode.name == "CERT_REQUIRED" and _context(first).check_hostname


def test_a_changed_ca_file_gets_a_new_context(api_url, tmp_path):
    bundle = tmp_path / "ca.pem"
    shutil.copy(certifi.where(), bundle)
    with temporary_settings({PREFECT_API_SSL_CERT_FILE: str(bundle)}):
        before = _context(get_client(sync_client=True))
        assert _context(get_client(sync_client=True)) is before
        bundle.write_text(bundle.read_text() + "\n")
        assert _context(get_client(sync_client=True)) is not before


def test_the_unverified_context_is_still_one_per_client(api_url):
    with temporary_settings({PREFECT_API_TLS_INSECURE_SKIP_VERIFY: True}):
        first, second = get_client(sync_client=True), get_client(sync_client=True)
    assert _context(first) is not _context(second)
    assert _context(first).verify_mode.name == "CERT_NONE"

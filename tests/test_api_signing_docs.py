"""The signing examples in docs/operations.md, run as written against the served API."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from deployments.api import create_app
from deployments.webhooks import new_secret
from models.config import parse_config

DOC = Path(__file__).resolve().parent.parent / "docs" / "operations.md"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture
def api(sqlite_url, monkeypatch):
    from apiserver import served

    secret = new_secret()
    monkeypatch.setenv("DOCS_WEBHOOK_SECRET", secret)
    config = parse_config({"tenant_domain": "example.com", "api": {"webhook_secrets": ["env:DOCS_WEBHOOK_SECRET"]}})
    calls = []
    with served(create_app(config, dispatch=lambda *a: calls.append(a))) as (base, log):
        yield base, secret, calls
        assert log.tracebacks() == []


def test_the_python_example_signs_a_request_the_api_accepts(api, tmp_path):
    base, secret, calls = api
    [code] = [b for b in blocks("python") if "webhook-signature" in b]
    code = code.replace('"whsec_…"', repr(secret)).replace("http://127.0.0.1:8080", base)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert '"status":"accepted"' in done.stdout and len(calls) == 1


@pytest.mark.skipif(not all(shutil.which(t) for t in ("bash", "curl", "openssl", "od", "base64")),
                    reason="needs bash, curl, openssl, od and base64")
def test_the_curl_and_openssl_example_signs_a_post_and_a_get_the_api_accepts(api, tmp_path):
    base, secret, calls = api
    [script] = [b for b in blocks("sh") if "openssl dgst" in b]
    (tmp_path / "body.json").write_text('{"id": "evt-1", "type": "user.created", "trigger": "api", '
                                        '"user": {"username": "alice", "email": "alice@example.com"}}')
    script = script.replace("SECRET=whsec_…", f"SECRET='{secret}'").replace("http://127.0.0.1:8080", base)
    done = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, timeout=60,
                          cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    post_answer, get_answer = done.stdout.split("}", 1)
    assert '"status":"accepted"' in post_answer and len(calls) == 1
    assert '"id":"evt-1"' in get_answer and '"type":"user.created"' in get_answer, done.stdout

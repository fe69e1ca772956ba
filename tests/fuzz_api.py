"""Fuzz the event API with schemathesis over its own /openapi.json, served over real HTTP.

    python tests/fuzz_api.py                       # deterministic, bounded (what `make test` runs)
    python tests/fuzz_api.py --explore --max-time 900   # free exploration (what `make fuzz` runs)

The API runs in this process on a temporary SQLite store, with valid credentials given to the
fuzzer (a bearer token) and a dispatcher that starts no flow: the point is the HTTP surface.
Passes when schemathesis finds nothing (no 5xx, every status and body as the document says, auth
enforced), the API's log holds no traceback, and the API still answers afterwards.
"""

import argparse
import json
import os
import re
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

# Not checked, and why:
#   negative_data_rejection: event fields are coerced leniently today ("active": 0 is taken as false);
#     strict typing of events is separate work; turn this check on once it has landed.
#   positive_data_acceptance: an event valid by the schema can still be refused for a reason the
#     schema cannot express (an unknown identity provider, JIT not allowed), with a documented 422.
EXCLUDED_CHECKS = ("negative_data_rejection", "positive_data_acceptance")


@dataclass
class FuzzResult:
    exit_code: int
    cases: int
    output: str
    tracebacks: list[str] = field(default_factory=list)
    answers_after: int = 0
    events_stored: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.tracebacks and self.answers_after == 200 and self.cases > 0


def _cases(report: Path, output: str) -> int:
    """Test cases run, from the NDJSON event stream (else the summary line)."""
    total = 0
    if report.exists():
        for line in report.read_text().splitlines():
            try:
                item = json.loads(line)
            except ValueError:
                continue
            for value in item.values():  # {"ScenarioFinished": {..., "recorder": {"cases": {...}}}}
                if isinstance(value, dict) and isinstance(value.get("recorder"), dict):
                    total += len(value["recorder"].get("cases", {}))
    if total:
        return total
    match = re.search(r"Test cases:\s*\n?\s*(\d+) generated", output)
    return int(match.group(1)) if match else 0


def fuzz(*, max_examples: int = 50, deterministic: bool = True, max_time: int | None = None,
         workers: int = 1, seed: int = 20260101) -> FuzzResult:
    """Run schemathesis against a freshly served API; the environment is restored afterwards."""
    names = ("OUTBOUND_DATABASE_URL", "FUZZ_API_TOKEN", "FUZZ_WEBHOOK_SECRET")
    saved = {name: os.environ.get(name) for name in names}
    try:
        return _fuzz(max_examples, deterministic, max_time, workers, seed)
    finally:
        for name, value in saved.items():
            os.environ.pop(name, None) if value is None else os.environ.__setitem__(name, value)


def _fuzz(max_examples: int, deterministic: bool, max_time: int | None, workers: int, seed: int) -> FuzzResult:
    from apiserver import served
    from deployments.api import create_app
    from deployments.webhooks import new_secret
    from models.config import parse_config
    from models.db import dispose_all, session_scope
    from models.tables import Event
    from sqlmodel import func, select

    with tempfile.TemporaryDirectory(prefix="outbound-fuzz-") as tmp:
        token = "fuzz-" + secrets.token_urlsafe(24)
        os.environ["OUTBOUND_DATABASE_URL"] = f"sqlite:///{tmp}/state.db"
        os.environ["FUZZ_API_TOKEN"], os.environ["FUZZ_WEBHOOK_SECRET"] = token, new_secret()
        config = parse_config({"tenant_domain": "example.com", "identity_providers": [{"name": "okta"}],
                               "api": {"webhook_secrets": ["env:FUZZ_WEBHOOK_SECRET"], "token": "env:FUZZ_API_TOKEN"}})
        dispatched: list[str] = []
        app = create_app(config, dispatch=lambda event_id, *_: dispatched.append(event_id))
        report = Path(tmp) / "events.ndjson"
        started = time.monotonic()
        with served(app) as (base, log):
            cmd = [sys.executable, "-c", "import sys; from schemathesis.cli import schemathesis; sys.exit(schemathesis())",
                   "run", f"{base}/openapi.json", "--header", f"Authorization: Bearer {token}",
                   "--checks", "all", "--exclude-checks", ",".join(EXCLUDED_CHECKS),
                   "--max-examples", str(max_examples), "--workers", str(workers), "--seed", str(seed),
                   "--report", "ndjson", "--report-ndjson-path", str(report),
                   "--no-color", "--request-timeout", "30", "--suppress-health-check", "too_slow"]
            cmd += ["--generation-deterministic"] if deterministic else ["--generation-database", "none"]
            if max_time:
                cmd += ["--max-time", str(max_time)]
            env = {**os.environ, "SCHEMATHESIS_HOOKS": ""}
            done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=tmp,
                                  timeout=(max_time or 600) + 300)
            output = (done.stdout + done.stderr).replace(token, "<token>")
            import httpx

            answers_after = httpx.get(f"{base}/readyz", timeout=10).status_code
            tracebacks = log.tracebacks()
        with session_scope() as session:
            stored = session.exec(select(func.count()).select_from(Event)).one()
        dispose_all()
        return FuzzResult(done.returncode, _cases(report, output), output, tracebacks, answers_after, stored,
                          time.monotonic() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--explore", action="store_true", help="random generation (not derandomized)")
    parser.add_argument("--max-examples", type=int, default=50, help="per operation and phase")
    parser.add_argument("--max-time", type=int, default=None, help="seconds; fuzzing repeats until spent")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else (secrets.randbelow(2**31) if args.explore else 20260101)
    result = fuzz(max_examples=args.max_examples, deterministic=not args.explore, max_time=args.max_time,
                  workers=args.workers, seed=seed)
    print(result.output[-4000:])
    print(f"seed {seed}: {result.cases} cases in {result.seconds:.0f} s; schemathesis exit {result.exit_code}; "
          f"tracebacks in the API's log: {len(result.tracebacks)}; /readyz afterwards: {result.answers_after}; "
          f"events stored: {result.events_stored}")
    for line in result.tracebacks[:5]:
        print(line)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())

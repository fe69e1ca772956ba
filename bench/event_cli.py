"""Time `outbound event` end to end (process start → exit) against the sandbox SCIM server.

    python bench/event_cli.py [--events 10]

Uses whatever Prefect API the environment names: set PREFECT_API_URL to a running server to
measure the operator's everyday path; leave it unset to include the temporary API's start-up.
`--compare` alternates the command as shipped (the temporary API launched first thing, beside the
command's own start) with Prefect imported first (Prefect's own temporary server, started when the
flow needs it, as before), and prints both.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from sandbox.scim import ScimSandbox  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10)
    parser.add_argument("--compare", action="store_true")
    args = parser.parse_args()
    outbound = [str(Path(sys.executable).with_name("outbound"))]
    prefect_first = [sys.executable, "-c", "import sys, prefect; from deployments.cli import main; "
                     "sys.argv[0] = 'outbound'; main()"]
    with ScimSandbox() as scim, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_SCIM_TOKEN": scim.token,
               "OUTBOUND_DATABASE_URL": f"sqlite:///{tmp}/state.db"}
        config = Path(tmp, "outbound.yaml")
        config.write_text(f"tenant_domain: example.com\nconnectors:\n  - name: app\n    type: scim2\n"
                          f"    scim2:\n      base_url: {scim.url}\n      auth: {{type: bearer, token: env:BENCH_SCIM_TOKEN}}\n")
        timings, before = [], []
        for i in range(args.events):
            path = Path(tmp, f"e{i}.json")
            path.write_text(json.dumps({"id": f"bench-{i}", "type": "user.created", "trigger": "api",
                                        "user": {"username": f"bench{i}", "email": f"bench{i}@example.com",
                                                 "given_name": "Bench", "family_name": str(i)}}))
            command = prefect_first if args.compare and i % 2 else outbound
            start = time.perf_counter()
            result = subprocess.run([*command, "event", str(path), "--config", str(config)], env=env,
                                    capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
            (before if command is prefect_first else timings).append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(f"event {i} failed: {result.stdout}{result.stderr[-2000:]}")
        assert len(scim.users()) == args.events
    api = os.environ.get("PREFECT_API_URL") or "a temporary API"
    for name, runs in (("as shipped", timings), ("Prefect imported first", before)):
        if runs:
            runs.sort()
            print(f"outbound event x{len(runs)} against {api}, {name}: median {statistics.median(runs):.2f} s, "
                  f"min {runs[0]:.2f} s, max {runs[-1]:.2f} s (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""Time `outbound event` end to end (process start → exit) against the sandbox SCIM server.

    python bench/event_cli.py [--events 10]

Uses whatever Prefect API the environment names: set PREFECT_API_URL to a running server to
measure the operator's everyday path; leave it unset to include Prefect's ephemeral API start-up.
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
    args = parser.parse_args()
    outbound = str(Path(sys.executable).with_name("outbound"))
    with ScimSandbox() as scim, tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "BENCH_SCIM_TOKEN": scim.token,
               "OUTBOUND_DATABASE_URL": f"sqlite:///{tmp}/state.db"}
        config = Path(tmp, "outbound.yaml")
        config.write_text(f"tenant_domain: example.com\nconnectors:\n  - name: app\n    type: scim2\n"
                          f"    scim2:\n      base_url: {scim.url}\n      auth: {{type: bearer, token: env:BENCH_SCIM_TOKEN}}\n")
        timings = []
        for i in range(args.events):
            path = Path(tmp, f"e{i}.json")
            path.write_text(json.dumps({"id": f"bench-{i}", "type": "user.created", "trigger": "api",
                                        "user": {"username": f"bench{i}", "email": f"bench{i}@example.com",
                                                 "given_name": "Bench", "family_name": str(i)}}))
            start = time.perf_counter()
            result = subprocess.run([outbound, "event", str(path), "--config", str(config)], env=env,
                                    capture_output=True, text=True)
            timings.append(time.perf_counter() - start)
            if result.returncode != 0:
                sys.exit(f"event {i} failed: {result.stdout}{result.stderr[-2000:]}")
        assert len(scim.users()) == args.events
    api = os.environ.get("PREFECT_API_URL") or "ephemeral API"
    timings.sort()
    print(f"outbound event x{args.events} against {api}: median {statistics.median(timings):.2f} s, "
          f"min {timings[0]:.2f} s, max {timings[-1]:.2f} s (load average {os.getloadavg()[0]:.1f})")


if __name__ == "__main__":
    main()

"""A batch's candidate accounts three ways, against a target of a given size: requests and seconds.

    .venv/bin/python bench/lookup.py [--target 1000 3000] [--batch 10 100] [--server scim2-server scimmy]

listing: every page of the target, filtered (`tasks.plan._listed`); batched: `find_users` (`or`
filters, `connectors/scim2/lookup.py`); each: one `find_user` per user over 4 threads (`find_each`).
The batch is half users the target holds (by externalId and userName) and half it does not (to be
created). Each server runs in its own process, so its CPU is not charged to the client; the figures
are the client's wall time. SCIMMY needs node and `npm ci --prefix tests/scimmy`.
"""

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

SCIM_SERVER = """
import sys, time
sys.path.insert(0, {root!r})
from sandbox.scim import ScimSandbox
s = ScimSandbox(token={token!r}).start()
print("listening", s.url.rsplit(":", 1)[1].split("/")[0], flush=True)
while True:
    time.sleep(3600)
"""


def start(server: str, token: str) -> tuple[subprocess.Popen, str]:
    if server == "scimmy":
        cmd = ["node", str(ROOT / "tests" / "scimmy" / "server.mjs")]
    else:
        cmd = [sys.executable, "-c", SCIM_SERVER.format(root=str(ROOT), token=token)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env={**os.environ, "SCIMMY_TOKEN": token},
                            start_new_session=True)
    port = int(proc.stdout.readline().split()[1])
    return proc, f"http://127.0.0.1:{port}/v2"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--batch", type=int, nargs="+", default=[10, 100])
    parser.add_argument("--server", nargs="+", default=["scim2-server", "scimmy"])
    args = parser.parse_args()
    from connectors.base import Account, BatchOp, Lookup, find_each
    from connectors.factory import get_connector
    from models.kinds import Action
    from targets import scim2_config
    from tasks.plan import _listed

    print(f"{'server':<13}{'target':>7}{'batch':>6}  {'listing':>16}  {'batched':>16}  {'each':>16}")
    for server in args.server:
        token = uuid.uuid4().hex
        proc, url = start(server, token)
        try:
            connector = get_connector(scim2_config(SimpleNamespace(url=url, token=token), name=f"bench-{server}",
                                                   page_size=100))
            have = 0
            for size in sorted(args.target):
                accounts = [Account(user_name=f"user{i}", external_id=f"ext-{i}", given_name="G", family_name="F",
                                    email=f"user{i}@example.com") for i in range(have, size)]
                for first in range(0, len(accounts), 200):
                    connector.apply_batch([BatchOp(Action.CREATE, account=a) for a in accounts[first:first + 200]],
                                          max_workers=4)
                have = size
                for batch in args.batch:
                    keys = [Lookup(external_id=f"ext-{i * (size // batch)}", user_name=f"user{i * (size // batch)}")
                            for i in range(batch // 2)]
                    keys += [Lookup(external_id=f"new-{i}", user_name=f"new{i}") for i in range(batch - batch // 2)]
                    cells = []
                    for how in (lambda: _listed(connector, keys), lambda: connector.find_users(keys),
                                lambda: find_each(connector, keys, 4)):
                        connector.find_users(keys[:1])  # its one-off questions (case, .search) not timed
                        before, t0 = connector.requests_sent, time.perf_counter()
                        found = how()
                        sent, took = connector.requests_sent - before, time.perf_counter() - t0
                        cells.append(f"{len(found):3d} {sent:4d} req {took:5.2f} s")
                    print(f"{server:<13}{size:>7}{batch:>6}  " + "  ".join(cells), flush=True)
        finally:
            proc.terminate()
            proc.wait(10)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

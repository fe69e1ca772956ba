"""Start the sandbox targets together, for the demo and for manual trials (`outbound sandbox`)."""

import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from typing import Iterator

from sandbox.scim import ScimSandbox


@dataclass
class Sandboxes:
    scim: ScimSandbox
    extra: dict = field(default_factory=dict)

    def describe(self) -> list[str]:
        return [f"SCIM 2.0     {self.scim.url}  (bearer token {self.scim.token})"]

    def config_yaml(self, token_env: str = "SANDBOX_SCIM_TOKEN") -> str:
        """A configuration file for these sandboxes (secrets stay in env vars it names)."""
        return (
            "tenant_domain: example.com\n"
            "retry: {attempts: 4, base_delay: 0.2, max_delay: 5}\n"
            "connectors:\n"
            "  - name: scim-app\n"
            "    type: scim2\n"
            "    scim2:\n"
            f"      base_url: {self.scim.url}\n"
            f"      auth: {{type: bearer, token: env:{token_env}}}\n"
        )


@contextmanager
def started(scim_port: int = 0) -> Iterator[Sandboxes]:
    with ExitStack() as stack:
        scim = stack.enter_context(ScimSandbox(port=scim_port))
        yield Sandboxes(scim=scim)


def run_forever(scim_port: int = 0) -> None:
    with started(scim_port) as boxes:
        for line in boxes.describe():
            print(line, flush=True)
        print("Sandbox tokens are throw-away test values. Ctrl-C stops.", flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

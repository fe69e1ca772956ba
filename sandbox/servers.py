"""Start the sandbox targets together, for the demo and for manual trials (`outbound sandbox`)."""

import json
import os
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Iterator

from sandbox.google import GoogleSandbox
from sandbox.salesforce import SalesforceSandbox
from sandbox.scim import ScimSandbox


@dataclass
class Sandboxes:
    scim: ScimSandbox
    google: GoogleSandbox
    salesforce: SalesforceSandbox

    def describe(self) -> list[str]:
        return [f"SCIM 2.0     {self.scim.url}",
                f"Google       {self.google.url}  (domain {self.google.domains[0]}, admin {self.google.admins[0]})",
                f"Salesforce   {self.salesforce.url}  (CA file {self.salesforce.ca_file})"]

    def export_secrets(self) -> None:
        """Put the sandboxes' throw-away credentials where the configuration's references point."""
        os.environ["SANDBOX_SCIM_TOKEN"] = self.scim.token
        os.environ["SANDBOX_GOOGLE_KEY"] = json.dumps(self.google.service_account_info())

    def config_yaml(self) -> str:
        """A configuration file for these sandboxes; secrets stay behind env:/file: references."""
        return f"""tenant_domain: example.com
retry: {{attempts: 4, base_delay: 0.2, max_delay: 5}}
connectors:
  - name: scim-app
    type: scim2
    groups: [all-staff]
    scim2:
      base_url: {self.scim.url}
      auth: {{type: bearer, token: env:SANDBOX_SCIM_TOKEN}}
  - name: google-main
    type: google
    pattern: "{{UN}}"
    domain: {self.google.domains[0]}
    deprovision: suspend
    google:
      service_account_key: env:SANDBOX_GOOGLE_KEY
      admin_email: {self.google.admins[0]}
      api_base_url: {self.google.url}
  - name: salesforce
    type: salesforce
    roles: [sales]
    pattern: "{{UN}}"
    domain: example.com
    deprovision: disable
    salesforce:
      login_url: {self.salesforce.url}
      ca_bundle: {self.salesforce.ca_file}
      auth: {{type: jwt, client_id: {self.salesforce.client_id}, username: {self.salesforce.username},
              private_key: "file:{self.salesforce.private_key_file}"}}
"""


@contextmanager
def started(scim_port: int = 0) -> Iterator[Sandboxes]:
    with ExitStack() as stack:
        yield Sandboxes(scim=stack.enter_context(ScimSandbox(port=scim_port)),
                        google=stack.enter_context(GoogleSandbox()),
                        salesforce=stack.enter_context(SalesforceSandbox()))


def run_forever(scim_port: int = 0, config_file: str = "outbound-sandbox.yaml") -> None:
    with started(scim_port) as boxes:
        for line in boxes.describe():
            print(line, flush=True)
        with open(config_file, "w") as f:
            f.write(boxes.config_yaml())
        print(f"\nWrote {config_file}. Its secrets are env references; in another shell:\n"
              f"  export SANDBOX_SCIM_TOKEN={boxes.scim.token}\n"
              f"  export SANDBOX_GOOGLE_KEY=\"$(cat {config_file}.google-key.json)\"\n"
              f"  outbound event my-event.json --config {config_file}\n"
              "These are throw-away sandbox credentials. Ctrl-C stops.", flush=True)
        with open(f"{config_file}.google-key.json", "w") as f:
            json.dump(boxes.google.service_account_info(), f)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass

"""The operator's command line: `outbound …`, assembled from one module per command group.

Exit codes: 0 everything succeeded or was skipped by policy; 1 an operation failed; 2 bad input
(a clear message naming the field; nothing stored).
"""

import typer

from deployments.cli import (catalog, check, db, events, groups, policy, prune, pull, reconcile, sandbox,
                             service, status)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Outbound provisioning: push users from the identity store to Google, Salesforce and SCIM 2.0.")
# Unnamed: each module's commands join the top level, in this order (the order of `outbound --help`).
for commands in (events, sandbox, check, policy, groups, prune, pull, reconcile, service, status):
    app.add_typer(commands.app)
app.add_typer(db.app, name="db")
app.add_typer(catalog.app, name="deployments")


def main() -> None:
    from deployments.prefect_api import exit_on_sigterm

    exit_on_sigterm()  # a stopped command still stops the temporary Prefect API it started
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130)

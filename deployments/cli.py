"""The operator's command line: `outbound …`, assembled from the command modules.

Exit codes: 0 everything succeeded or was skipped by policy; 1 an operation failed; 2 bad input
(a clear message naming the field; nothing stored).
"""

import typer

from deployments import (commands_check, commands_db, commands_deployments, commands_events, commands_groups,
                         commands_policy, commands_prune, commands_pull, commands_reconcile, commands_sandbox,
                         commands_service)

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="Outbound provisioning: push users from the identity store to Google, Salesforce and SCIM 2.0.")
# Unnamed: each module's commands join the top level, in this order (the order of `outbound --help`).
for commands in (commands_events, commands_sandbox, commands_check, commands_policy, commands_groups, commands_prune,
                 commands_pull, commands_reconcile, commands_service):
    app.add_typer(commands.app)
app.add_typer(commands_db.app, name="db")
app.add_typer(commands_deployments.app, name="deployments")


def main() -> None:
    from deployments.prefect_api import exit_on_sigterm

    exit_on_sigterm()  # a stopped command still stops the temporary Prefect API it started
    try:
        app()
    except KeyboardInterrupt:
        raise SystemExit(130)


if __name__ == "__main__":
    main()

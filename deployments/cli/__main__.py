"""`python -m deployments.cli …`: the `outbound` command without its console script."""

from deployments.cli import main

main()

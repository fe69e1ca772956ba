"""CLI command: pull (the directory in sources.ldap into the outbox).

Exit codes: 0 pulled; 1 the directory could not be read, or entries were refused (each named by its
DN and attribute; the others' events are stored, the watermark is not moved); 2 bad configuration;
3 the pull would delete more users than max_deletions (nothing stored); 4 another pull of the
directory was running (nothing done).
"""

from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import ConfigOption, fail, prefect_ready, quiet_prefect, read_config

app = typer.Typer()


@app.command()
def pull(full: bool = typer.Option(False, "--full", help="Read every entry (also finds deletes), not only "
                                                       "those changed since the last pull."),
         max_deletions: Optional[int] = typer.Option(None, "--max-deletions", min=0,
                                                     help="Allow this many deletes in this pull (overrides "
                                                          "sources.ldap.max_deletions once)."),
         config: Optional[Path] = ConfigOption,
         verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs.")) -> None:
    """Read the directory (sources.ldap) and store what changed as events for the drain."""
    from connectors.ldap import DirectoryError
    from flows.pull import pull_directory
    from models.errors import LockTimeout, SecretError
    from tasks.pull import PullFailed

    quiet_prefect(verbose)
    cfg = read_config(config)
    if cfg.sources.ldap is None:
        fail("sources.ldap is not configured: there is no directory to pull (see docs/sources.md)")
    prefect_ready()
    try:
        result = pull_directory(full=full, max_deletions=max_deletions, config_path=str(config) if config else None)
    except PullFailed as exc:
        if exc.result.events:
            typer.echo(f"stored: {', '.join(f'{n} {t}' for t, n in sorted(exc.result.events.items()))}", err=True)
        fail(str(exc), 3 if exc.result.stopped_by_guard else 1)
    except LockTimeout as exc:
        fail(f"{cfg.sources.ldap.name}: not pulled: another pull is running ({exc}); nothing was done.", 4)
    except (DirectoryError, SecretError) as exc:
        fail(f"{cfg.sources.ldap.name}: not pulled: {exc}. Nothing was stored; the watermark was not moved.", 1)
    counts = ", ".join(f"{n} {t}" for t, n in sorted(result["events"].items())) or "no changes"
    kind = "full" if result["full"] else "incremental"
    typer.echo(f"{result['directory']}: {kind} pull ({result['why']}): {result['users_read']} users, "
               f"{result['groups_read']} groups read in {result['seconds']} s; {counts}")

"""CLI commands: import, reconcile.

Exit codes (reconcile): 0 done; 1 some rows failed; 2 bad input; 3 the plan needs --yes (it deletes or
disables more than the connector's max_deletions); 4 another reconciliation of a connector was running
(still after --wait seconds): nothing was done to that connector.

Without -v the terminal shows the progress bar and then the result only; Prefect's logs still go to
the Prefect API (the run's Logs tab), only its console handler is silenced.
"""

import csv
from pathlib import Path
from typing import Optional

import typer

from deployments.cli.console import (ConfigOption, action_name, fail, prefect_ready, prefect_soon, quiet_prefect,
                                     read_config)
from deployments.cli.guard import STOPPED_STATUSES, dry_run_verdict, stopped_line
from models.kinds import Action, RunStatus

app = typer.Typer()

IMPORT_COLUMNS = ("username", "user_store", "email", "given_name", "family_name", "display_name", "active",
                  "roles", "groups")
_TRUE, _FALSE = {"true", "yes", "1", "y"}, {"false", "no", "0", "n"}


def read_table(file: Path) -> tuple[list[str], list[dict[str, str]]]:
    """The CSV's column names and its rows, every cell a string; ValueError says what cannot be read.

    UTF-8 (a leading byte-order mark dropped); blank lines skipped; a short row's missing cells are
    empty. A row longer than the header, or a quote left open, is refused: its cells have no columns.
    """
    header, rows = None, []
    with file.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, strict=True)
        try:
            for cells in reader:
                if not cells or (len(cells) == 1 and cells[0].isspace()):
                    continue
                if header is None:
                    header = cells
                elif len(cells) > len(header):
                    raise ValueError(f"line {reader.line_num}: {len(cells)} cells, the header has {len(header)}")
                else:
                    rows.append(dict(zip(header, cells + [""] * (len(header) - len(cells)))))
        except csv.Error as exc:
            raise ValueError(f"line {reader.line_num}: {exc}") from exc
    if header is None:
        raise ValueError("the file is empty (no header line)")
    twice = sorted({c for c in header if header.count(c) > 1})
    if twice:
        raise ValueError(f"columns named twice: {', '.join(twice)}")
    return header, rows


def parse_rows(rows: list[dict[str, str]], config=None) -> tuple[list, list[str]]:
    """Validate each CSV row as an event's user; return (good EventUsers, error lines: every bad field of a row)."""
    from pydantic import ValidationError

    from models.events import EventUser
    from models.validation import message_of

    good, errors = [], []
    for number, row in enumerate(rows, start=2):  # line 1 is the header
        data = {k: v.strip() for k, v in row.items() if v.strip() != ""}
        for key in ("roles", "groups"):
            if key in data:
                data[key] = [p.strip() for p in data[key].split(";") if p.strip()]
        # `attributes.<key>` columns: the user's free-form attributes (what connectors' mappings read).
        attributes = {k[len("attributes."):]: data.pop(k) for k in list(data) if k.startswith("attributes.")}
        if attributes:
            data["attributes"] = attributes
        problems = []
        if "active" in data:
            flag = data.pop("active").lower()
            if flag in _TRUE | _FALSE:
                data["active"] = flag in _TRUE
            else:
                problems.append(f"row {number}: active: {row['active']!r}: must be true or false")
        try:
            user = EventUser.model_validate(data)
        except ValidationError as exc:
            user = None
            for err in exc.errors():
                where = ".".join(str(p) for p in err["loc"]) or "(row)"
                name = str(err["loc"][0]) if err["loc"] else ""
                problems.append(f"row {number}: {where}: {row.get(name, '')!r}: {message_of(err)}")
        if user is not None and config is not None:  # an import creates users: the store's rule applies
            rule = config.username_rule(user.user_store)
            problem = rule.problem("username", user.username, user.user_store)
            if problem:
                problems.append(f"row {number}: {problem}")
        if problems:
            errors += sorted(problems, key=lambda p: _column_order(p, number))
        else:
            good.append((number, user))
    return good, errors


def _column_order(problem: str, number: int) -> int:
    column = problem.removeprefix(f"row {number}: ").split(":", 1)[0].split(".")[0]
    return IMPORT_COLUMNS.index(column) if column in IMPORT_COLUMNS else len(IMPORT_COLUMNS)


@app.command("import")
def import_users(file: Path = typer.Argument(..., help="CSV with columns " + ", ".join(IMPORT_COLUMNS) +
                                             " (roles and groups separated by ';') and any attributes.<key> "
                                             "(the user's attributes)."),
                 config: Optional[Path] = ConfigOption) -> None:
    """Upsert users from a CSV file into the identity store (trigger `import`); bad rows are reported."""
    from models.db import session_scope
    from models.user_import import import_users as store_users

    cfg = read_config(config)
    try:
        columns, rows = read_table(file)
    except (OSError, ValueError) as exc:
        fail(f"cannot read {file}: {exc}")
    unknown = [c for c in columns if c not in IMPORT_COLUMNS
               and not (c.startswith("attributes.") and len(c) > len("attributes."))]
    if unknown or "username" not in columns:
        fail(f"{file}: unknown columns {', '.join(repr(c) if c == '' else c for c in unknown) or '-'}; "
             f"expected {', '.join(IMPORT_COLUMNS)} or attributes.<key> (username is required)")
    good, errors = parse_rows(rows, cfg)
    with session_scope() as session:
        store_users(session, [user for _, user in good], cfg.tenant_domain, source="import")
    typer.echo(f"imported {len(good)} users from {file}; {len(rows) - len(good)} rows rejected")
    for line in errors:
        typer.echo(line, err=True)
    raise typer.Exit(2 if errors else 0)


def plan_line(result: dict, connector_type: Optional[str]) -> str:
    """The plan's summary in the target's words (Google: suspend, not disable)."""
    counts = ", ".join(f"{action_name(k, connector_type)} {v}" for k, v in result["counts"].items() if v)
    sizes = (f"{result['desired_count']} desired, {result['target_count']} in the target "
             f"({result['unmanaged']} unmanaged); " if "desired_count" in result else "")
    return (f"{result['connector']}: {sizes}plan: {counts or 'nothing to do'}; "
            f"deletes+{action_name(Action.DISABLE, connector_type)}s {result['deletions']} "
            f"(limit {result['threshold']})")


def _print_result(result: dict, connector_type: Optional[str] = None) -> None:
    name = result["connector"]
    if result["status"] == RunStatus.BUSY:
        typer.echo(f"{name}: busy: {result['message']}; nothing done (try again later, or pass "
                   f"--wait SECONDS)", err=True)
        return
    typer.echo(plan_line(result, connector_type))
    for problem in result.get("problems", []):
        typer.echo(f"{name}: problem: {problem}", err=True)
    o = result["outcomes"]
    if result["dry_run"]:
        guard = dry_run_verdict(result)
        typer.echo(f"{name}: dry run, nothing written: would apply {o['succeeded']}, would fail {o['failed']}, "
                   f"skipped {o['skipped']}; {guard}")
    elif result["status"] in STOPPED_STATUSES:
        typer.echo(stopped_line(result), err=True)
    else:
        unknown = f", outcome_unknown {o['outcome_unknown']}" if o.get("outcome_unknown") else ""
        typer.echo(f"{name}: {result['status']}: succeeded {o['succeeded']}, failed {o['failed']}, "
                   f"skipped {o['skipped']}{unknown}")
    for f in result.get("failures", [])[:20]:
        typer.echo(f"  {f.get('status', 'failed')} {action_name(f['action'], connector_type)} {f['user']}: {f['error']}")
    for path in result.get("reports") or ():
        typer.echo(f"{name}: plan rows written to {path}")
    if result.get("flow_run_id"):
        from tasks.explain import run_url

        typer.echo(f"{name}: run {run_url(result['flow_run_id'])}")


@app.command()
def reconcile(connector: Optional[str] = typer.Option(None, "--connector", help="Only this connector (default: all)."),
              dry_run: bool = typer.Option(False, "--dry-run", help="Show the plan; change nothing."),
              yes: bool = typer.Option(False, "--yes", help="Apply even when the plan deletes or disables more "
                                                            "than max_deletions."),
              report: Optional[Path] = typer.Option(None, "--report", help="Write the plan rows to this CSV."),
              wait: float = typer.Option(0.0, "--wait", min=0, help="When another reconciliation of the connector "
                                                                   "is running, wait up to this many seconds for it."),
              config: Optional[Path] = ConfigOption,
              verbose: bool = typer.Option(False, "--verbose", "-v", help="Show Prefect's logs.")) -> None:
    """Compare each target with the desired state and apply the difference, in-process."""
    prefect_soon()  # it starts while the flows are imported and the configuration read
    import asyncio

    from rich.progress import Progress

    from connectors.errors import ProvisioningError
    from flows.reconcile import preload, reconcile as reconcile_flow
    from tasks.apply import progress_listeners
    from tasks.door import TargetQuarantined

    quiet_prefect(verbose)
    cfg = read_config(config)
    preload(cfg)
    names = [connector] if connector else [c.name for c in cfg.connectors if c.enabled]
    if connector and connector not in [c.name for c in cfg.connectors]:
        fail(f"no connector {connector!r} in the configuration")
    prefect_ready()
    results, quarantined = [], []
    with Progress(transient=True) as progress:
        for name in names:
            bar = progress.add_task(f"{'dry-run ' if dry_run else ''}{name}", total=None)

            def listener(done: int, total: int, bar=bar) -> None:
                progress.update(bar, completed=done, total=total or 1)

            progress_listeners.append(listener)
            try:
                path = None
                if report:
                    path = str(report) if len(names) == 1 else str(report.with_stem(f"{report.stem}-{name}"))
                results.append(asyncio.run(reconcile_flow(name, trigger="cli", dry_run=dry_run,
                                                          config_path=str(config) if config else None,
                                                          yes=yes, report=path, lock_wait=wait)))
            except TargetQuarantined as exc:  # this connector only: the others are reconciled as usual
                quarantined.append(name)
                typer.echo(f"{name}: not reconciled: {exc}", err=True)
            except ProvisioningError as exc:  # the target refused or could not be reached: say so, no traceback
                progress.stop()
                fail(f"{name}: not reconciled: {exc}. Nothing was changed on {name}; check that the target is "
                     f"reachable and its credentials are valid (outbound status), then run again.", 1)
            finally:
                progress_listeners.remove(listener)
    types = {c.name: c.type for c in cfg.connectors}
    for result in results:
        _print_result(result, types.get(result["connector"]))
    if any(r["status"] == RunStatus.STOPPED_BY_GUARD for r in results):
        raise typer.Exit(3)
    if any(r["status"] == RunStatus.BUSY for r in results):
        raise typer.Exit(4)
    raise typer.Exit(1 if quarantined or any(r["outcomes"]["failed"] or r["outcomes"].get("outcome_unknown")
                                             for r in results) else 0)

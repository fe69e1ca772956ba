"""Build at start-up what a drain would otherwise build in its first batch, while other threads run.

Python 3.11 before 3.11.8 (and 3.12 before 3.12.2) can raise a spurious `SystemError: AST
constructor recursion depth mismatch` when two threads build Python AST objects at once (CPython
gh-106905). The engine itself compiles nothing at run time, but a drain's first batch used to
import Prefect's flow engine and every connector's client library, and pydantic completes many of
Prefect's client models on their first use; importing and completing a model reach `ast.parse`
(pydantic reads builtins' signatures and class docstrings that way). In `outbound api` that first
batch ran in two drainer threads at once, beside the request threads. `warm_up` does it all once,
in the thread that creates the drainers, before any of them starts.
"""

import gc
import importlib
import logging

log = logging.getLogger("outbound.warm")

MODULES = (
    "flows.provision", "flows.sweep", "flows.crashed", "tasks.desired", "tasks.provision", "tasks.readback",
    "tasks.explain", "connectors.factory", "connectors.auth", "connectors.http", "connectors.outcome",
    "connectors.probe", "models.secrets", "models.capabilities",
    *(f"connectors.{kind}{part}" for kind in ("scim2", "google", "salesforce")
      for part in ("", ".batch", ".mapping", ".probe", ".transport", ".users")),
    "connectors.scim2.groups", "connectors.google.groups", "connectors.salesforce.auth",
    "prefect.flow_engine", "prefect.task_engine", "prefect.transactions", "prefect.context", "prefect.artifacts",
    "prefect.client.orchestration", "prefect.client.schemas.actions", "prefect.client.schemas.objects",
    "prefect.client.schemas.filters", "prefect.client.schemas.responses", "prefect.client.schemas.sorting",
    "prefect.events", "prefect.logging.handlers", "prefect.runtime.flow_run", "prefect.states",
    "prefect.utilities.visualization", "anyio.streams.memory",
    "fastapi.encoders",  # a flow run's parameters are encoded with it: 0.1 s of import in the first run
    "sqlalchemy.dialects.postgresql", "sqlalchemy.dialects.sqlite",  # both insert flavours, whichever the store
)

_done = False


def import_modules(names) -> None:
    """Import each module now; one that cannot be imported is logged and left out."""
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # a connector's optional library: that connector cannot be configured anyway
            log.warning("not imported ahead: %s (%s)", name, exc)


def warm_up() -> int:
    """Import the drain's modules and complete every pydantic model left for its first use; return how many. Once."""
    global _done
    if _done:
        return 0
    import_modules(MODULES)
    from prefect.utilities.context import get_flow_run_id, get_task_run_id

    get_flow_run_id(), get_task_run_id()  # each subscripts typing with a string: cached once built
    from models.availability import store_up

    store_up()  # the store's driver and dialect, and its migrations on first use; down now is no matter here
    completed = _complete_models()
    # What is built by now lives as long as the process: the collector need not walk it again. A full
    # collection walked it all, every thread stopped, 0.1–0.25 s each, 2–4 times in a 2,000-event drain.
    gc.collect()  # start-up's own garbage first, or it would be kept for good
    gc.freeze()
    _done = True
    return completed


def _complete_models() -> int:
    """Build now the schemas pydantic would build lazily on a model's first use (in whatever thread uses it)."""
    from pydantic import BaseModel

    completed, seen, todo = 0, set(), [BaseModel]
    while todo:
        for model in todo.pop().__subclasses__():
            if model in seen:
                continue
            seen.add(model)
            todo.append(model)
            if getattr(model, "__pydantic_complete__", True):
                continue
            try:
                if model.model_rebuild(raise_errors=False):
                    completed += 1
            except Exception:  # a generic origin or a model whose references never resolve: left as it was
                pass
    return completed

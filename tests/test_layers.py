"""Layering: SQL is built in models/ only; tasks, flows, deployments, connectors and the sandbox call its functions."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NOT_MODELS = ("tasks", "flows", "deployments", "connectors", "sandbox")
SQL = {"select", "update", "insert", "delete", "text", "func"}
SQL_MODULES = ("sqlalchemy", "sqlmodel")


def _from_sql(module: str) -> bool:
    return module.split(".")[0] in SQL_MODULES


def _sql_built(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each SQL construct built and each statement executed in a module."""
    names: dict[str, str] = {}  # local name -> the SQL construct imported under it
    modules: set[str] = set()  # local names of sqlalchemy/sqlmodel modules
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and _from_sql(node.module):
            names.update({a.asname or a.name: a.name for a in node.names if a.name in SQL})
            modules.update(a.asname or a.name for a in node.names if a.name not in SQL and a.name.islower())
        elif isinstance(node, ast.Import):
            modules.update(a.asname or a.name.split(".")[0] for a in node.names if _from_sql(a.name))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in names:
            found.append((node.lineno, names[node.id]))
        elif isinstance(node, ast.Attribute) and node.attr in SQL and _root(node.value) in modules:
            found.append((node.lineno, node.attr))
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            receiver = node.func.value
            on_session = "session" in ast.unparse(receiver).lower()
            if node.func.attr == "exec" or (node.func.attr == "execute" and on_session):
                found.append((node.lineno, f"{ast.unparse(receiver)}.{node.func.attr}"))
    return sorted(set(found))


def _root(node: ast.AST) -> str:
    """The name an attribute chain or call starts from (`session` for `self.session.bind`)."""
    while isinstance(node, (ast.Attribute, ast.Call)):
        node = node.value if isinstance(node, ast.Attribute) else node.func
    return node.id if isinstance(node, ast.Name) else ""


def test_the_checker_sees_sql_however_it_is_imported():
    source = ("import sqlalchemy as sa\nfrom sqlmodel import select as pick, Session\n"
              "from sqlalchemy.dialects.postgresql import insert\n"
              "def f(session, db):\n    session.exec(pick(X))\n    sa.func.count()\n    insert(X)\n"
              "    db.session.execute(q)\n    Session(bind)\n    cursor.execute('PRAGMA x')\n")
    assert [w for _, w in _sql_built(ast.parse(source))] == ["select", "session.exec", "func", "insert",
                                                             "db.session.execute"]


def test_no_sql_outside_models():
    offences = []
    for package in NOT_MODELS:
        for path in sorted((ROOT / package).rglob("*.py")):
            for line, what in _sql_built(ast.parse(path.read_text(), str(path))):
                offences.append(f"{path.relative_to(ROOT)}:{line}: {what}")
    assert not offences, "SQL built outside models/ (add a store function there):\n" + "\n".join(offences)


# The store's unit-of-work calls, refused outside models/ as SQL is: each aggregate's module in models/
# (outbox, runstate, health, ...) adds, reads and removes its own rows.
STORE_CALLS = {"add", "add_all", "get", "delete", "merge"}
# Calls that look like the store's but are not, each with its reason.
NOT_THE_STORE = {
    ("connectors/google/probe.py", "session.get"): "a requests.Session: an HTTP GET to the Directory API",
    ("connectors/salesforce/probe.py", "session.get"): "a requests.Session: an HTTP GET to the REST API",
}


def _store_calls(tree: ast.AST) -> list[tuple[int, str]]:
    """(line, what) of each `<session>.add/get/delete/merge(...)` in a module: a receiver that is a name or
    an attribute naming a session (`session`, `self.session`), not a call's result (`members(session).get`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in STORE_CALLS:
            receiver = node.func.value
            named = receiver.id if isinstance(receiver, ast.Name) else \
                receiver.attr if isinstance(receiver, ast.Attribute) else ""
            if "session" in named.lower():
                found.append((node.lineno, f"{ast.unparse(receiver)}.{node.func.attr}"))
    return sorted(set(found))


def test_the_checker_sees_store_calls():
    source = ("def f(session, self, s):\n    session.add(x)\n    self.session.get(X, 1)\n    session.delete(x)\n"
              "    session.merge(x)\n    s.add(x)\n    session.flush()\n    d.get('k')\n"
              "    members(session).get('g')\n    build_session(cfg).get(url)\n")
    assert [w for _, w in _store_calls(ast.parse(source))] == ["session.add", "self.session.get", "session.delete",
                                                                "session.merge"]


def test_no_store_calls_outside_models():
    offences, excepted = [], set()
    for package in NOT_MODELS:
        for path in sorted((ROOT / package).rglob("*.py")):
            where = str(path.relative_to(ROOT))
            for line, what in _store_calls(ast.parse(path.read_text(), where)):
                if (where, what) in NOT_THE_STORE:
                    excepted.add((where, what))
                else:
                    offences.append(f"{where}:{line}: {what}")
    assert excepted == set(NOT_THE_STORE), "an exception no longer needed: remove it"
    assert not offences, ("the store used outside models/ (add a function to the aggregate's module there):\n"
                          + "\n".join(offences))

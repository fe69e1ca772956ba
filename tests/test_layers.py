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

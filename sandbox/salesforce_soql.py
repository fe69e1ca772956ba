"""SOQL for the Salesforce sandbox, parsed just enough for what a provisioning connector sends.

`SELECT f, ... FROM <entity> [WHERE cond] [ORDER BY f [ASC|DESC]] [LIMIT n]`, where cond combines
`f = | != | LIKE value`, `f [NOT] IN (values)` with AND/OR/NOT and parentheses, and string literals
honour SOQL's escapes. Text comparison is case-insensitive, as Salesforce's is.
"""

import re

from sandbox.salesforce_errors import SfError

_LIKE_UNDERSCORE, _LIKE_PERCENT = "\ue000", "\ue001"  # \_ and \% inside a literal
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", "b": "\b", "f": "\f", '"': '"', "'": "'", "\\": "\\",
            "_": _LIKE_UNDERSCORE, "%": _LIKE_PERCENT}
_TOKEN = re.compile(r"\s*(?:(?P<op>!=|<>|<=|>=|[=<>(),])|(?P<num>\d+(?:\.\d+)?)|(?P<word>[A-Za-z_][A-Za-z0-9_.]*)|(?P<quote>'))")


def malformed(message: str) -> SfError:
    return SfError(400, "MALFORMED_QUERY", message)


def soql_tokens(text: str) -> list[tuple[str, object]]:
    """Split SOQL into (kind, value) tokens; string literals are un-escaped."""
    tokens, pos = [], 0
    while True:
        while pos < len(text) and text[pos].isspace():
            pos += 1
        if pos >= len(text):
            return tokens
        match = _TOKEN.match(text, pos)
        if not match:
            raise malformed(f"unexpected token at position {pos}: {text[pos:pos + 20]!r}")
        pos = match.end()
        if match.group("op"):
            tokens.append(("op", match.group("op")))
        elif match.group("num"):
            tokens.append(("num", float(match.group("num"))))
        elif match.group("word"):
            tokens.append(("word", match.group("word")))
        else:
            out = []
            while True:
                if pos >= len(text):
                    raise malformed("unterminated string literal")
                ch = text[pos]
                if ch == "'":
                    pos += 1
                    break
                if ch == "\\":
                    nxt = text[pos + 1:pos + 2]
                    if nxt.lower() == "u" and re.fullmatch(r"[0-9a-fA-F]{4}", text[pos + 2:pos + 6]):
                        out.append(chr(int(text[pos + 2:pos + 6], 16)))
                        pos += 6
                        continue
                    key = nxt if nxt in ('"', "'", "\\", "_", "%") else nxt.lower()
                    if key not in _ESCAPES:
                        raise malformed(f"invalid escape sequence \\{nxt} in a string literal")
                    out.append(_ESCAPES[key])
                    pos += 2
                    continue
                out.append(ch)
                pos += 1
            tokens.append(("str", "".join(out)))


class Parser:
    def __init__(self, text: str, schemas: dict[str, tuple[str, ...]]):
        self.tokens = soql_tokens(text)
        self.i = 0
        self.schemas = schemas

    def peek_word(self) -> str:
        kind, value = self.tokens[self.i] if self.i < len(self.tokens) else ("end", None)
        return value.upper() if kind == "word" else ""

    def take(self, kind: str | None = None, value: str | None = None):
        if self.i >= len(self.tokens):
            raise malformed("unexpected end of query")
        tok = self.tokens[self.i]
        if (kind and tok[0] != kind) or (value and str(tok[1]).upper() != value):
            raise malformed(f"unexpected token: {tok[1]!r}" + (f" (expected {value})" if value else ""))
        self.i += 1
        return tok[1]

    def field(self, name: str) -> str:
        for f in self.schemas[self.entity]:
            if f.lower() == name.lower():
                return f
        raise SfError(400, "INVALID_FIELD", f"No such column '{name}' on entity '{self.entity}'. If you are "
                                            "attempting to use a custom field, be sure to append the '__c' "
                                            "after the custom field name.")

    def parse(self):
        self.take("word", "SELECT")
        names = [self.take("word")]
        while self.i < len(self.tokens) and self.tokens[self.i] == ("op", ","):
            self.i += 1
            names.append(self.take("word"))
        self.take("word", "FROM")
        entity = self.take("word")
        self.entity = next((e for e in self.schemas if e.lower() == entity.lower()), None)
        if self.entity is None:
            raise SfError(400, "INVALID_TYPE", f"sObject type '{entity}' is not supported.")
        fields = [self.field(n) for n in names]
        where = lambda record: True  # noqa: E731
        order, descending, limit = None, False, None
        if self.peek_word() == "WHERE":
            self.i += 1
            where = self.expr()
        if self.peek_word() == "ORDER":
            self.i += 1
            self.take("word", "BY")
            order = self.field(self.take("word"))
            if self.peek_word() in ("ASC", "DESC"):
                descending = self.take("word").upper() == "DESC"
        if self.peek_word() == "LIMIT":
            self.i += 1
            limit = int(self.take("num"))
        if self.i != len(self.tokens):
            raise malformed(f"unexpected token: {self.tokens[self.i][1]!r}")
        return self.entity, fields, where, order, descending, limit

    def expr(self):
        return self._joined("OR", self.term, lambda a, b: lambda r: a(r) or b(r))

    def term(self):
        return self._joined("AND", self.factor, lambda a, b: lambda r: a(r) and b(r))

    def _joined(self, word: str, part, join):
        left = part()
        while self.peek_word() == word:
            self.i += 1
            left = join(left, part())
        return left

    def factor(self):
        if self.peek_word() == "NOT":
            self.i += 1
            inner = self.factor()
            return lambda r: not inner(r)
        if self.i < len(self.tokens) and self.tokens[self.i] == ("op", "("):
            self.i += 1
            inner = self.expr()
            self.take("op", ")")
            return inner
        name = self.field(self.take("word"))
        word = self.peek_word()
        if word in ("IN", "NOT"):
            negate = word == "NOT"
            self.i += 1
            if negate:
                self.take("word", "IN")
            self.take("op", "(")
            values = [self.value()]
            while self.i < len(self.tokens) and self.tokens[self.i] == ("op", ","):
                self.i += 1
                values.append(self.value())
            self.take("op", ")")
            return lambda r: any(_equal(r.get(name), v) for v in values) != negate
        if word == "LIKE":
            self.i += 1
            pattern = _like_regex(self.take("str"))
            return lambda r: isinstance(r.get(name), str) and bool(pattern.fullmatch(r[name]))
        op = self.take("op")
        value = self.value()
        if op == "=":
            return lambda r: _equal(r.get(name), value)
        if op in ("!=", "<>"):
            return lambda r: not _equal(r.get(name), value)
        raise malformed(f"operator {op} is not supported by this sandbox")

    def value(self):
        if self.i >= len(self.tokens):
            raise malformed("unexpected end of query")
        kind, value = self.tokens[self.i]
        self.i += 1
        if kind == "str":
            return value.replace(_LIKE_UNDERSCORE, "_").replace(_LIKE_PERCENT, "%")
        if kind == "num":
            return value
        if kind == "word" and value.upper() in ("TRUE", "FALSE", "NULL"):
            return {"TRUE": True, "FALSE": False, "NULL": None}[value.upper()]
        raise malformed(f"unexpected value: {value!r}")


def _equal(a, b) -> bool:
    if isinstance(a, str) and isinstance(b, str):
        return a.lower() == b.lower()  # SOQL text comparison is case-insensitive
    return a == b


def _like_regex(pattern: str) -> re.Pattern:
    out = []
    for ch in pattern:
        out.append({"%": ".*", "_": ".", _LIKE_PERCENT: "%", _LIKE_UNDERSCORE: "_"}.get(ch) or re.escape(ch))
    return re.compile("".join(out), re.IGNORECASE | re.DOTALL)


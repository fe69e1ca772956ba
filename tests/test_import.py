"""`outbound import FILE.csv`: good rows are upserted (trigger import), bad rows are reported by row and field."""

from sqlmodel import select
from typer.testing import CliRunner

from deployments.cli import app
from models.db import session_scope
from models.identity import find_user, groups_of, roles_of
from models.tables import User

runner = CliRunner()


def test_import_keeps_good_rows_and_reports_bad_ones(tmp_path, sqlite_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nconnectors: []\n")
    csv = tmp_path / "users.csv"
    csv.write_text(
        "username,user_store,email,given_name,family_name,display_name,active,roles,groups\n"
        "alice,PRIMARY,alice@example.com,Alice,Liddell,Alice L,true,sales;admin,staff\n"
        "bob,,not-an-email,Bob,,,true,,\n"
        "carol,SECONDARY,carol@example.com,Carol,,,maybe,,\n"
        ",PRIMARY,nobody@example.com,,,,,,\n"
        "dave,PRIMARY,dave@example.com,,,,false,,staff; ops\n")
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "imported 2 users" in result.output and "3 rows rejected" in result.output
    assert "row 3: email: 'not-an-email'" in result.output
    assert "row 4: active: 'maybe'" in result.output
    assert "row 5: username: ''" in result.output
    with session_scope() as session:
        alice = find_user(session, "example.com", "PRIMARY", "alice")
        assert alice.source == "import" and alice.email == "alice@example.com" and alice.active
        assert roles_of(session, alice.id) == {"sales", "admin"} and groups_of(session, alice.id) == {"staff"}
        dave = find_user(session, "example.com", "PRIMARY", "dave")
        assert dave.active is False and groups_of(session, dave.id) == {"staff", "ops"}
        assert {u.username for u in session.exec(select(User))} == {"alice", "dave"}

    # Importing again updates in place: no duplicates.
    csv.write_text("username,email\nalice,alice.l@example.com\n")
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
    assert result.exit_code == 0, result.output
    with session_scope() as session:
        assert find_user(session, "example.com", "PRIMARY", "alice").email == "alice.l@example.com"
        assert len(session.exec(select(User)).all()) == 2


def test_import_reports_every_bad_field_of_a_row(tmp_path, sqlite_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nconnectors: []\n"
                      "user_stores: {LDAP: {username_pattern: '^[a-z]+$', username_description: lower-case letters}}\n")
    csv = tmp_path / "users.csv"
    csv.write_text("username,user_store,email,active,given_name\n"
                   "erin,no spaces,not-an-email,maybe," + "x" * 300 + "\n"
                   "Frank,LDAP,frank@example.com,true,Frank\n"
                   "gus,,gus@example.com,true,Gus\n")
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
    assert result.exit_code == 2, result.output
    assert "imported 1 users" in result.output and "2 rows rejected" in result.output
    lines = [line for line in result.output.splitlines() if line.startswith("row 2: ")]
    assert [line.split(":")[0:2] for line in lines] == [["row 2", " user_store"], ["row 2", " email"],
                                                        ["row 2", " given_name"], ["row 2", " active"]], lines
    assert "must be an email address such as name@example.com" in result.output and "^[" not in result.output
    assert "row 3: username: 'Frank' does not follow the username rule of user store LDAP: lower-case letters" \
        in result.output
    with session_scope() as session:
        assert {u.username for u in session.exec(select(User))} == {"gus"}


def test_attribute_columns_set_the_users_attributes(tmp_path, sqlite_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nconnectors: []\n")
    csv = tmp_path / "users.csv"
    csv.write_text("username,attributes.dept,attributes.title\nalice,R&D,Engineer\nbob,,\n")
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
    assert result.exit_code == 0, result.output
    csv.write_text("username,attributes.dept,attributes.\nalice,Ops,x\n")
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
    assert result.exit_code == 2 and "unknown columns attributes." in result.output, result.output
    csv.write_text("username,attributes.dept\nalice,Ops\n")
    assert runner.invoke(app, ["import", str(csv), "--config", str(config)]).exit_code == 0
    with session_scope() as session:
        alice = find_user(session, "example.com", "PRIMARY", "alice")
        assert alice.attributes == {"dept": "Ops", "title": "Engineer"}  # a later import changes what it gives
        assert find_user(session, "example.com", "PRIMARY", "bob").attributes == {}


# Files as spreadsheets and scripts write them, and what each row reads as. These are what pandas'
# read_csv(dtype=str, keep_default_na=False), the reader before this one, read too.
READ_AS_BEFORE = {
    "username,email\n\nalice,a@x.io\n  \n\t\nbob,b@x.io\n\n": [["alice", "a@x.io"], ["bob", "b@x.io"]],
    "\ufeffusername,email\r\nalice,a@x.io\r\n": [["alice", "a@x.io"]],
    "username,email,given_name\nalice\nbob,b@x.io\n": [["alice", "", ""], ["bob", "b@x.io", ""]],
    'username,display_name\nalice,"A\nL, ""Al"""\nbob,B"b\n': [["alice", 'A\nL, "Al"'], ["bob", 'B"b']],
    'username,email\n""\n,\nNA,null\n': [["", ""], ["", ""], ["NA", "null"]],
    "username,email\n": [],
}


def test_the_file_is_read_as_it_was(tmp_path):
    import pandas as pd

    from deployments.cli.reconcile import read_table

    path = tmp_path / "users.csv"
    for text, cells in READ_AS_BEFORE.items():
        path.write_text(text, encoding="utf-8", newline="")
        columns, rows = read_table(path)
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        assert columns == list(frame.columns)
        assert rows == frame.to_dict(orient="records") == [dict(zip(columns, c)) for c in cells], text


def test_a_file_that_cannot_be_read_is_refused_naming_the_line(tmp_path, sqlite_url):
    config = tmp_path / "outbound.yaml"
    config.write_text("tenant_domain: example.com\nconnectors: []\n")
    csv = tmp_path / "users.csv"
    refused = {
        # Every row one cell longer than the header (a trailing comma): pandas took the first column
        # as the index and read every value one column to the left (alice's email as her username).
        "username,email\nalice,a@x.io,\nbob,b@x.io,\n": "line 2: 3 cells, the header has 2",
        'username,display_name\nalice,"A L\nbob,B\n': "line 3: unexpected end of data",
        "username,email,email\nalice,a@x.io,b@x.io\n": "columns named twice: email",
        "": "the file is empty",
    }
    for text, message in refused.items():
        csv.write_text(text)
        result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
        assert result.exit_code == 2 and f"cannot read {csv}: {message}" in result.output, result.output
    csv.write_bytes("username,display_name\nalice,Ren\xe9\n".encode("latin-1"))
    result = runner.invoke(app, ["import", str(csv), "--config", str(config)])
    assert result.exit_code == 2 and "can't decode byte 0xe9" in result.output, result.output
    with session_scope() as session:
        assert session.exec(select(User)).all() == []

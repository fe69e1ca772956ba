"""Pull N users from a real slapd into the store: a full pull, then an incremental one with 100 changes.

    .venv/bin/python bench/ldap_pull.py 20000             # SQLite state store in a temporary directory
    .venv/bin/python bench/ldap_pull.py 20000 postgresql  # a throwaway database on 127.0.0.1:5432

slapd (sandbox/slapd.py) holds N inetOrgPerson entries and 20 groups of N/20 members, two levels
nested, with two role rules; the service account may read 1,000 entries per search (AD's
MaxPageSize), so the pulls page (page_size 1000). Seeding (ldapadd from an LDIF file) is not timed.
Each figure is printed with the ratio to a bare ldap3 paged search of the same entries, with the
same attributes, in the same run: what the pull costs beyond reading the directory.

The incremental pull's watermark is the latest modifyTimestamp read, and it reads that second
again (`>=`): one sentinel entry is changed a second after the seeding and a second before the
full pull, so the watermark's second holds only it, and the incremental pull returns 100 + 1.
`watermark_overlap_seconds: 0` (the default 60 would also read what changed in the minute before).
"""

import os
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import ldap3  # noqa: E402

from models.config import parse_config  # noqa: E402
from models.db import dispose_all, upgrade  # noqa: E402
from models.directory import requested_attributes  # noqa: E402
from sandbox.slapd import ADMIN_DN, ADMIN_PASSWORD, GROUPS, PEOPLE, SERVICE_DN, SERVICE_PASSWORD, Slapd  # noqa: E402
from tasks.pull import pull  # noqa: E402

ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"
GROUP_COUNT = 20


def seed(server: Slapd, n: int, workdir: Path) -> None:
    lines = []
    for i in range(n):
        lines += [f"dn: uid=user{i:06d},{PEOPLE}", "objectClass: inetOrgPerson", f"uid: user{i:06d}",
                  f"givenName: Given{i}", f"sn: Family{i}", f"cn: Given{i} Family{i}", f"mail: user{i:06d}@example.org",
                  f"departmentNumber: {i % 50}", ""]
    per = n // GROUP_COUNT
    for g in range(GROUP_COUNT):
        members = [f"uid=user{i:06d},{PEOPLE}" for i in range(g * per, (g + 1) * per)]
        if g + 1 < GROUP_COUNT and g % 2 == 0:
            members.append(f"cn=group{g + 1:02d},{GROUPS}")  # even groups contain the next one: nesting
        lines += [f"dn: cn=group{g:02d},{GROUPS}", "objectClass: groupOfNames", f"cn: group{g:02d}",
                  *(f"member: {m}" for m in members), ""]
    path = workdir / "seed.ldif"
    path.write_text("\n".join(lines))
    subprocess.run(["ldapadd", "-x", "-H", server.url, "-D", ADMIN_DN, "-w", ADMIN_PASSWORD, "-f", str(path)],
                   check=True, stdout=subprocess.DEVNULL, timeout=3600)


def bare_search(url: str, ldap_filter: str, attributes: list[str]) -> tuple[int, float]:
    """A bare ldap3 paged search, as the pull's own reads are done: (entries, seconds)."""
    started = time.perf_counter()
    host, port = url.removeprefix("ldap://").split(":")
    conn = ldap3.Connection(ldap3.Server(host, port=int(port), get_info=ldap3.NONE), SERVICE_DN, SERVICE_PASSWORD,
                            auto_bind=True, read_only=True)
    count = sum(1 for e in conn.extend.standard.paged_search(PEOPLE, ldap_filter, ldap3.SUBTREE,
                                                               attributes=attributes, paged_size=1000, generator=True)
                if e.get("type") == "searchResEntry")
    conn.unbind()
    return count, time.perf_counter() - started


def database(kind: str, workdir: Path):
    if kind == "sqlite":
        return f"sqlite:///{workdir}/state.db", None
    import psycopg

    name = f"outbound_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", name


def main(n: int, kind: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="outbound-ldap-bench-"))
    url, pg_name = database(kind, workdir)
    os.environ["OUTBOUND_DATABASE_URL"] = url
    os.environ["BENCH_LDAP_PASSWORD"] = SERVICE_PASSWORD
    upgrade()
    try:
        with Slapd(size_limit=1000) as server:
            t = time.perf_counter()
            seed(server, n, workdir)
            print(f"seeded {n} users and {GROUP_COUNT} groups in {time.perf_counter() - t:.1f} s (not timed below)")
            sentinel = f"uid=user{0:06d},{PEOPLE}"
            server.wait_past(time.strftime("%Y%m%d%H%M%SZ", time.gmtime()))
            server.modify(sentinel, description="sentinel")
            server.wait_past(time.strftime("%Y%m%d%H%M%SZ", time.gmtime()))
            config = parse_config({"tenant_domain": "example.com", "sources": {"ldap": {
                "url": server.url, "bind": {"dn": SERVICE_DN, "password": "env:BENCH_LDAP_PASSWORD"},
                "base_dn": PEOPLE, "group_base_dn": GROUPS, "page_size": 1000, "watermark_overlap_seconds": 0,
                "attributes": {"uid": "username", "givenName": "given_name", "sn": "family_name",
                               "cn": "display_name", "mail": "email", "departmentNumber": "attributes.department"},
                "roles": {f"cn=group00,{GROUPS}": ["g0"], f"cn=group02,{GROUPS}": ["g2"]}}}})
            settings = config.sources.ldap
            attributes = requested_attributes(settings)
            bare_n, bare_s = bare_search(server.url, settings.user_filter, attributes)
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            full = pull(config, log=lambda _: None)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            rate = full.users_read / full.seconds
            print(f"full pull: {full.users_read} users + {full.groups_read} groups in {full.seconds:.2f} s = "
                  f"{rate:,.0f} entries/s; {sum(full.events.values())} events stored; peak RSS {rss:,.0f} MiB "
                  f"({rss_before:,.0f} MiB before)")
            print(f"  bare ldap3 paged search of the same {bare_n} entries: {bare_s:.2f} s = {bare_n / bare_s:,.0f} "
                  f"entries/s; the pull takes {full.seconds / bare_s:.1f}x the bare read "
                  f"({bare_s / full.seconds:.0%} of its speed)")
            own = full.seconds - full.store_seconds
            print(f"  of which storing the events (models.ingest.accept_all): {full.store_seconds:.2f} s "
                  f"({full.store_seconds / full.seconds:.0%}); the pull's own reading, mapping and planning "
                  f"{own:.2f} s = {full.users_read / own:,.0f} entries/s, {own / bare_s:.1f}x the bare read")
            changed = [f"uid=user{i:06d},{PEOPLE}" for i in range(1, n, max(1, n // 100))][:100]
            for dn in changed:
                server.modify(dn, mail=f"changed.{dn[4:14]}@example.org")
            incremental = pull(config, log=lambda _: None)
            since = f"(&{settings.user_filter}(modifyTimestamp>={full.watermark}))"
            bare_i, bare_is = bare_search(server.url, since, attributes)
            print(f"incremental pull, {len(changed)} changed: {incremental.users_read} entries returned "
                  f"({incremental.groups_read} groups read too, for the role rules), "
                  f"{dict(incremental.events)} in {incremental.seconds:.2f} s")
            print(f"  bare ldap3 paged search of the same filter: {bare_i} entries in {bare_is:.2f} s; the pull "
                  f"takes {incremental.seconds / bare_is:.1f}x the bare read; storing "
                  f"{incremental.store_seconds:.2f} s of it")
    finally:
        dispose_all()
        if pg_name:
            import psycopg

            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000, sys.argv[2] if len(sys.argv) > 2 else "sqlite")

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
import tasks.pull  # noqa: E402
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


class Storing:
    """Wall and CPU seconds spent in the ingest (tasks.pull's accept_all), whatever the pull's version."""

    def __init__(self):
        self.wall = self.cpu = 0.0
        self.real = tasks.pull.accept_all
        tasks.pull.accept_all = self

    def __call__(self, *args, **kwargs):
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            return self.real(*args, **kwargs)
        finally:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu

    def reset(self):
        self.wall = self.cpu = 0.0


def timed_pull(config):
    """The pull, its wall and CPU seconds (the machine is shared: CPU seconds compare runs better)."""
    wall, cpu = time.perf_counter(), time.process_time()
    result = pull(config, log=lambda _: None)
    return result, time.perf_counter() - wall, time.process_time() - cpu


def bare_search(url: str, ldap_filter: str, attributes: list[str]) -> tuple[int, float, float]:
    """A bare ldap3 paged search, as the pull's own reads are done: (entries, seconds, CPU seconds)."""
    started, cpu = time.perf_counter(), time.process_time()
    host, port = url.removeprefix("ldap://").split(":")
    conn = ldap3.Connection(ldap3.Server(host, port=int(port), get_info=ldap3.NONE), SERVICE_DN, SERVICE_PASSWORD,
                            auto_bind=True, read_only=True)
    count = sum(1 for e in conn.extend.standard.paged_search(PEOPLE, ldap_filter, ldap3.SUBTREE,
                                                               attributes=attributes, paged_size=1000, generator=True)
                if e.get("type") == "searchResEntry")
    conn.unbind()
    return count, time.perf_counter() - started, time.process_time() - cpu


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
            bare_n, bare_s, bare_cpu = bare_search(server.url, settings.user_filter, attributes)
            storing = Storing()
            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            full, wall, cpu = timed_pull(config)
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(f"full pull: {full.users_read} users + {full.groups_read} groups in {wall:.2f} s = "
                  f"{full.users_read / wall:,.0f} entries/s ({cpu:.2f} CPU s); {sum(full.events.values())} events "
                  f"stored; peak RSS {rss:,.0f} MiB ({rss_before:,.0f} MiB before)")
            print(f"  bare ldap3 paged search of the same {bare_n} entries: {bare_s:.2f} s = {bare_n / bare_s:,.0f} "
                  f"entries/s ({bare_cpu:.2f} CPU s); the pull takes {wall / bare_s:.1f}x the bare read's time, "
                  f"{cpu / bare_cpu:.1f}x its CPU")
            own, own_cpu = wall - storing.wall, cpu - storing.cpu
            print(f"  storing the events (models.ingest.accept_all): {storing.wall:.2f} s, {storing.cpu:.2f} CPU s "
                  f"({storing.cpu / cpu:.0%} of the pull's CPU); the pull's own reading, mapping and planning: "
                  f"{own:.2f} s, {own_cpu:.2f} CPU s = {own_cpu / bare_cpu:.1f}x the bare read's CPU")
            changed = [f"uid=user{i:06d},{PEOPLE}" for i in range(1, n, max(1, n // 100))][:100]
            for dn in changed:
                server.modify(dn, mail=f"changed.{dn[4:14]}@example.org")
            storing.reset()
            incremental, wall, cpu = timed_pull(config)
            since = f"(&{settings.user_filter}(modifyTimestamp>={full.watermark}))"
            bare_i, bare_is, _ = bare_search(server.url, since, attributes)
            print(f"incremental pull, {len(changed)} changed: {incremental.users_read} entries returned "
                  f"({incremental.groups_read} groups read too, for the role rules), "
                  f"{dict(incremental.events)} in {wall:.2f} s ({cpu:.2f} CPU s, of which storing {storing.cpu:.2f})")
            print(f"  bare ldap3 paged search of the same filter: {bare_i} entries in {bare_is:.2f} s; the pull "
                  f"takes {wall / bare_is:.1f}x the bare read")
    finally:
        dispose_all()
        if pg_name:
            import psycopg

            with psycopg.connect(ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 20000, sys.argv[2] if len(sys.argv) > 2 else "sqlite")

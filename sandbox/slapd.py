"""A throwaway OpenLDAP slapd (Debian's package) on a free 127.0.0.1 port, with its own slapd.conf.

For the directory pull's tests and bench: suffix dc=example,dc=org, the admin (rootdn) to seed and
change entries, and a read-only service account `cn=outbound,dc=example,dc=org` for the pull,
whose searches are held to a size limit (like AD's MaxPageSize) so only paged searches read
everything. ppolicy is loaded for pwdAccountLockedTime. All of it lives in a temporary directory.
"""

import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import ldap3

from sandbox.postgres import _free_port

SUFFIX = "dc=example,dc=org"
ADMIN_DN, ADMIN_PASSWORD = f"cn=admin,{SUFFIX}", "admin-secret"
SERVICE_DN, SERVICE_PASSWORD = f"cn=outbound,{SUFFIX}", "outbound-secret"
PEOPLE, GROUPS = f"ou=people,{SUFFIX}", f"ou=groups,{SUFFIX}"
SCHEMA = Path("/etc/ldap/schema")
MODULES = Path("/usr/lib/ldap")


def available() -> bool:
    return shutil.which("slapd") is not None or Path("/usr/sbin/slapd").exists()


class Slapd:
    """`with Slapd(size_limit=50) as ldap:` → ldap.url, ldap.add(...), ldap.modify(...), ldap.delete(...)."""

    def __init__(self, size_limit: int = 50, tls: bool = False):
        self.port = _free_port()
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.root = Path(tempfile.mkdtemp(prefix="outbound-slapd-"))
        # tls: a CA of its own (ca_file), StartTLS on `url`, and ldaps:// on `ldaps_url`.
        self.ca_file = self.ldaps_url = None
        self._tls = ""
        if tls:
            from sandbox.salesforce import _make_pki

            self.ca_file, cert, key = _make_pki(self.root)
            self.ldaps_url = f"ldaps://127.0.0.1:{_free_port()}"
            self._tls = f"TLSCACertificateFile {self.ca_file}\nTLSCertificateFile {cert}\nTLSCertificateKeyFile {key}\n"
        self.size_limit = size_limit
        self._process = None
        self._admin = None

    def _config(self) -> str:
        (self.root / "db").mkdir()
        schemas = "\n".join(f"include {SCHEMA / n}.schema" for n in ("core", "cosine", "inetorgperson", "nis"))
        return f"""{schemas}
{self._tls}modulepath {MODULES}
moduleload back_mdb
moduleload ppolicy
pidfile {self.root}/slapd.pid
database mdb
suffix "{SUFFIX}"
rootdn "{ADMIN_DN}"
rootpw {ADMIN_PASSWORD}
directory {self.root}/db
maxsize 4294967296
dbnosync
index objectClass,entryUUID,uid,member eq
overlay ppolicy
limits dn.exact="{SERVICE_DN}" size.soft={self.size_limit} size.hard={self.size_limit} size.pr={self.size_limit} size.prtotal=unlimited
access to attrs=userPassword by self write by anonymous auth by * none
access to * by * read
"""

    def __enter__(self) -> "Slapd":
        conf = self.root / "slapd.conf"
        conf.write_text(self._config())
        slapd = shutil.which("slapd") or "/usr/sbin/slapd"
        # -d 0: in the foreground, so the process is ours to stop; no debug output.
        listen = " ".join(f"{u}/" for u in (self.url, self.ldaps_url) if u)
        self._process = subprocess.Popen([slapd, "-f", str(conf), "-h", listen, "-d", "0"],
                                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 30
        while True:
            if self._process.poll() is not None:
                raise RuntimeError(f"slapd exited ({self._process.returncode}): "
                                   f"{self._process.stderr.read().decode(errors='replace')[-800:]}")
            try:
                self._admin = ldap3.Connection(ldap3.Server("127.0.0.1", port=self.port, get_info=ldap3.NONE),
                                               ADMIN_DN, ADMIN_PASSWORD, auto_bind=True, raise_exceptions=True)
                break
            except ldap3.core.exceptions.LDAPException:
                if time.monotonic() > deadline:
                    raise RuntimeError("slapd did not accept a bind within 30 s") from None
                time.sleep(0.05)
        self._seed_tree()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout=30)
        shutil.rmtree(self.root, ignore_errors=True)

    def _seed_tree(self) -> None:
        self.add(SUFFIX, ["dcObject", "organization"], o="Example", dc="example")
        self.add(PEOPLE, ["organizationalUnit"], ou="people")
        self.add(GROUPS, ["organizationalUnit"], ou="groups")
        self.add(SERVICE_DN, ["organizationalRole", "simpleSecurityObject"], cn="outbound",
                 userPassword=SERVICE_PASSWORD)

    # --- seeding and changing entries, as the admin -------------------------------------------

    def add(self, dn: str, object_classes: list[str], **attributes) -> None:
        self._admin.add(dn, object_classes, attributes)

    def add_person(self, uid: str, given: str = "Test", family: str = "User", mail: str | None = None,
                   **extra) -> str:
        dn = f"uid={uid},{PEOPLE}"
        self.add(dn, ["inetOrgPerson"], uid=uid, givenName=given, sn=family, cn=f"{given} {family}",
                 mail=mail or f"{uid}@example.org", **extra)
        return dn

    def add_group(self, cn: str, members: list[str]) -> str:
        dn = f"cn={cn},{GROUPS}"
        # groupOfNames needs a member; an empty group holds the admin, which is not a user.
        self.add(dn, ["groupOfNames"], cn=cn, member=members or [ADMIN_DN])
        return dn

    def modify(self, dn: str, **replace) -> None:
        self._admin.modify(dn, {k: [(ldap3.MODIFY_REPLACE, v if isinstance(v, list) else [v] if v is not None else [])]
                                for k, v in replace.items()})

    def delete(self, dn: str) -> None:
        self._admin.delete(dn)

    def rename(self, dn: str, new_rdn: str) -> None:
        self._admin.modify_dn(dn, new_rdn)

    def wait_past(self, stamp: str, timeout: float = 5.0) -> None:
        """Return once the server's clock (a probe write's modifyTimestamp) is past `stamp`'s second."""
        deadline, n = time.monotonic() + timeout, 0
        while time.monotonic() < deadline:
            n += 1
            self.modify(GROUPS, description=f"probe {n}")
            self._admin.search(GROUPS, "(objectClass=*)", ldap3.BASE, attributes=["modifyTimestamp"])
            if self._admin.response[0]["raw_attributes"]["modifyTimestamp"][0].decode()[:14] > stamp[:14]:
                return
            time.sleep(0.05)
        raise TimeoutError(f"the server's clock did not pass {stamp} within {timeout} s")

    def entry_uuid(self, dn: str) -> str:
        self._admin.search(dn, "(objectClass=*)", ldap3.BASE, attributes=["entryUUID"])
        return self._admin.response[0]["raw_attributes"]["entryUUID"][0].decode()

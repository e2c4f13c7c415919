"""A throwaway PostgreSQL cluster from Debian's packages, on a free 127.0.0.1 port.

PostgreSQL refuses to run as root: under root the cluster belongs to the ``postgres`` user that
Debian's package creates, and its commands run through ``runuser``.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.servers.processes import free_port, missing

PACKAGE_ROOT = Path("/usr/lib/postgresql")
SERVER_USER = "postgres"


def server_binaries() -> Path:
    """The bin folder of the newest installed PostgreSQL, or a skip/failure naming the package."""
    versions = [p for p in PACKAGE_ROOT.glob("*/bin") if (p / "initdb").is_file()]
    if not versions:
        missing(f"PostgreSQL server binaries not found under {PACKAGE_ROOT} "
                "(apt-get install postgresql)")  # fmt: skip
    return max(versions, key=lambda p: int(re.sub(r"\D", "", p.parent.name) or 0))


@dataclass
class Postgres:
    """One cluster: its folder (data, socket, log), port and the login the apps use."""

    bin_dir: Path
    folder: Path
    port: int
    user: str
    password: str

    @classmethod
    def create(cls, user: str, password: str | None = None) -> Postgres:
        """initdb a new cluster with password logins (scram-sha-256) for ``user``."""
        bin_dir = server_binaries()
        folder = Path(tempfile.mkdtemp(prefix="hal-postgres-"))
        cluster = cls(bin_dir, folder, free_port(), user, password or secrets.token_hex(12))
        password_file = folder / "password"
        password_file.write_text(cluster.password + "\n")
        if os.geteuid() == 0:
            if shutil.which("runuser") is None:
                missing("runuser (util-linux) is needed to run PostgreSQL as root")
            try:
                shutil.chown(folder, SERVER_USER, SERVER_USER)
                shutil.chown(password_file, SERVER_USER, SERVER_USER)
            except LookupError:
                missing(f"no '{SERVER_USER}' user to run PostgreSQL (apt-get install postgresql)")
        cluster._run("initdb", "-D", str(cluster.data), "-U", user,
                     f"--pwfile={password_file}", "--auth=scram-sha-256", "--no-locale",
                     "--encoding=UTF8", "--no-sync")  # fmt: skip
        password_file.unlink()
        return cluster

    @property
    def data(self) -> Path:
        return self.folder / "data"

    @property
    def log(self) -> Path:
        return self.folder / "postgres.log"

    def url(self, database: str, driver: str = "postgresql") -> str:
        return f"{driver}://{self.user}:{self.password}@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str) -> str:
        command = [str(self.bin_dir / program), *args]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        done = subprocess.run(command, capture_output=True, text=True, cwd=self.folder)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command)} failed:\n{done.stdout}\n{done.stderr}")
        return done.stdout

    def start(self) -> None:
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.folder}"
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options,
                  "-w", "-t", "120", "start")  # fmt: skip

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement through psql over TCP with the app's login; its output rows."""
        command = [str(self.bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(self.port),
                   "-U", self.user, "-d", database, "-At", "-v", "ON_ERROR_STOP=1",
                   "-c", statement]  # fmt: skip
        env = {**os.environ, "PGPASSWORD": self.password}
        done = subprocess.run(command, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"psql {statement!r} failed: {done.stderr}")
        return done.stdout.strip()

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

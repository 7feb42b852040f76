"""A throwaway PostgreSQL server from Debian's binaries, for tests and benchmarks.

One server in a temporary directory on a free loopback port, fresh databases on
demand. As root (CI), the server runs as the ``postgres`` user, because initdb refuses
root. Not for production: fsync is off.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path


class PostgresUnavailable(RuntimeError):
    """Debian's postgresql package is not installed."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


def _as_owner(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


class PostgresServer:
    def __init__(self) -> None:
        initdb, self.pg_ctl = _bin("initdb"), _bin("pg_ctl")
        if not initdb or not self.pg_ctl:
            raise PostgresUnavailable("PostgreSQL server binaries not installed "
                                      "(apt-get install postgresql)")
        self.dir = Path(tempfile.mkdtemp(prefix="custody-pg-"))
        self.data = self.dir / "data"
        self.port = free_port()
        if os.geteuid() == 0:
            shutil.chown(self.dir, "postgres", "postgres")
        subprocess.run(_as_owner([initdb, "-D", str(self.data), "-A", "trust", "-U", "postgres",
                                  "--no-sync", "-E", "UTF8"]), check=True, capture_output=True)
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories="
                f"{self.dir} -c fsync=off -c max_connections=200")
        subprocess.run(_as_owner([self.pg_ctl, "-D", str(self.data), "-o", opts, "-w", "-l",
                                  str(self.dir / "log"), "start"]), check=True,
                       capture_output=True, timeout=60)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self) -> str:
        import psycopg

        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres",
                             autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def stop(self) -> None:
        subprocess.run(_as_owner([str(self.pg_ctl), "-D", str(self.data), "-m", "immediate",
                                  "stop"]), capture_output=True, timeout=60, check=False)
        time.sleep(0.1)
        shutil.rmtree(self.dir, ignore_errors=True)

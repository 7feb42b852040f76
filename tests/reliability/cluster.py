"""Real processes to kill: the HSM process, API replicas and a release worker on one
database (a SQLite file, or a throwaway PostgreSQL that can itself be stopped).

Every part is the shipped entry point (``python -m hsm_emulator.remote``, ``custody
serve``, ``custody worker``), started the way tests/api/test_replicas.py starts them. Each
part keeps its port / socket across restarts, so clients reconnect to the same address.
"""

from __future__ import annotations

import base64
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from custody.pgserver import PostgresServer, _as_owner, free_port
from hsm_emulator.remote import RemoteHsmClient

from . import memtrace

SECRET = "reliability-secret-0123456789abcdef-0123"
ROOT = Path(__file__).resolve().parents[2]
#: The worker's recovery sweep in these tests: short, so resumption is quick to observe.
SWEEP_SECONDS = "1"


class Cluster:
    """One HSM process, ``replicas`` API servers and one worker on one database."""

    def __init__(self, db: str, replicas: int = 1, workdir: Path | None = None,
                 env: dict[str, str] | None = None, clock_file: Path | None = None) -> None:
        """``env``: more settings for the API and the worker (e.g. a chain node's RPC);
        ``clock_file``: the HSM reads its time there (TEST ONLY ``--clock-file``)."""
        self.work = workdir or Path(tempfile.mkdtemp(prefix="custody-rel-"))
        self.clock_file = clock_file
        self.pg: PostgresServer | None = PostgresServer() if db == "postgres" else None
        self.db_url = (self.pg.create_database() if self.pg is not None
                       else f"sqlite:///{self.work / 'broker.sqlite'}")
        self.secret_file = self.work / "hsm.secret"
        self.secret_file.write_bytes(base64.b64encode(os.urandom(32)))
        self.secret_file.chmod(0o600)
        self.hsm_url = f"unix:{self.work / 'hsm.sock'}"
        self.ports = {f"api{i}": free_port() for i in range(replicas)}
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.env = os.environ | {
            "CUSTODY_DATABASE_URL": self.db_url, "CUSTODY_HSM_URL": self.hsm_url,
            "CUSTODY_HSM_SECRET_FILE": str(self.secret_file), "CUSTODY_JWT_SECRET": SECRET,
            "CUSTODY_SWEEP_SECONDS": SWEEP_SECONDS} | (env or {})

    @property
    def urls(self) -> list[str]:
        return [f"http://127.0.0.1:{p}" for p in self.ports.values()]

    # -- parts ---------------------------------------------------------------------------

    def start(self, name: str) -> None:
        """Start one part: ``hsm``, ``worker`` or ``api<i>``; waits until it serves."""
        if name == "hsm":
            # the traffic's transfers are TEST_TRANSFER payloads: the HSM decodes them
            # only with the test decoder, which pytest's conftest turns on but a
            # command-line run (the soak, the kill loop) would not
            env = os.environ | {"SKA_HSM_PASSPHRASE": "reliability hsm passphrase",
                                "SKA_HSM_SO_PASSPHRASE": "reliability officer passphrase",
                                "CUSTODY_TEST_DECODER": "1"}
            cmd = ["-m", "hsm_emulator.remote", "--store", str(self.work / "hsm.sqlite"),
                   "--listen", self.hsm_url, "--secret-file", str(self.secret_file),
                   "--scrypt-n", "1024"]
            if self.clock_file is not None:
                cmd += ["--clock-file", str(self.clock_file)]
        elif name == "worker":
            env, cmd = self.env, ["-m", "custody.cli", "worker"]
        else:
            env, cmd = self.env, ["-m", "custody.cli", "serve", "--port", str(self.ports[name])]
        if os.environ.get(memtrace.ENV) and name != "worker":  # opt-in allocation tracing
            cmd = ["-m", "tests.reliability.memtrace", name, *cmd[1:]]
        log = self.work / f"{name}.log"
        mark = log.stat().st_size if log.exists() else 0
        with log.open("ab") as out:
            self.procs[name] = subprocess.Popen([sys.executable, *cmd], env=env, cwd=ROOT,
                                                stdout=out, stderr=out)
        if name == "worker":  # up once its scheduler runs (it has migrated, connected)
            self._wait(lambda: b"worker running" in log.read_bytes()[mark:], name)
        elif name == "hsm":
            self._wait(self._hsm_answers, name)
        elif name != "worker":
            url = f"http://127.0.0.1:{self.ports[name]}"
            self._wait(lambda: httpx.get(f"{url}/readyz", timeout=2).status_code == 200, name)

    def start_all(self) -> None:
        for name in ("hsm", *self.ports, "worker"):
            self.start(name)

    def _wait(self, probe: object, name: str, seconds: float = 60.0) -> None:
        deadline = time.time() + seconds
        while time.time() < deadline:
            if self.procs[name].poll() is not None:
                raise RuntimeError(f"{name} exited with {self.procs[name].returncode}; "
                                   f"see {self.work / (name + '.log')}")
            try:
                if probe():  # type: ignore[operator]
                    return
            except Exception:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{name} did not come up within {seconds} s")

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(sig)
            proc.wait(timeout=30)

    def alive(self, name: str) -> bool:
        proc = self.procs.get(name)
        return proc is not None and proc.poll() is None

    def rss_kib(self, name: str) -> int | None:
        """Resident memory of one part (KiB), from /proc."""
        proc = self.procs.get(name)
        if proc is None:
            return None
        try:
            for line in Path(f"/proc/{proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        except OSError:
            return None
        return None

    def _hsm_answers(self) -> bool:
        with self.hsm_client() as client:
            return bool(client.identity_public_key())

    def hsm_client(self) -> RemoteHsmClient:
        return RemoteHsmClient(self.hsm_url, self.secret_file.read_bytes().strip(),
                               timeout=60)

    # -- the database as a part ----------------------------------------------------------

    def pg_stop(self) -> None:
        """Stop PostgreSQL abruptly (``-m immediate``: like a crash), keeping its data."""
        assert self.pg is not None
        subprocess.run(_as_owner([str(self.pg.pg_ctl), "-D", str(self.pg.data), "-m",
                                  "immediate", "stop"]), capture_output=True, check=True,
                       timeout=60)

    def pg_start(self) -> None:
        assert self.pg is not None
        opts = (f"-c listen_addresses=127.0.0.1 -p {self.pg.port} -c unix_socket_directories="
                f"{self.pg.dir} -c fsync=off -c max_connections=200")
        subprocess.run(_as_owner([str(self.pg.pg_ctl), "-D", str(self.pg.data), "-o", opts,
                                  "-w", "-l", str(self.pg.dir / "log"), "start"]),
                       capture_output=True, check=True, timeout=60)

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        if self.pg is not None:
            self.pg.stop()

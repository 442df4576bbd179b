"""Real Flower processes on loopback for the deployment tests: one SuperLink, one SuperNode per center."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from servicekit import free_port

BIN = Path(sys.executable).parent


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.3)
    raise TimeoutError(f"nothing listens on port {port} after {timeout} s")


@dataclass
class Deployment:
    """A SuperLink and SuperNodes started as separate processes (each in its own process group)."""

    folder: Path
    port: int = 0
    """The SuperLink's one HTTP port: Control, Fleet and Runtime APIs all answer on it (Flower 1.42)."""
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)

    def _start(self, name: str, command: list[str]) -> subprocess.Popen:
        log = (self.folder / f"{name}.log").open("w")
        env = {
            **os.environ,
            "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",  # they start flower-superexec etc.
            "FLWR_HOME": str(self.folder / "flwr-home"),
            "OMP_NUM_THREADS": "1",
        }
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.folder, start_new_session=True
        )
        self.processes[name] = process
        return process

    def start_superlink(self) -> None:
        self.port = free_port()
        self._start(
            "superlink",
            [
                str(BIN / "flower-superlink"),
                "--insecure",
                "--disable-runtime-dependency-installation",
                "--host=127.0.0.1",
                f"--port={self.port}",
                f"--database={self.folder / 'superlink.db'}",
            ],
        )
        wait_for_port(self.port)

    def start_supernode(self, partition: int, centers: int) -> None:
        self._start(
            f"supernode-{partition}",
            [
                str(BIN / "flower-supernode"),
                "--insecure",
                f"--superlink=127.0.0.1:{self.port}",
                "--host=127.0.0.1",
                f"--port={free_port()}",
                f"--node-config=partition-id={partition} num-partitions={centers}",
            ],
        )

    def kill(self, name: str) -> None:
        """SIGKILL a process and its children (its ClientApp processes), as a crash would."""
        process = self.processes.pop(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(10)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes[name]
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(10)
            except ProcessLookupError:
                pass
            except subprocess.TimeoutExpired:
                self.kill(name)
            self.processes.pop(name, None)

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text()

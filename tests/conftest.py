"""Shared fixtures: a fresh workspace, an in-process client, and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

import bowknot
from bowknot.server import create_app


@pytest.fixture
def ws(tmp_path: Path) -> Iterator[bowknot.Workspace]:
    workspace = bowknot.connect(tmp_path / "ws.duckdb")
    yield workspace
    workspace.close()


@pytest.fixture
def write_key(ws: bowknot.Workspace) -> str:
    return ws.access.create_source("web")


@pytest.fixture
def admin_token(ws: bowknot.Workspace) -> str:
    return ws.access.create_token("tester")


@pytest.fixture
def client(ws: bowknot.Workspace) -> Iterator[TestClient]:
    with TestClient(create_app(ws)) as c:
        yield c


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """A real `bowknot serve` process on loopback."""

    def __init__(self, db: Path) -> None:
        self.db = db
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Server:
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "bowknot", "serve", "--db", str(self.db),
             "--port", str(self.port)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                out = self.proc.stdout.read().decode() if self.proc.stdout else ""
                raise RuntimeError(f"bowknot serve exited: {out}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                time.sleep(0.1)
        raise RuntimeError("bowknot serve did not start within 30 s")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def make_keys(db: Path) -> tuple[str, str]:
    """Create a source and an admin token in ``db`` (before a server opens it)."""
    with bowknot.connect(db) as ws:
        return ws.access.create_source("web"), ws.access.create_token("tester")


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[Server, str, str]]:
    db = tmp_path / "served.duckdb"
    key, token = make_keys(db)
    srv = Server(db).start()
    yield srv, key, token
    srv.stop()


@pytest.fixture(scope="session")
def spark_session() -> Iterator[object]:
    """One local Spark for the whole test session (started only when a test asks)."""
    from bowknot.journeys import spark_session

    session = spark_session("local[2]", shuffle_partitions=2)
    yield session
    session.stop()

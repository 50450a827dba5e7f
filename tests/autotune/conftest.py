"""A throwaway PostgreSQL cluster for the shared-study test: initdb + pg_ctl in a temporary folder, on a
free localhost port, run as the ``postgres`` user when the tests run as root (PostgreSQL refuses root)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile

import pytest


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        if os.environ.get("CI"):
            pytest.fail("PostgreSQL server binaries (initdb, pg_ctl) missing in CI: .ci/run installs 'postgresql'.")
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not installed: apt-get install -y postgresql")
    pytest.importorskip("psycopg2", reason="psycopg2-binary is needed for Optuna's PostgreSQL storage")
    root = os.geteuid() == 0
    prefix = ["runuser", "-u", "postgres", "--"] if root else []
    user = "postgres" if root else None
    folder = tempfile.mkdtemp(prefix="cellvi-pg-")
    if root:
        shutil.chown(folder, "postgres", "postgres")
    data, port = os.path.join(folder, "data"), _free_port()
    subprocess.run(
        [*prefix, initdb, "-D", data, "-U", user or os.environ.get("USER", "cellvi"), "--auth=trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run(
        [*prefix, pg_ctl, "-D", data, "-o", opts, "-l", os.path.join(folder, "log"), "-w", "start"],
        check=True,
        capture_output=True,
    )
    try:
        import psycopg2

        name = user or os.environ.get("USER", "cellvi")
        conn = psycopg2.connect(host="127.0.0.1", port=port, user=name, dbname="postgres")
        conn.autocommit = True
        conn.cursor().execute("CREATE DATABASE optuna")
        conn.close()
        yield f"postgresql://{name}@127.0.0.1:{port}/optuna"
    finally:
        subprocess.run([*prefix, pg_ctl, "-D", data, "-m", "immediate", "stop"], capture_output=True, check=False)
        shutil.rmtree(folder, ignore_errors=True)

"""The PostgreSQL catalog from the outside: one owner per database, a data dir bound to its catalog,
admin commands beside the server, and rows that survive kill -9. Needs BLOCKSNAP_TEST_PG (tests/run
starts a throwaway cluster); runs in both catalog modes (it chooses its catalogs itself)."""
from __future__ import annotations

import os
import signal
import subprocess

import pytest

from conftest import IS_MOTO, Server, blocksnap_bin, free_port, pg_database, psql

pytestmark = pytest.mark.skipif(IS_MOTO, reason="blocksnap's own catalog")


def serve(data_dir, *args, timeout=60) -> subprocess.CompletedProcess:
    """A `serve` expected to stop at once (refused)."""
    cmd = [str(blocksnap_bin()), "serve", "--data-dir", str(data_dir), "--listen", f"127.0.0.1:{free_port()}",
           "--nbd-listen", f"127.0.0.1:{free_port()}", "--metrics-listen", "off", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={k: v for k, v in os.environ.items() if k != "BLOCKSNAP_CATALOG"})


def admin(data_dir, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(blocksnap_bin()), "admin", *args, "--data-dir", str(data_dir)],
                          capture_output=True, text=True, timeout=60,
                          env={k: v for k, v in os.environ.items() if k != "BLOCKSNAP_CATALOG"})


def test_one_owner_per_database_and_a_data_dir_bound_to_its_catalog(tmp_path):
    url = pg_database()
    (tmp_path / "a").mkdir()
    srv = Server(kind="blocksnap", workdir=tmp_path / "a", extra_env={"BLOCKSNAP_CATALOG": url})
    srv.start()
    try:
        ec2 = srv.client()
        vid = ec2.create_volume(AvailabilityZone=f"{srv.region}a", Size=1)["VolumeId"]
        record = (srv.data_dir / "catalog").read_text()
        assert f"url={url}\n" in record and "id=" in record
        assert (srv.data_dir / "catalog").stat().st_mode & 0o777 == 0o600
        assert not (srv.data_dir / "catalog.db").exists()

        # A second server on the same database, from another data dir: refused by the catalog's owner lock.
        r = serve(tmp_path / "b", "--catalog", url)
        assert r.returncode != 0 and "in use by another blocksnap" in r.stderr, r.stderr

        # Admin commands beside the running server find the catalog in the dir's record.
        out = admin(srv.data_dir, "create-account")
        assert out.returncode == 0, out.stderr
        akid = next(l.split("=", 1)[1] for l in out.stdout.splitlines() if "AWS_ACCESS_KEY_ID" in l)
        keys = admin(srv.data_dir, "list-keys")
        assert keys.returncode == 0 and akid in keys.stdout, keys.stderr
        assert psql(url, f"SELECT count(*) FROM rows WHERE kind = 'access_key' AND id = '{akid}'").strip() == "1"

        # kill -9: every acknowledged call is in PostgreSQL; the restart (no --catalog: the record) has it.
        os.killpg(srv.proc.pid, signal.SIGKILL)
        srv.proc.wait()
        srv.proc = None
        srv.extra_env["BLOCKSNAP_CATALOG"] = ""  # empty: not given
        srv.start()
        vols = srv.client().describe_volumes(VolumeIds=[vid])["Volumes"]
        assert [v["VolumeId"] for v in vols] == [vid]
        srv.stop()

        # The dir belongs to its catalog: SQLite is refused, so is a new dir on the used database, so is the
        # dir on another database; nothing is changed.
        r = serve(srv.data_dir, "--catalog", "sqlite")
        assert r.returncode != 0 and "belongs to the PostgreSQL catalog" in r.stderr, r.stderr
        assert not (srv.data_dir / "catalog.db").exists()
        r = serve(tmp_path / "c", "--catalog", url)
        assert r.returncode != 0 and "already holds another data dir's records" in r.stderr, r.stderr
        assert not (tmp_path / "c" / "catalog").exists()
        other = pg_database()
        r = serve(srv.data_dir, "--catalog", other)
        assert r.returncode != 0 and "belongs to catalog" in r.stderr, r.stderr
        assert record == (srv.data_dir / "catalog").read_text()
    finally:
        srv.stop()


def test_a_sqlite_data_dir_is_not_started_on_postgres(tmp_path):
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_env={"BLOCKSNAP_CATALOG": "sqlite"})
    srv.start()
    srv.stop()
    assert (srv.data_dir / "catalog.db").exists()
    r = serve(srv.data_dir, "--catalog", pg_database())
    assert r.returncode != 0 and "has its catalog in catalog.db" in r.stderr, r.stderr
    assert not (srv.data_dir / "catalog").exists()

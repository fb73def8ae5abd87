"""Where a volume's or snapshot's NBD export is served (BlocksnapNbd_20261129, SigV4 service `blocksnap`):
CreateNbdCredential/RotateNbdCredentials answer the endpoint, DescribeNbdEndpoints answers host, port,
TLS, export name and a ready URI per volume or snapshot, and real NBD clients (nbdinfo, qemu-io) connect
to exactly what it returned. `--nbd-advertise` sets what is answered; a listener on every address answers
the host the caller reached the API at."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from urllib.parse import urlsplit

import pytest

from conftest import ROOT_ACCESS_KEY, ROOT_SECRET_KEY, Server, blocksnap_bin, free_port, tagspec
from nbd import credentials, fetch_credentials, qemu_io
from test_nbd_security import attached_volume, completed_snapshot, nbd_api

pytestmark = [pytest.mark.blocksnap_only,
              pytest.mark.skipif(not shutil.which("nbdinfo"), reason="libnbd-bin (nbdinfo) not installed")]


def describe(server, body: dict, creds=None) -> dict:
    status, doc = nbd_api(server, "DescribeNbdEndpoints", body, creds)
    assert status == 200, doc
    return doc


def with_identity(u: str, k) -> str:
    """The returned `nbds://host:port/export` with the account's PSK identity and key file added."""
    parts = urlsplit(u)
    assert parts.scheme == "nbds" and not parts.username and not parts.query, u
    return f"nbds://{k.identity}@{parts.netloc}{parts.path}?tls-psk-file={k.psk_file}"


def test_describe_endpoints_and_connect_to_what_it_says(server, ec2, az, run_tag):
    status, doc = nbd_api(server, "CreateNbdCredential", {})
    assert status == 200
    here = {"Host": "127.0.0.1", "Port": server.nbd_port, "Tls": True}
    assert doc["Credential"]["Endpoint"] == here
    nbd_api(server, "DeleteNbdCredential", {"Identity": doc["Credential"]["Identity"]})

    vid = attached_volume(ec2, az, run_tag)
    qemu_io(server, vid, "write -P 0x4e 0 1M", "flush")
    sid = completed_snapshot(ec2, vid)
    idle = ec2.create_volume(Size=1, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]

    got = describe(server, {"VolumeIds": [vid, idle], "SnapshotIds": [sid]})["Exports"]
    assert [x["ExportName"] for x in got] == [vid, idle, sid]
    v, i, s = got
    assert v["VolumeId"] == vid and s["SnapshotId"] == sid and "SnapshotId" not in v
    for x in got:
        assert x["Endpoint"] == here
        assert x["Uri"] == f"nbds://127.0.0.1:{server.nbd_port}/{x['ExportName']}"
    assert v["Available"] and s["Available"] and "Reason" not in v
    assert i["Available"] is False and "not attached" in i["Reason"]
    # No ids: the caller's attached volumes (what NBD_OPT_LIST shows it).
    listed = [x["ExportName"] for x in describe(server, {})["Exports"]]
    assert vid in listed and idle not in listed and sid not in listed

    # Real clients, connecting to exactly what was answered.
    k = credentials(server)
    for x, size in ((v, 1 << 30), (s, 1 << 30)):
        info = subprocess.run(["nbdinfo", with_identity(x["Uri"], k)], capture_output=True, text=True, timeout=60)
        assert info.returncode == 0 and "with TLS" in info.stdout and str(size) in info.stdout, info.stderr
    e = s["Endpoint"]
    p = subprocess.run(["qemu-io", "--object", f"tls-creds-psk,id=tls0,endpoint=client,dir={k.dir},username={k.identity}",
                        "-r", "--image-opts",
                        f"driver=nbd,host={e['Host']},port={e['Port']},export={s['ExportName']},tls-creds=tls0",
                        "-c", "read -P 0x4e 0 1M"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "read 1048576/1048576" in p.stdout, p.stdout + p.stderr


def test_cli_prints_the_endpoint(server, tmp_path):
    out = fetch_credentials(server, server.create_account(), out=tmp_path / "k").stdout
    assert f"NBD_HOST=127.0.0.1\nNBD_PORT={server.nbd_port}" in out and f"@127.0.0.1:{server.nbd_port}/" in out


def test_other_accounts_ids_are_not_found_shared_snapshots_are(server, ec2, az, run_tag):
    vid = attached_volume(ec2, az, run_tag)
    sid = completed_snapshot(ec2, vid)
    other = server.create_account()
    for body, what in (({"VolumeIds": [vid]}, vid), ({"SnapshotIds": [sid]}, sid),
                       ({"VolumeIds": ["vol-0123456789abcdef0"]}, "vol-0123456789abcdef0"),
                       ({"SnapshotIds": ["snap-0123456789abcdef0"]}, "snap-0123456789abcdef0")):
        status, err = nbd_api(server, "DescribeNbdEndpoints", body, other)
        assert status == 400 and err["__type"] == "ResourceNotFoundException" and what in err["message"], err
    assert vid not in [x["ExportName"] for x in describe(server, {}, other)["Exports"]]
    ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                  OperationType="add", UserIds=[other.account_id])
    (x,) = describe(server, {"SnapshotIds": [sid]}, other)["Exports"]
    assert x["Available"] and x["Uri"].endswith(f"/{sid}")
    status, err = nbd_api(server, "DescribeNbdEndpoints", {"VolumeIds": "vol-1"})
    assert status == 400 and err["__type"] in ("SerializationException", "ValidationException"), err


def wait_serving(proc: subprocess.Popen, log) -> None:
    deadline = time.monotonic() + 60
    while "blocksnap serving" not in log.read_text(errors="replace"):
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
        time.sleep(0.05)


def test_advertised_and_every_address_endpoints(tmp_path):
    # --nbd-advertise: what clients are told, whatever the listener.
    (tmp_path / "adv").mkdir()
    srv = Server(kind="blocksnap", workdir=tmp_path / "adv", extra_args=["--nbd-advertise", "nbd.example.test:10999"])
    srv.start()
    try:
        status, doc = nbd_api(srv, "CreateNbdCredential", {})
        assert status == 200 and doc["Credential"]["Endpoint"] == {"Host": "nbd.example.test", "Port": 10999,
                                                                   "Tls": True}
        vid = attached_volume(srv.client(), f"{srv.region}a", "adv")
        (x,) = describe(srv, {"VolumeIds": [vid]})["Exports"]
        assert x["Uri"] == f"nbds://nbd.example.test:10999/{vid}"
    finally:
        srv.stop()

    # Every address and nothing advertised: the host the caller reached the API at, and the log says so.
    (tmp_path / "any").mkdir()
    port, nbd_port = free_port(), free_port()
    log = tmp_path / "any" / "server.log"
    env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=ROOT_ACCESS_KEY, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=ROOT_SECRET_KEY)
    env.pop("BLOCKSNAP_CATALOG", None)
    with open(log, "wb") as f:
        proc = subprocess.Popen([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "any" / "d"),
                                 "--listen", f"127.0.0.1:{port}", "--nbd-listen", f"0.0.0.0:{nbd_port}",
                                 "--metrics-listen", "off"], stdout=f, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        wait_serving(proc, log)
        assert "--nbd-advertise is not set" in log.read_text()
        any_srv = Server(kind="blocksnap", workdir=tmp_path / "any", port=port, nbd_port=nbd_port)
        for name in ("127.0.0.1", "localhost"):
            status, doc = nbd_api(any_srv, "CreateNbdCredential", {}, url=f"http://{name}:{port}/")
            assert status == 200 and doc["Credential"]["Endpoint"] == {"Host": name, "Port": nbd_port, "Tls": True}
    finally:
        proc.terminate()
        proc.wait(30)

    # An address no client can connect to is refused at start.
    r = subprocess.run([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "bad"),
                        "--listen", f"127.0.0.1:{free_port()}", "--nbd-listen", f"127.0.0.1:{free_port()}",
                        "--metrics-listen", "off", "--nbd-advertise", "0.0.0.0:10809"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "--nbd-advertise" in r.stderr, r.stderr

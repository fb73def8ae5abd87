"""Faults below blocksnap: a snapshot store (moto_server's S3) that hangs or disappears mid-upload.
Guest writes never wait on the store; a hung store's upload completes once it answers again; a store
that is gone ends the upload in `error` with a StateMessage, and the volume keeps serving."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import boto3
import pytest

from conftest import Server, attached_volume, blocksnap_bin, free_port
from nbd import MiB, from_file, pattern_ok, qemu_io, to_file

pytestmark = pytest.mark.blocksnap_only

REGION = "us-east-1"


@pytest.fixture
def moto(tmp_path):
    port = free_port()
    p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert p.poll() is None, "moto_server exited at start"
            assert time.time() < deadline, "moto_server did not listen within 30 s"
            time.sleep(0.05)
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="faults")
    yield port, p
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGCONT)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=10)


def s3_server(tmp_path, port) -> Server:
    cfg = tmp_path / "blocksnap.toml"
    cfg.write_text(f"""
[stores.{REGION}]
bucket = "faults"
prefix = "r"
endpoint = "http://127.0.0.1:{port}"
region = "{REGION}"
access_key_id = "k"
secret_access_key = "s"
allow_http = true
""")
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_args=["--config", str(cfg)])
    srv.start()
    return srv


def state(ec2, sid) -> dict:
    return ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]


def wait_done(ec2, sid, timeout=300) -> dict:
    deadline = time.time() + timeout
    while (s := state(ec2, sid))["State"] == "pending":
        assert time.time() < deadline, f"{sid} still pending after {timeout} s"
        time.sleep(0.2)
    return s


def test_store_hangs_then_disappears(tmp_path, moto):
    port, moto_proc = moto
    srv = s3_server(tmp_path, port)
    try:
        ec2 = srv.client()
        _, vid = attached_volume(ec2, REGION + "a", "faults")
        qemu_io(srv, vid, "write -P 0x21 0 1M", "flush")
        first = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        assert wait_done(ec2, first)["State"] == "completed"

        # The store hangs (the S3 server stops answering, connections stay open).
        img = tmp_path / "cut.bin"
        img.write_bytes(os.urandom(32 * MiB))
        from_file(srv, img, vid)
        os.killpg(moto_proc.pid, signal.SIGSTOP)
        sid = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        # Guest writes, flushes and reads go on while the upload waits on the store.
        for k in range(8):
            qemu_io(srv, vid, f"write -P {0x40 + k:#x} {64 * MiB + k * MiB} 1M", "flush")
        qemu_io(srv, vid, "write -P 0x55 0 4M", "flush")
        assert pattern_ok(srv, vid, 0, 4 * MiB, 0x55)
        assert state(ec2, sid)["State"] == "pending", "the upload cannot finish while the store hangs"
        # The store answers again: the upload completes with the bytes of the cut.
        os.killpg(moto_proc.pid, signal.SIGCONT)
        s = wait_done(ec2, sid)
        assert s["State"] == "completed", s
        out = tmp_path / "snap.bin"
        to_file(srv, sid, out)
        with open(out, "rb") as f:
            assert f.read(32 * MiB) == img.read_bytes(), "the snapshot holds the bytes of the cut"
        out.unlink()

        # The store disappears mid-upload: the snapshot ends in error with a message, within the bound.
        img.write_bytes(os.urandom(64 * MiB))
        from_file(srv, img, vid)
        os.killpg(moto_proc.pid, signal.SIGKILL)
        moto_proc.wait(timeout=10)
        gone = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        s = wait_done(ec2, gone)
        assert s["State"] == "error", s
        assert s.get("StateMessage"), s
        # The volume keeps serving, and nothing acknowledged is lost.
        qemu_io(srv, vid, "write -P 0x66 128M 1M", "flush")
        assert pattern_ok(srv, vid, 128 * MiB, MiB, 0x66)
        assert pattern_ok(srv, vid, 64 * MiB + 7 * MiB, MiB, 0x47)
        out = tmp_path / "vol.bin"
        to_file(srv, vid, out)
        with open(out, "rb") as f:
            assert f.read(64 * MiB) == img.read_bytes()
    finally:
        srv.stop()


# ------------------------------------------------------------------------ a store that dies mid-upload
class DyingProxy:
    """An HTTP proxy in front of the S3 server, counting every request by method and key. After
    `die_after_puts(n)`, n more PUTs go through and then the "server" is gone: every request's
    connection is closed unanswered (as when the process behind a port dies) until `revive()`. The
    real server behind it keeps what it was given, so the bucket can be listed afterwards."""

    def __init__(self, upstream: str):
        import http.server
        import threading
        from collections import Counter

        import requests

        self.upstream = upstream
        self.requests = Counter()
        self.put_times: dict[str, list[float]] = {}
        self.lock = threading.Lock()
        self.puts_left: int | None = None
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def forward(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                key = self.path.split("?", 1)[0]
                with proxy.lock:
                    proxy.requests[(self.command, key)] += 1
                    if self.command == "PUT":
                        proxy.put_times.setdefault(key, []).append(time.monotonic())
                    dead = proxy.puts_left is not None and proxy.puts_left <= 0
                    if not dead and self.command == "PUT" and proxy.puts_left is not None:
                        proxy.puts_left -= 1
                if dead:
                    self.close_connection = True
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "content-length")}
                r = requests.request(self.command, proxy.upstream + self.path, headers=headers, data=body,
                                     timeout=60, allow_redirects=False)
                self.send_response(r.status_code)
                for k, v in r.headers.items():
                    if k.lower() not in ("connection", "content-length", "transfer-encoding", "content-encoding",
                                         "server", "date"):
                        self.send_header(k, v)
                content = b"" if self.command == "HEAD" else r.content
                self.send_header("Content-Length", r.headers.get("Content-Length", "0") if self.command == "HEAD"
                                 else str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = forward

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def die_after_puts(self, n: int) -> None:
        with self.lock:
            self.puts_left = n

    def revive(self) -> None:
        with self.lock:
            self.puts_left = None

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def test_store_dies_mid_upload_no_manifest_names_a_missing_object(tmp_path, moto):
    """The S3 server goes away mid-upload: each failed call is tried again (the proxy counts the same
    chunk PUT several times), the snapshot ends in `error` with a StateMessage, and afterwards every
    manifest in the bucket names only chunks and segments that are there (`blocksnap admin verify`
    reading the bucket directly, and the bucket's listing)."""
    port, _ = moto
    proxy = DyingProxy(f"http://127.0.0.1:{port}")
    srv = s3_server(tmp_path, proxy.port)
    try:
        ec2 = srv.client()
        _, vid = attached_volume(ec2, REGION + "a", "dying")
        qemu_io(srv, vid, "write -P 0x21 0 2M", "flush")
        good = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        assert wait_done(ec2, good)["State"] == "completed"

        img = tmp_path / "cut.bin"
        img.write_bytes(os.urandom(32 * MiB))
        from_file(srv, img, vid)
        proxy.die_after_puts(12)  # 64 new chunks: the server goes after 12 of them
        gone = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
        s = wait_done(ec2, gone, timeout=120)
        assert s["State"] == "error" and s.get("StateMessage"), s
        # Retried with backoff: the chunk PUTs that met the dead server were each tried several times.
        tries = sorted((len(t), k) for k, t in proxy.put_times.items() if "/chunks/" in k)
        assert tries and tries[-1][0] >= 3, f"no chunk PUT was retried: {tries[-3:]}"
        times = proxy.put_times[tries[-1][1]]
        print(f"\nMEASURE retries of one chunk PUT: {len(times)} tries, gaps "
              f"{[round(b - a, 3) for a, b in zip(times, times[1:])]} s")
    finally:
        srv.stop()
        proxy.close()

    # The bucket, read directly: the failed snapshot has no manifest, and every manifest there names
    # only objects that are there.
    s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=REGION, aws_access_key_id="k",
                      aws_secret_access_key="s")
    keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="faults", Prefix="r/")
            for o in p.get("Contents", [])]
    manifests = sorted(k for k in keys if k.startswith("r/snaps/"))
    assert manifests == [f"r/snaps/{good}.manifest"], manifests
    assert any(k.startswith("r/chunks/") for k in keys)
    direct = tmp_path / "direct.toml"
    direct.write_text((tmp_path / "blocksnap.toml").read_text().replace(f":{proxy.port}", f":{port}"))
    v = subprocess.run([str(blocksnap_bin()), "admin", "verify", "--data-dir", str(srv.data_dir), "--config",
                        str(direct)], capture_output=True, text=True, timeout=120, env={**os.environ, **srv.extra_env})
    assert v.returncode == 0 and f"{good} ok" in v.stdout and gone not in v.stdout, v.stdout + v.stderr

"""Metrics and health live on their own listener (`--metrics-listen`), not on the API port, and their
series carry no resource ids: labels are operations, regions and export kinds (issue 12)."""
import re
import subprocess

import pytest
import requests

from conftest import blocksnap_bin, free_port, tagspec, wait_port
from nbd import MiB, pattern_ok, qemu_io

pytestmark = pytest.mark.blocksnap_only

# Any resource id blocksnap hands out: volumes, snapshots, instances, KMS keys, accounts' access keys.
ID = re.compile(r"\b(?:vol|snap|i|ami)-[0-9a-f]{8,}\b|\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-|AKIA[0-9A-Z]{8,}")


def metrics_text(server) -> str:
    r = requests.get(f"http://127.0.0.1:{server.metrics_port}/metrics", timeout=30)
    assert r.status_code == 200, r.text
    return r.text


def test_metrics_have_no_ids_after_nbd_traffic(server, ec2, az, run_tag):
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": az},
                             TagSpecifications=tagspec("instance", run_tag))["Instances"][0]["InstanceId"]
    vid = ec2.create_volume(Size=1, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    qemu_io(server, vid, "write -P 0x5a 0 1M", "flush")
    snap = ec2.create_snapshot(VolumeId=vid, TagSpecifications=tagspec("snapshot", run_tag))["SnapshotId"]
    ec2.get_waiter("snapshot_completed").wait(SnapshotIds=[snap], WaiterConfig={"Delay": 1, "MaxAttempts": 120})
    assert pattern_ok(server, snap, 0, MiB, 0x5a)
    text = metrics_text(server)
    # The traffic is counted, by kind and operation ...
    reads = re.search(r'^blocksnap_nbd_requests_total\{[^}]*kind="snapshot"[^}]*op="read"[^}]*\} (\d+)', text, re.M) \
        or re.search(r'^blocksnap_nbd_requests_total\{[^}]*op="read"[^}]*kind="snapshot"[^}]*\} (\d+)', text, re.M)
    assert reads and int(reads.group(1)) > 0, text
    assert re.search(r'^blocksnap_nbd_bytes_total\{[^}]*kind="volume"', text, re.M), text
    # ... per action and region for the API ...
    assert re.search(r'blocksnap_api_request_duration_seconds\w*\{[^}]*action="CreateSnapshot"', text), text
    assert f'region="{server.region}"' in text
    # ... and names none of the resources.
    for rid in (vid, snap, inst):
        assert rid not in text
    found = ID.findall(text)
    assert not found, f"resource ids in /metrics: {found[:5]}"
    assert "export=" not in text


def test_api_port_serves_neither_metrics_nor_health(server):
    for path in ("metrics", "_blocksnap/health", "health"):
        r = requests.get(server.endpoint + path, timeout=30)
        assert r.status_code in (400, 401, 403), (path, r.status_code, r.text[:200])
        assert "blocksnap_" not in r.text
        assert "<Code>MissingAuthenticationToken</Code>" in r.text, r.text
    r = requests.get(f"http://127.0.0.1:{server.metrics_port}/health", timeout=30)
    assert r.status_code == 200 and r.text == "ok"


def test_metrics_listener_off_and_bad_address(tmp_path):
    port, nbd_port, mport = free_port(), free_port(), free_port()
    env = {"BLOCKSNAP_ROOT_ACCESS_KEY_ID": "AKIAMETRICSTEST00001", "BLOCKSNAP_ROOT_SECRET_ACCESS_KEY": "s",
           "PATH": "/usr/bin:/bin", "RUST_LOG": "info"}
    base = [str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "data"), "--listen", f"127.0.0.1:{port}",
            "--nbd-listen", f"127.0.0.1:{nbd_port}"]
    # A bad value is refused before anything starts.
    r = subprocess.run(base + ["--metrics-listen", "everywhere"], capture_output=True, text=True, env=env,
                       timeout=60)
    assert r.returncode != 0 and "--metrics-listen" in r.stderr, r.stderr
    log = tmp_path / "off.log"
    with open(log, "wb") as out:
        p = subprocess.Popen(base + ["--metrics-listen", "off"], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port("127.0.0.1", port, p, log)
        text = log.read_text()
        assert "serving /metrics" not in text, text
        with pytest.raises(requests.ConnectionError):
            requests.get(f"http://127.0.0.1:{mport}/metrics", timeout=5)
    finally:
        p.terminate()
        p.wait(timeout=30)


def test_http_beyond_loopback_warns(tmp_path):
    port, nbd_port, mport = free_port(), free_port(), free_port()
    env = {"BLOCKSNAP_ROOT_ACCESS_KEY_ID": "AKIAMETRICSTEST00001", "BLOCKSNAP_ROOT_SECRET_ACCESS_KEY": "s",
           "PATH": "/usr/bin:/bin", "RUST_LOG": "info"}
    log = tmp_path / "wide.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([str(blocksnap_bin()), "serve", "--data-dir", str(tmp_path / "data"),
                              "--listen", f"0.0.0.0:{port}", "--nbd-listen", f"127.0.0.1:{nbd_port}",
                              "--metrics-listen", f"127.0.0.1:{mport}"],
                             stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_port("127.0.0.1", port, p, log)
        text = log.read_text()
        assert "WARN" in text and "without TLS" in text, text
    finally:
        p.terminate()
        p.wait(timeout=30)

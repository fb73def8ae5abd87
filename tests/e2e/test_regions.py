"""Regions are configuration: a config file restricts the served set and can put a region's snapshot
store in an S3-compatible bucket (moto_server's S3 here); snapshots and copies work across the two."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from conftest import Server, blocksnap_bin, free_port
from nbd import MiB, compare, pattern_ok, qemu_io

pytestmark = pytest.mark.blocksnap_only


@pytest.fixture
def s3(tmp_path):
    port = free_port()
    p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    for _ in range(200):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                          aws_access_key_id="s3key", aws_secret_access_key="s3secret")
    client.create_bucket(Bucket="snapstore")
    yield port, client
    os.killpg(p.pid, signal.SIGTERM)
    p.wait(timeout=10)


def test_config_regions_and_s3_store(tmp_path, s3):
    port, s3c = s3
    cfg = tmp_path / "blocksnap.toml"
    cfg.write_text(f"""
regions = ["us-east-1", "eu-west-1"]

[stores.eu-west-1]
bucket = "snapstore"
prefix = "eu-west-1"
endpoint = "http://127.0.0.1:{port}"
region = "us-east-1"
access_key_id = "s3key"
secret_access_key = "s3secret"
allow_http = true
""")
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_args=["--config", str(cfg)])
    srv.start()
    try:
        regions = sorted(r["RegionName"] for r in srv.client().describe_regions()["Regions"])
        assert regions == ["eu-west-1", "us-east-1"]
        with pytest.raises(ClientError) as e:
            srv.client(region="ap-south-1").describe_volumes()
        assert e.value.response["Error"]["Code"] == "AuthFailure"
        eu = srv.client(region="eu-west-1")
        inst = eu.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1)["Instances"][0]["InstanceId"]
        vid = eu.create_volume(Size=1, AvailabilityZone="eu-west-1a")["VolumeId"]
        eu.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
        qemu_io(srv, vid, "write -P 0x5e 0 2M", "flush")
        sid = eu.create_snapshot(VolumeId=vid)["SnapshotId"]
        eu.get_waiter("snapshot_completed").wait(SnapshotIds=[sid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        keys = [o["Key"] for o in s3c.list_objects_v2(Bucket="snapstore", Prefix="eu-west-1/").get("Contents", [])]
        assert any("/chunks/" in k for k in keys) and any(k.endswith(f"{sid}.manifest") for k in keys), keys
        assert not (srv.data_dir / "snapshots" / "eu-west-1").exists(), "the bucket holds it, not the data dir"
        assert pattern_ok(srv, sid, 0, 2 * MiB, 0x5e)
        east = srv.client(region="us-east-1")
        cid = east.copy_snapshot(SourceRegion="eu-west-1", SourceSnapshotId=sid)["SnapshotId"]
        east.get_waiter("snapshot_completed").wait(SnapshotIds=[cid], WaiterConfig={"Delay": 1, "MaxAttempts": 60})
        assert compare(srv, sid, cid).returncode == 0
        # GetStoreStats counts the bucket's chunks too (one listing of the bucket, not the data dir).
        from test_store_api import ok as store_call
        eu_stats = store_call(srv, "GetStoreStats", {"Regions": ["eu-west-1"]})["Regions"][0]
        chunk_keys = [o for o in s3c.list_objects_v2(Bucket="snapstore", Prefix="eu-west-1/chunks/").get("Contents", [])]
        assert eu_stats["Chunks"] == len(chunk_keys) > 0, (eu_stats, len(chunk_keys))
        assert eu_stats["StoredBytes"] == sum(o["Size"] for o in chunk_keys), eu_stats
        assert eu_stats["LogicalBytes"] >= 2 * MiB and eu_stats["Manifests"] == 1, eu_stats
        # Restart: the S3-backed snapshot is still readable.
        srv.restart()
        assert pattern_ok(srv, sid, 0, 2 * MiB, 0x5e)
    finally:
        srv.stop()


def test_bad_config_is_refused(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('regions = ["us-east-1"]\n[stores.eu-west-1]\nbucket = "x"\n')
    r = subprocess.run([str(blocksnap_bin()), "serve", "--config", str(cfg),
                        "--data-dir", str(tmp_path / "d"), "--listen", f"127.0.0.1:{free_port()}",
                        "--nbd-listen", f"127.0.0.1:{free_port()}"], capture_output=True, text=True, timeout=30)
    assert r.returncode != 0 and "not served" in r.stderr

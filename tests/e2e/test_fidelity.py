"""Fidelity gaps found by running real client code (issue 16, item 4): the error codes and messages EC2
answers where blocksnap used to answer others, each through boto3 and the AWS CLI."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

import boto3
import pytest
from botocore.exceptions import ClientError

from conftest import Server, free_port, make_volume, poll, tagspec

pytestmark = pytest.mark.blocksnap_only

EMPTY_SPEC = "Tag specification must have at least one tag"


def cli_error(server, *args) -> str:
    out = server.cli(*args, check=False)
    assert out.returncode != 0, out.stdout
    return out.stderr


# ------------------------------------------------------------------------------ empty TagSpecification
def test_empty_tag_specification_is_refused(ec2, server, az, image_id, run_tag):
    vid = make_volume(ec2, az, run_tag)["VolumeId"]
    calls = [
        lambda: ec2.create_volume(Size=1, AvailabilityZone=az,
                                  TagSpecifications=[{"ResourceType": "volume", "Tags": []}]),
        lambda: ec2.create_snapshot(VolumeId=vid, TagSpecifications=[{"ResourceType": "snapshot", "Tags": []}]),
        lambda: ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1,
                                  TagSpecifications=[{"ResourceType": "instance", "Tags": []}]),
    ]
    for call in calls:
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "InvalidParameterValue"
        assert EMPTY_SPEC in e.value.response["Error"]["Message"]
    # Nothing was made by the refused calls.
    assert ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [vid]}])["Snapshots"] == []
    # The CLI sends `TagSpecification.1.ResourceType=volume` alone for an empty list too.
    err = cli_error(server, "create-volume", "--size", "1", "--availability-zone", az,
                    "--tag-specifications", "ResourceType=volume,Tags=[]")
    assert "InvalidParameterValue" in err and EMPTY_SPEC in err
    # A specification with tags still works.
    ok = ec2.create_snapshot(VolumeId=vid, TagSpecifications=tagspec("snapshot", run_tag))
    assert ok["SnapshotId"].startswith("snap-")


# ------------------------------------------------------------------------------ ConcurrentSnapshotLimitExceeded
@pytest.fixture
def hung_store(tmp_path):
    """A blocksnap whose snapshot store is moto_server's S3, and a way to freeze that store (SIGSTOP):
    uploads then stay pending, so a volume's pending snapshots pile up."""
    port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            assert moto.poll() is None and time.time() < deadline, "moto_server did not start"
            time.sleep(0.05)
    region = "us-east-1"
    boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name=region, aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket="fidelity")
    cfg = tmp_path / "blocksnap.toml"
    cfg.write_text(f"""
[stores.{region}]
bucket = "fidelity"
prefix = "r"
endpoint = "http://127.0.0.1:{port}"
region = "{region}"
access_key_id = "k"
secret_access_key = "s"
allow_http = true
""")
    srv = Server(kind="blocksnap", workdir=tmp_path, extra_args=["--config", str(cfg)])
    srv.start()
    try:
        yield srv, moto
    finally:
        os.killpg(moto.pid, signal.SIGCONT)
        srv.stop()
        os.killpg(moto.pid, signal.SIGKILL)
        moto.wait(timeout=10)


def test_concurrent_snapshot_limit(hung_store):
    srv, moto = hung_store
    ec2 = srv.client()
    az = f"{srv.region}a"
    vid = make_volume(ec2, az, "fidelity")["VolumeId"]
    os.killpg(moto.pid, signal.SIGSTOP)
    pending = [ec2.create_snapshot(VolumeId=vid)["SnapshotId"] for _ in range(5)]
    states = {s["State"] for s in ec2.describe_snapshots(SnapshotIds=pending)["Snapshots"]}
    assert states == {"pending"}, states
    with pytest.raises(ClientError) as e:
        ec2.create_snapshot(VolumeId=vid)
    assert e.value.response["Error"]["Code"] == "ConcurrentSnapshotLimitExceeded"
    assert vid in e.value.response["Error"]["Message"]
    err = cli_error(srv, "create-snapshot", "--volume-id", vid)
    assert "ConcurrentSnapshotLimitExceeded" in err
    # Once the store answers again the uploads finish and the volume takes snapshots again.
    os.killpg(moto.pid, signal.SIGCONT)
    poll(lambda: ec2.describe_snapshots(SnapshotIds=pending)["Snapshots"],
         lambda ss: all(s["State"] == "completed" for s in ss), timeout=120, interval=0.5)
    assert ec2.create_snapshot(VolumeId=vid)["SnapshotId"].startswith("snap-")

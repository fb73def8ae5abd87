"""Fidelity gaps found by running real client code (issue 16, item 4): the error codes and messages EC2
answers where blocksnap used to answer others, each through boto3 and the AWS CLI."""
from __future__ import annotations

import base64
import hashlib
import os
import signal
import socket
import subprocess
import time

import boto3
import pytest
from botocore.exceptions import ClientError

import cli_inproc
from conftest import Server, free_port, make_volume, poll, tagspec

pytestmark = pytest.mark.blocksnap_only

EMPTY_SPEC = "Tag specification must have at least one tag"


def cli_error(server, *args) -> str:
    """`aws ec2 …` (in-process: cli_inproc, the CLI's own code) must fail; its stderr."""
    env = {"AWS_ACCESS_KEY_ID": server.creds.access_key, "AWS_SECRET_ACCESS_KEY": server.creds.secret_key,
           "AWS_DEFAULT_REGION": server.region, "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"}
    rc, out, err = cli_inproc.run(["ec2", *args, "--endpoint-url", server.endpoint, "--output", "json"], env)
    assert rc != 0, out
    return err


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
        if moto.poll() is None:
            os.killpg(moto.pid, signal.SIGCONT)
        srv.stop()
        if moto.poll() is None:
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


# ------------------------------------------------------------------------------ volume parameters
def test_throughput_needs_gp3(ec2, server, az, run_tag):
    for vtype, kw in (("gp2", {}), ("io1", {"Iops": 100}), ("standard", {})):
        with pytest.raises(ClientError) as e:
            ec2.create_volume(AvailabilityZone=az, Size=10, VolumeType=vtype, Throughput=200, **kw)
        assert e.value.response["Error"]["Code"] == "InvalidParameterDependency", vtype
        assert "gp3" in e.value.response["Error"]["Message"]
    err = cli_error(server, "create-volume", "--size", "10", "--availability-zone", az, "--volume-type", "gp2",
                    "--throughput", "200")
    assert "InvalidParameterDependency" in err
    vid = make_volume(ec2, az, run_tag, VolumeType="gp2")["VolumeId"]
    with pytest.raises(ClientError) as e:
        ec2.modify_volume(VolumeId=vid, Throughput=200)
    assert e.value.response["Error"]["Code"] == "InvalidParameterDependency"


def test_create_volume_needs_size_or_snapshot(ec2, server, az):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az)
    assert e.value.response["Error"]["Code"] == "MissingParameter"
    assert e.value.response["Error"]["Message"] == "The request must contain the parameter size/snapshot"
    err = cli_error(server, "create-volume", "--availability-zone", az)
    assert "MissingParameter" in err and "The request must contain the parameter size/snapshot" in err


# ------------------------------------------------------------------------------ ModifyVolume over time
def test_modify_volume_moves_through_its_states(clock_server):
    ec2 = clock_server.client()
    az = f"{clock_server.region}a"
    vid = make_volume(ec2, az, "fidelity", Size=2, VolumeType="gp3")["VolumeId"]
    m = ec2.modify_volume(VolumeId=vid, Size=20)["VolumeModification"]
    assert (m["ModificationState"], m["Progress"], m["TargetSize"], m["OriginalSize"]) == ("modifying", 0, 20, 2)
    # The new size is usable at once.
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Size"] == 20
    with pytest.raises(ClientError) as e:
        ec2.modify_volume(VolumeId=vid, Size=30)
    assert e.value.response["Error"]["Code"] == "IncorrectModificationState"

    def mod():
        (x,) = ec2.describe_volumes_modifications(VolumeIds=[vid])["VolumesModifications"]
        return x

    clock_server.advance_clock(6)  # past `modifying` (5 s); `optimizing` lasts 1 s per GiB (20 s)
    m = mod()
    assert m["ModificationState"] == "optimizing" and 0 < m["Progress"] < 100 and "EndTime" not in m
    listed = ec2.describe_volumes_modifications(
        Filters=[{"Name": "modification-state", "Values": ["optimizing"]}])["VolumesModifications"]
    assert vid in [x["VolumeId"] for x in listed]
    out = clock_server.cli("describe-volumes-modifications", "--volume-ids", vid)
    assert out["VolumesModifications"][0]["ModificationState"] == "optimizing"
    assert "IncorrectModificationState" in cli_error(clock_server, "modify-volume", "--volume-id", vid,
                                                     "--size", "30")
    later = mod()["Progress"]
    clock_server.advance_clock(5)
    assert m["Progress"] < mod()["Progress"] < 100 and later <= mod()["Progress"]
    clock_server.advance_clock(30)
    m = mod()
    assert m["ModificationState"] == "completed" and m["Progress"] == 100 and m["EndTime"] > m["StartTime"]
    # Completed: the volume takes the next modification.
    assert ec2.modify_volume(VolumeId=vid, Size=30)["VolumeModification"]["OriginalSize"] == 20


# ------------------------------------------------------------------------------ DescribeVolumeStatus
def status_of(ec2, vid) -> dict:
    (s,) = ec2.describe_volume_status(VolumeIds=[vid])["VolumeStatuses"]
    return s


def details(s) -> dict:
    return {d["Name"]: d["Status"] for d in s["VolumeStatus"]["Details"]}


def test_volume_status_reports_initialization_and_impairment(hung_store):
    srv, moto = hung_store
    ec2 = srv.client()
    az = f"{srv.region}a"
    # An empty volume: ok, no initialization.
    plain = make_volume(ec2, az, "fidelity")["VolumeId"]
    s = status_of(ec2, plain)
    assert s["VolumeStatus"]["Status"] == "ok" and details(s)["io-enabled"] == "passed"
    assert "InitializationStatusDetails" not in s and "initialization-state" not in details(s)
    # A snapshot with data (EBS direct: block 0), restored while the store is frozen: initializing.
    ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = os.urandom(524288)
    ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=len(data),
                           Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                           ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    poll(lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"], lambda x: x == "completed")
    os.killpg(moto.pid, signal.SIGSTOP)
    restored = ec2.create_volume(AvailabilityZone=az, SnapshotId=sid)["VolumeId"]
    s = poll(lambda: status_of(ec2, restored), lambda s: "initialization-state" in details(s))
    assert details(s)["initialization-state"] == "initializing"
    assert s["InitializationStatusDetails"]["Progress"] == 0
    assert s["InitializationStatusDetails"]["InitializationType"] == "default"
    listed = ec2.describe_volume_status(
        Filters=[{"Name": "volume-status.details-status", "Values": ["initializing"]}])["VolumeStatuses"]
    assert [x["VolumeId"] for x in listed] == [restored]
    out = srv.cli("describe-volume-status", "--volume-ids", restored)
    assert out["VolumeStatuses"][0]["InitializationStatusDetails"]["Progress"] == 0
    # The store answers again: hydrated, completed.
    os.killpg(moto.pid, signal.SIGCONT)
    s = poll(lambda: status_of(ec2, restored), lambda s: details(s).get("initialization-state") == "completed",
             timeout=60, interval=0.3)
    assert s["VolumeStatus"]["Status"] == "ok" and s["InitializationStatusDetails"]["Progress"] == 100
    # The store is gone: a restore fails, and the volume is impaired.
    os.killpg(moto.pid, signal.SIGKILL)
    moto.wait(timeout=10)
    broken = ec2.create_volume(AvailabilityZone=az, SnapshotId=sid)["VolumeId"]
    s = poll(lambda: status_of(ec2, broken), lambda s: s["VolumeStatus"]["Status"] == "impaired",
             timeout=90, interval=0.5)
    assert details(s)["io-enabled"] == "failed"
    impaired = ec2.describe_volume_status(
        Filters=[{"Name": "volume-status.status", "Values": ["impaired"]}])["VolumeStatuses"]
    assert [x["VolumeId"] for x in impaired] == [broken]
    assert ec2.describe_volumes(VolumeIds=[broken])["Volumes"][0]["State"] == "error"

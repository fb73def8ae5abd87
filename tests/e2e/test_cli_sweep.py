"""Every `aws ec2|lightsail|kms|ebs|dlm|rbin` command the service serves, run through the real AWS CLI (v1) as people
use it.

The command list comes from the server's own routing tables (EC2 `ACTIONS`, Lightsail and KMS
`OPERATIONS`, EBS direct `OPERATIONS`, read from the front ends' source) mapped to the CLI's names through botocore's service
models: an operation the server starts to serve is swept at once, and fails here until it has a recipe
below. Each command runs:
  * with the CLI's defaults and only its required arguments (resources created first), asserting on the
    parsed output;
  * read commands also with `--output text`, `--output table` and `--query`;
  * paginated commands with `--max-items 1` then `--starting-token`, and `--page-size` where the
    operation has a limit key (the pages must add up to the full listing);
  * EC2 commands with `--dry-run` (DryRunOperation, nothing changed);
  * `--cli-input-json` built from `--generate-cli-skeleton`'s keys;
and every `aws ec2 wait …` waiter on a served operation, plus the Lightsail polling loops (operation
and snapshot state) people write in place of waiters.

The bulk runs the CLI in-process (`awscli.clidriver.create_clidriver().main(argv)`: the same argument
parsing, customisations, serialisers, paginators, waiters and formatters as the `aws` command, without
a Python start per call); a few calls run the real `aws` executable.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

import botocore.session
import pytest
from botocore import xform_name

import cli_inproc
from conftest import REPO_ROOT, poll

pytestmark = pytest.mark.blocksnap_only

LS_REGION = "us-west-2"
BLOCK = 524288
COPY_REGION = "eu-west-1"
ID_RE = re.compile(r"\b(?:vol|snap|i|r|ami)-[0-9a-f]{8,17}\b")

_BOTOCORE = botocore.session.get_session()


# ------------------------------------------------------------------------------------ served operations
def served_operations() -> dict[str, list[str]]:
    """The operations each front end routes, from its one routing list."""
    api = REPO_ROOT / "crates/api/src"
    ec2 = re.findall(r'^\s*\("(\w+)",\s*\w+::\w+,\s*(?:true|false)\),', (api / "ec2/mod.rs").read_text(), re.M)

    def const_list(path: Path) -> list[str]:
        m = re.search(r"pub const OPERATIONS: &\[&str\] = &\[(.*?)\];", path.read_text(), re.S)
        assert m, f"{path} has no OPERATIONS list"
        return re.findall(r'"(\w+)"', m.group(1))

    out = {"ec2": ec2, "lightsail": const_list(api / "lightsail/mod.rs"), "kms": const_list(api / "kms/mod.rs"),
           "ebs": const_list(api / "ebs/mod.rs")}
    # REST-JSON front ends join once they serve something (a new front end starts with an empty list).
    for svc in ("rbin", "dlm"):
        if ops := const_list(api / svc / "mod.rs"):
            out[svc] = ops
    for svc, ops in out.items():
        assert ops and len(ops) == len(set(ops)), f"{svc}: bad operation list {ops}"
        model = _BOTOCORE.get_service_model(svc)
        unknown = set(ops) - set(model.operation_names)
        assert not unknown, f"{svc} routes operations botocore does not know: {unknown}"
    return out


SERVED = served_operations()


def model(svc):
    return _BOTOCORE.get_service_model(svc)


def paginator(svc, op):
    try:
        return _BOTOCORE.get_paginator_model(svc).get_paginator(op)
    except ValueError:
        return None


def is_read(op: str) -> bool:
    return op.startswith(("Describe", "Get", "List"))


# ------------------------------------------------------------------------------------ the CLI, in-process
class Cli:
    """`aws …` in-process (cli_inproc) as one account."""

    def __init__(self, server, creds):
        self.server, self.creds = server, creds
        self.calls = 0

    def run(self, *argv: str, region: str | None = None, output: str | None = "json"):
        env = {
            "AWS_ACCESS_KEY_ID": self.creds.access_key, "AWS_SECRET_ACCESS_KEY": self.creds.secret_key,
            "AWS_DEFAULT_REGION": region or self.server.region, "AWS_MAX_ATTEMPTS": "1",
        }
        args = [*argv, "--endpoint-url", self.server.endpoint]
        if output:
            args += ["--output", output]
        self.calls += 1
        return cli_inproc.run(args, env)

    def ok(self, *argv: str, region: str | None = None, output: str = "json"):
        rc, out, err = self.run(*argv, region=region, output=output)
        assert rc == 0, f"aws {' '.join(argv)} --output {output} failed ({rc}): {err}"
        assert "Traceback" not in err, err
        if output == "json":
            return json.loads(out) if out.strip() else {}
        return out


def cli_args(params: dict) -> list[str]:
    """API parameters as the CLI's arguments (structures and lists of structures as JSON)."""
    args = []
    for k, v in params.items():
        flag = "--" + xform_name(k, "-")
        if isinstance(v, bool):
            args.append(flag if v else "--no-" + flag[2:])
        elif isinstance(v, list) and all(isinstance(x, str) for x in v):
            args += [flag, *v]
        elif isinstance(v, (list, dict)):
            args += [flag, json.dumps(v)]
        else:
            args += [flag, str(v)]
    return args


# ------------------------------------------------------------------------------------ resources
class World:
    """Resources of one fresh account, made with boto3 (fast) for the CLI calls to act on."""

    def __init__(self, server, creds):
        self.server, self.creds = server, creds
        self.az = f"{server.region}a"
        self.ec2 = server.client(creds)
        self.ec2_copy = server.client(creds, region=COPY_REGION)
        sess = server.session(creds, LS_REGION)
        self.ls = sess.client("lightsail", endpoint_url=server.endpoint)
        self.kms = server.session(creds).client("kms", endpoint_url=server.endpoint)
        self.image = sorted(i["ImageId"] for i in self.ec2.describe_images()["Images"])[0]
        self.volume = self.new_volume()
        self.instance = self.new_instance()
        self.snapshot = self.new_snapshot(self.volume)
        self.ec2.create_tags(Resources=[self.volume], Tags=[{"Key": "sweep", "Value": "yes"}])
        self.ec2.modify_volume(VolumeId=self.volume, Size=2)
        self.key = self.kms.create_key(Description="sweep")["KeyMetadata"]["KeyId"]
        self.disk = self.ls_disk()
        self.ls_instance = self.ls_new_instance()
        self.disk_snapshot = self.ls_disk_snapshot(self.disk)
        self.instance_snapshot = self.ls_instance_snapshot(self.ls_instance)
        # EBS direct: a parent with block 0, a child that adds block 3; a block file for the CLI.
        self.ebs = server.session(creds).client("ebs", endpoint_url=server.endpoint)
        self.block = bytes(range(256)) * (BLOCK // 256)
        self.block_sum = base64.b64encode(hashlib.sha256(self.block).digest()).decode()
        self.block_file = Path(tempfile.mkdtemp(prefix="sweep-ebs-")) / "block.bin"
        self.block_file.write_bytes(self.block)
        self.ebs_parent = self.ebs_snapshot({0: b"\x01" * BLOCK})
        self.ebs_child = self.ebs_snapshot({3: self.block}, ParentSnapshotId=self.ebs_parent)

    # EBS direct
    def ebs_pending(self, **kw) -> str:
        return self.ebs.start_snapshot(VolumeSize=1, **kw)["SnapshotId"]

    def ebs_put(self, sid, index, data):
        self.ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
                                    Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                                    ChecksumAlgorithm="SHA256")

    def ebs_snapshot(self, blocks, **kw) -> str:
        sid = self.ebs_pending(**kw)
        for i, d in blocks.items():
            self.ebs_put(sid, i, d)
        self.ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks))
        self.until(self.ec2.describe_snapshots, "SnapshotIds", sid, "Snapshots", lambda s: s["State"] == "completed")
        return sid

    def ebs_token(self, sid, index) -> str:
        return {b["BlockIndex"]: b["BlockToken"] for b in self.ebs.list_snapshot_blocks(SnapshotId=sid)["Blocks"]}[index]

    # EC2
    def new_volume(self, size=1) -> str:
        vid = self.ec2.create_volume(AvailabilityZone=self.az, Size=size)["VolumeId"]
        self.until(self.ec2.describe_volumes, "VolumeIds", vid, "Volumes", lambda v: v["State"] == "available")
        return vid

    def new_instance(self, state="running") -> str:
        iid = self.ec2.run_instances(ImageId=self.image, MinCount=1, MaxCount=1,
                                     Placement={"AvailabilityZone": self.az})["Instances"][0]["InstanceId"]
        self.until_instance(iid, "running")
        if state == "stopped":
            self.ec2.stop_instances(InstanceIds=[iid])
            self.until_instance(iid, "stopped")
        elif state == "terminated":
            self.ec2.terminate_instances(InstanceIds=[iid])
            self.until_instance(iid, "terminated")
        return iid

    def until(self, describe, ids_key, ident, result_key, done):
        """Poll every 0.1 s (botocore's waiters sleep at least 1 s)."""
        poll(lambda: describe(**{ids_key: [ident]})[result_key][0], done, timeout=120, interval=0.1)

    def until_instance(self, iid, state):
        poll(lambda: self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0],
             lambda i: i["State"]["Name"] == state, timeout=120, interval=0.1)

    def attached(self) -> tuple[str, str]:
        vid, iid = self.new_volume(), self.new_instance()
        self.ec2.attach_volume(VolumeId=vid, InstanceId=iid, Device="/dev/sdf")
        self.until(self.ec2.describe_volumes, "VolumeIds", vid, "Volumes",
                   lambda v: v["State"] == "in-use" and v["Attachments"][0]["State"] == "attached")
        return vid, iid

    def new_snapshot(self, vid=None) -> str:
        sid = self.ec2.create_snapshot(VolumeId=vid or self.volume)["SnapshotId"]
        self.until(self.ec2.describe_snapshots, "SnapshotIds", sid, "Snapshots", lambda s: s["State"] == "completed")
        return sid

    def archived_snapshot(self) -> str:
        sid = self.new_snapshot()
        self.ec2.modify_snapshot_tier(SnapshotId=sid, StorageTier="archive")
        poll(lambda: self.ec2.describe_snapshot_tier_status(
            Filters=[{"Name": "snapshot-id", "Values": [sid]}])["SnapshotTierStatuses"][0],
            lambda t: t.get("LastTieringOperationStatus") == "archival-completed")
        return sid

    # Lightsail
    def ls_wait_ops(self, ops):
        for op in ops:
            poll(lambda: self.ls.get_operation(operationId=op["id"])["operation"],
                 lambda o: o["status"] in ("Succeeded", "Failed"), timeout=120, interval=0.1)

    def ls_disk(self) -> str:
        name = "sweep-" + uuid.uuid4().hex[:8]
        self.ls_wait_ops(self.ls.create_disk(diskName=name, availabilityZone=f"{LS_REGION}a",
                                             sizeInGb=8)["operations"])
        return name

    def ls_new_instance(self) -> str:
        name = "sweep-" + uuid.uuid4().hex[:8]
        self.ls_wait_ops(self.ls.create_instances(instanceNames=[name], availabilityZone=f"{LS_REGION}a",
                                                  blueprintId="amazon_linux_2023",
                                                  bundleId="nano_3_0")["operations"])
        return name

    def ls_attached(self) -> str:
        disk = self.ls_disk()
        self.ls_wait_ops(self.ls.attach_disk(diskName=disk, instanceName=self.ls_instance,
                                             diskPath=f"/dev/xvd{'fghijklmnop'[len(disk) % 11]}")["operations"])
        poll(lambda: self.ls.get_disk(diskName=disk)["disk"], lambda d: d.get("isAttached"), timeout=60, interval=0.1)
        return disk

    def ls_disk_snapshot(self, disk) -> str:
        name = "sweep-" + uuid.uuid4().hex[:8]
        self.ls_wait_ops(self.ls.create_disk_snapshot(diskSnapshotName=name, diskName=disk)["operations"])
        poll(lambda: self.ls.get_disk_snapshot(diskSnapshotName=name)["diskSnapshot"],
             lambda s: s["state"] == "completed", timeout=120, interval=0.1)
        return name

    def ls_instance_snapshot(self, inst) -> str:
        name = "sweep-" + uuid.uuid4().hex[:8]
        self.ls_wait_ops(self.ls.create_instance_snapshot(instanceSnapshotName=name,
                                                          instanceName=inst)["operations"])
        poll(lambda: self.ls.get_instance_snapshot(instanceSnapshotName=name)["instanceSnapshot"],
             lambda s: s["state"] == "available", timeout=120, interval=0.1)
        return name


def uniq(prefix="sweep") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ids_in(listing, key="VolumeId"):
    return [x[key] for x in listing]


# ------------------------------------------------------------------------------------ recipes
# operation -> (params(world) -> API parameters, check(world, params, parsed JSON output))
def _ec2_recipes():
    def vol_state(w, vid):
        return w.ec2.describe_volumes(Filters=[{"Name": "volume-id", "Values": [vid]}])["Volumes"]

    def deleted(w, p, r):
        assert r == {} and vol_state(w, p["VolumeId"]) == []

    def snaps_gone(w, p, r):
        assert r == {} and not w.ec2.describe_snapshots(
            Filters=[{"Name": "snapshot-id", "Values": [p["SnapshotId"]]}])["Snapshots"]

    def perms(w, p, r):
        assert r == {}
        got = w.ec2.describe_snapshot_attribute(SnapshotId=p["SnapshotId"], Attribute="createVolumePermission")
        assert got["CreateVolumePermissions"] == ([{"UserId": "123456789012"}]
                                                  if p.get("OperationType") == "add" else [])

    def tagged(w, p, r):
        assert r == {}
        tags = w.ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": p["Resources"]}])["Tags"]
        if "Tags" in p:
            assert {(t["Key"], t["Value"]) for t in tags} >= {("k", "v")}
        else:
            assert tags == []

    def locked(w) -> str:
        sid = w.new_snapshot()
        w.ec2.lock_snapshot(SnapshotId=sid, LockMode="governance", LockDuration=1)
        return sid

    def one_locked(w) -> dict:
        if not hasattr(w, "locked"):
            w.locked = locked(w)
        return {}

    def state_change(key, states):
        def check(w, p, r):
            (c,) = r[key]
            assert c["InstanceId"] == p["InstanceIds"][0] and c["CurrentState"]["Name"] in states, r
        return check

    return {
        "CreateVolume": (lambda w: {"AvailabilityZone": w.az, "Size": 1},
                         lambda w, p, r: (r["VolumeId"].startswith("vol-") and r["Size"] == 1
                                          and r["AvailabilityZone"] == w.az) or pytest.fail(str(r))),
        "DescribeVolumes": (lambda w: {},
                            lambda w, p, r: w.volume in ids_in(r["Volumes"]) or pytest.fail(str(r))),
        "DeleteVolume": (lambda w: {"VolumeId": w.new_volume()}, deleted),
        "ModifyVolume": (lambda w: {"VolumeId": w.new_volume(), "Size": 3},
                         lambda w, p, r: r["VolumeModification"]["TargetSize"] == 3 or pytest.fail(str(r))),
        "DescribeVolumesModifications": (
            lambda w: {}, lambda w, p, r: w.volume in ids_in(r["VolumesModifications"]) or pytest.fail(str(r))),
        "DescribeVolumeStatus": (
            lambda w: {},
            lambda w, p, r: any(s["VolumeId"] == w.volume and s["VolumeStatus"]["Status"] == "ok"
                                for s in r["VolumeStatuses"]) or pytest.fail(str(r))),
        "AttachVolume": (lambda w: {"VolumeId": w.new_volume(), "InstanceId": w.new_instance(), "Device": "/dev/sdg"},
                         lambda w, p, r: (r["VolumeId"] == p["VolumeId"] and r["Device"] == "/dev/sdg"
                                          and r["State"] in ("attaching", "attached")) or pytest.fail(str(r))),
        "DetachVolume": (lambda w: {"VolumeId": w.attached()[0]},
                         lambda w, p, r: (r["VolumeId"] == p["VolumeId"]
                                          and r["State"] in ("detaching", "detached")) or pytest.fail(str(r))),
        "RunInstances": (lambda w: {"ImageId": w.image},
                         lambda w, p, r: (r["ReservationId"].startswith("r-") and len(r["Instances"]) == 1
                                          and r["Instances"][0]["ImageId"] == w.image) or pytest.fail(str(r))),
        "DescribeInstances": (
            lambda w: {},
            lambda w, p, r: w.instance in [i["InstanceId"] for rv in r["Reservations"] for i in rv["Instances"]]
            or pytest.fail(str(r))),
        "StopInstances": (lambda w: {"InstanceIds": [w.new_instance()]},
                          state_change("StoppingInstances", ("stopping", "stopped"))),
        "StartInstances": (lambda w: {"InstanceIds": [w.new_instance("stopped")]},
                           state_change("StartingInstances", ("pending", "running"))),
        "TerminateInstances": (lambda w: {"InstanceIds": [w.new_instance()]},
                               state_change("TerminatingInstances", ("shutting-down", "terminated"))),
        "DescribeImages": (lambda w: {},
                           lambda w, p, r: w.image in ids_in(r["Images"], "ImageId") or pytest.fail(str(r))),
        "CreateSnapshot": (lambda w: {"VolumeId": w.volume},
                           lambda w, p, r: (r["SnapshotId"].startswith("snap-") and r["VolumeId"] == w.volume
                                            and r["State"] in ("pending", "completed")) or pytest.fail(str(r))),
        "CreateSnapshots": (
            lambda w: {"InstanceSpecification": {"InstanceId": w.instance}},
            lambda w, p, r: (len(r["Snapshots"]) >= 1
                             and all(s["SnapshotId"].startswith("snap-") for s in r["Snapshots"]))
            or pytest.fail(str(r))),
        "DescribeSnapshots": (
            lambda w: {}, lambda w, p, r: w.snapshot in ids_in(r["Snapshots"], "SnapshotId") or pytest.fail(str(r))),
        "DeleteSnapshot": (lambda w: {"SnapshotId": w.new_snapshot()}, snaps_gone),
        "CopySnapshot": (lambda w: {"SourceRegion": w.server.region, "SourceSnapshotId": w.snapshot},
                         lambda w, p, r: r["SnapshotId"].startswith("snap-") or pytest.fail(str(r))),
        "ModifySnapshotAttribute": (
            lambda w: {"SnapshotId": w.new_snapshot(), "Attribute": "createVolumePermission",
                       "OperationType": "add", "UserIds": ["123456789012"]}, perms),
        "DescribeSnapshotAttribute": (
            lambda w: {"SnapshotId": w.snapshot, "Attribute": "createVolumePermission"},
            lambda w, p, r: (r["SnapshotId"] == w.snapshot and r["CreateVolumePermissions"] == [])
            or pytest.fail(str(r))),
        "ResetSnapshotAttribute": (lambda w: {"SnapshotId": w.snapshot, "Attribute": "createVolumePermission"},
                                   perms),
        "LockSnapshot": (lambda w: {"SnapshotId": w.new_snapshot(), "LockMode": "governance", "LockDuration": 1},
                         lambda w, p, r: (r["SnapshotId"] == p["SnapshotId"] and r["LockState"] == "governance"
                                          and r["LockDuration"] == 1) or pytest.fail(str(r))),
        "UnlockSnapshot": (lambda w: {"SnapshotId": locked(w)},
                           lambda w, p, r: (r == {"SnapshotId": p["SnapshotId"]} and not w.ec2.describe_locked_snapshots(
                               SnapshotIds=[p["SnapshotId"]])["Snapshots"]) or pytest.fail(str(r))),
        "DescribeLockedSnapshots": (
            one_locked, lambda w, p, r: any(s["SnapshotId"] == w.locked and s["LockState"] == "governance"
                                            for s in r["Snapshots"]) or pytest.fail(str(r))),
        "ModifySnapshotTier": (
            lambda w: {"SnapshotId": w.new_snapshot(), "StorageTier": "archive"},
            lambda w, p, r: (r["SnapshotId"] == p["SnapshotId"] and "TieringStartTime" in r) or pytest.fail(str(r))),
        "RestoreSnapshotTier": (
            lambda w: {"SnapshotId": w.archived_snapshot(), "TemporaryRestoreDays": 1},
            lambda w, p, r: (r["SnapshotId"] == p["SnapshotId"] and r["RestoreDuration"] == 1
                             and r["IsPermanentRestore"] is False) or pytest.fail(str(r))),
        "DescribeSnapshotTierStatus": (
            lambda w: {},
            lambda w, p, r: w.snapshot in ids_in(r["SnapshotTierStatuses"], "SnapshotId") or pytest.fail(str(r))),
        "ListSnapshotsInRecycleBin": (
            lambda w: (w.__dict__.get("binned") or w.__dict__.setdefault("binned", _binned_snapshot(w)), {})[1],
            lambda w, p, r: w.binned in ids_in(r["Snapshots"], "SnapshotId") or pytest.fail(str(r))),
        "RestoreSnapshotFromRecycleBin": (
            lambda w: {"SnapshotId": _binned_snapshot(w)},
            lambda w, p, r: (r["SnapshotId"] == p["SnapshotId"] and r["State"] == "completed"
                             and p["SnapshotId"] in ids_in(w.ec2.describe_snapshots(SnapshotIds=[p["SnapshotId"]])[
                                 "Snapshots"], "SnapshotId")) or pytest.fail(str(r))),
        "CreateTags": (lambda w: {"Resources": [w.new_volume()], "Tags": [{"Key": "k", "Value": "v"}]}, tagged),
        "DeleteTags": (lambda w: {"Resources": [_tagged_volume(w)]}, tagged),
        "DescribeTags": (
            lambda w: {},
            lambda w, p, r: any(t["ResourceId"] == w.volume and t["Key"] == "sweep" and t["Value"] == "yes"
                                and t["ResourceType"] == "volume" for t in r["Tags"]) or pytest.fail(str(r))),
        "DescribeRegions": (
            lambda w: {}, lambda w, p, r: {"us-east-1", "eu-west-1"} <= {x["RegionName"] for x in r["Regions"]}
            or pytest.fail(str(r))),
        "DescribeAvailabilityZones": (
            lambda w: {},
            lambda w, p, r: sorted(z["ZoneName"] for z in r["AvailabilityZones"])
            == [f"{w.server.region}{c}" for c in "abc"] or pytest.fail(str(r))),
        "DescribeAccountAttributes": (
            lambda w: {}, lambda w, p, r: len(r["AccountAttributes"]) > 0 or pytest.fail(str(r))),
        "GetEbsEncryptionByDefault": (
            lambda w: {}, lambda w, p, r: r["EbsEncryptionByDefault"] is False or pytest.fail(str(r))),
        "EnableEbsEncryptionByDefault": (
            lambda w: {}, lambda w, p, r: _then_disable(w, r)),
        "DisableEbsEncryptionByDefault": (
            lambda w: {}, lambda w, p, r: r["EbsEncryptionByDefault"] is False or pytest.fail(str(r))),
        "GetEbsDefaultKmsKeyId": (
            lambda w: {}, lambda w, p, r: "alias/aws/ebs" in r["KmsKeyId"] or r["KmsKeyId"].startswith("arn:aws:kms:")
            or pytest.fail(str(r))),
        "ModifyEbsDefaultKmsKeyId": (
            lambda w: {"KmsKeyId": w.key}, lambda w, p, r: _then_reset_key(w, p, r)),
        "ResetEbsDefaultKmsKeyId": (
            lambda w: {}, lambda w, p, r: bool(r["KmsKeyId"]) or pytest.fail(str(r))),
    }


def _tagged_volume(w) -> str:
    vid = w.new_volume()
    w.ec2.create_tags(Resources=[vid], Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": ""}])
    return vid


def _then_disable(w, r):
    assert r["EbsEncryptionByDefault"] is True, r
    assert w.ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
    w.ec2.disable_ebs_encryption_by_default()


def _then_reset_key(w, p, r):
    assert r["KmsKeyId"].endswith(p["KmsKeyId"]), r
    assert w.ec2.get_ebs_default_kms_key_id()["KmsKeyId"] == r["KmsKeyId"]
    w.ec2.reset_ebs_default_kms_key_id()


def _ls_recipes():
    def ops(kind):
        def check(w, p, r):
            assert r["operations"] and all(o["operationType"] == kind and o["id"] for o in r["operations"]), r
            w.ls_wait_ops(r["operations"])
        return check

    def named(key, name_of):
        return lambda w, p, r: r[key]["name"] == name_of(w) or pytest.fail(str(r))

    def listed(key, name_of):
        return lambda w, p, r: name_of(w) in [x["name"] for x in r[key]] or pytest.fail(str(r))

    az = f"{LS_REGION}a"
    return {
        "CreateDisk": (lambda w: {"diskName": uniq(), "availabilityZone": az, "sizeInGb": 8}, ops("CreateDisk")),
        "CreateDiskFromSnapshot": (
            lambda w: {"diskName": uniq(), "availabilityZone": az, "sizeInGb": 8,
                       "diskSnapshotName": w.disk_snapshot}, ops("CreateDiskFromSnapshot")),
        "GetDisk": (lambda w: {"diskName": w.disk}, named("disk", lambda w: w.disk)),
        "GetDisks": (lambda w: {}, listed("disks", lambda w: w.disk)),
        "DeleteDisk": (lambda w: {"diskName": w.ls_disk()}, ops("DeleteDisk")),
        "AttachDisk": (lambda w: {"diskName": w.ls_disk(), "instanceName": w.ls_new_instance(),
                                  "diskPath": "/dev/xvdf"}, ops("AttachDisk")),
        "DetachDisk": (lambda w: {"diskName": w.ls_attached()}, ops("DetachDisk")),
        "CreateInstances": (lambda w: {"instanceNames": [uniq()], "availabilityZone": az,
                                       "blueprintId": "amazon_linux_2023", "bundleId": "nano_3_0"},
                            ops("CreateInstance")),
        "GetInstance": (lambda w: {"instanceName": w.ls_instance}, named("instance", lambda w: w.ls_instance)),
        "GetInstances": (lambda w: {}, listed("instances", lambda w: w.ls_instance)),
        "DeleteInstance": (lambda w: {"instanceName": w.ls_new_instance()}, ops("DeleteInstance")),
        "CreateDiskSnapshot": (lambda w: {"diskSnapshotName": uniq(), "diskName": w.disk},
                               ops("CreateDiskSnapshot")),
        "GetDiskSnapshot": (lambda w: {"diskSnapshotName": w.disk_snapshot},
                            named("diskSnapshot", lambda w: w.disk_snapshot)),
        "GetDiskSnapshots": (lambda w: {}, listed("diskSnapshots", lambda w: w.disk_snapshot)),
        "DeleteDiskSnapshot": (lambda w: {"diskSnapshotName": w.ls_disk_snapshot(w.disk)},
                               ops("DeleteDiskSnapshot")),
        "CreateInstanceSnapshot": (lambda w: {"instanceSnapshotName": uniq(), "instanceName": w.ls_instance},
                                   ops("CreateInstanceSnapshot")),
        "GetInstanceSnapshot": (lambda w: {"instanceSnapshotName": w.instance_snapshot},
                                named("instanceSnapshot", lambda w: w.instance_snapshot)),
        "GetInstanceSnapshots": (lambda w: {}, listed("instanceSnapshots", lambda w: w.instance_snapshot)),
        "DeleteInstanceSnapshot": (lambda w: {"instanceSnapshotName": w.ls_instance_snapshot(w.ls_instance)},
                                   ops("DeleteInstanceSnapshot")),
        "GetOperation": (
            lambda w: {"operationId": w.ls.get_operations()["operations"][0]["id"]},
            lambda w, p, r: r["operation"]["id"] == p["operationId"] or pytest.fail(str(r))),
        "GetOperations": (lambda w: {}, lambda w, p, r: len(r["operations"]) > 0 or pytest.fail(str(r))),
        "GetOperationsForResource": (
            lambda w: {"resourceName": w.disk},
            lambda w, p, r: (r["operations"] and all(o["resourceName"] == w.disk for o in r["operations"]))
            or pytest.fail(str(r))),
        "TagResource": (lambda w: {"resourceName": w.disk, "tags": [{"key": "k", "value": "v"}]},
                        ops("TagResource")),
        "UntagResource": (lambda w: {"resourceName": w.disk, "tagKeys": ["k"]}, ops("UntagResource")),
        "GetRegions": (lambda w: {},
                       lambda w, p, r: LS_REGION in [x["name"] for x in r["regions"]] or pytest.fail(str(r))),
        "GetBlueprints": (lambda w: {}, lambda w, p, r: "amazon_linux_2023" in [b["blueprintId"] for b in r["blueprints"]]
                          or pytest.fail(str(r))),
        "GetBundles": (lambda w: {}, lambda w, p, r: "nano_3_0" in [b["bundleId"] for b in r["bundles"]]
                       or pytest.fail(str(r))),
    }


def _kms_recipes():
    def alias(w) -> str:
        name = "alias/" + uniq()
        w.kms.create_alias(AliasName=name, TargetKeyId=w.key)
        return name

    return {
        "CreateKey": (lambda w: {},
                      lambda w, p, r: (r["KeyMetadata"]["KeyId"] and r["KeyMetadata"]["Enabled"] is True)
                      or pytest.fail(str(r))),
        "DescribeKey": (lambda w: {"KeyId": w.key},
                        lambda w, p, r: r["KeyMetadata"]["KeyId"] == w.key or pytest.fail(str(r))),
        "ListKeys": (lambda w: {}, lambda w, p, r: w.key in ids_in(r["Keys"], "KeyId") or pytest.fail(str(r))),
        "CreateAlias": (lambda w: {"AliasName": "alias/" + uniq(), "TargetKeyId": w.key},
                        lambda w, p, r: p["AliasName"] in ids_in(w.kms.list_aliases()["Aliases"], "AliasName")
                        or pytest.fail(str(r))),
        "DeleteAlias": (lambda w: {"AliasName": alias(w)},
                        lambda w, p, r: p["AliasName"] not in ids_in(w.kms.list_aliases()["Aliases"], "AliasName")
                        or pytest.fail(str(r))),
        "ListAliases": (lambda w: {},
                        lambda w, p, r: "alias/aws/ebs" in ids_in(r["Aliases"], "AliasName") or pytest.fail(str(r))),
    }


def _ebs_recipes():
    def put(w):
        return {"SnapshotId": w.ebs_pending(), "BlockIndex": 3, "BlockData": str(w.block_file), "DataLength": BLOCK,
                "Checksum": w.block_sum, "ChecksumAlgorithm": "SHA256"}

    def complete(w):
        sid = w.ebs_pending()
        w.ebs_put(sid, 1, w.block)
        return {"SnapshotId": sid, "ChangedBlocksCount": 1}

    def completed(w, p, r):
        assert r["Status"] in ("completed", "pending"), r
        w.until(w.ec2.describe_snapshots, "SnapshotIds", p["SnapshotId"], "Snapshots",
                lambda s: s["State"] == "completed")

    return {
        "StartSnapshot": (lambda w: {"VolumeSize": 1},
                          lambda w, p, r: (r["Status"] == "pending" and r["BlockSize"] == BLOCK
                                           and r["SnapshotId"].startswith("snap-")) or pytest.fail(str(r))),
        "PutSnapshotBlock": (put, lambda w, p, r: r["Checksum"] == w.block_sum or pytest.fail(str(r))),
        "CompleteSnapshot": (complete, completed),
        "ListSnapshotBlocks": (lambda w: {"SnapshotId": w.ebs_child},
                               lambda w, p, r: [b["BlockIndex"] for b in r["Blocks"]] == [0, 3] or pytest.fail(str(r))),
        "ListChangedBlocks": (lambda w: {"FirstSnapshotId": w.ebs_parent, "SecondSnapshotId": w.ebs_child},
                              lambda w, p, r: [c["BlockIndex"] for c in r["ChangedBlocks"]] == [3]
                              or pytest.fail(str(r))),
        "GetSnapshotBlock": (lambda w: {"SnapshotId": w.ebs_child, "BlockIndex": 3,
                                        "BlockToken": w.ebs_token(w.ebs_child, 3)},
                             lambda w, p, r: (r["Checksum"] == w.block_sum and r["DataLength"] == BLOCK
                                              and EBS_OUT.read_bytes() == w.block) or pytest.fail(str(r))),
    }


def _dlm_recipes():
    role = "arn:aws:iam::123456789012:role/AWSDataLifecycleManagerDefaultRole"
    details = {"ResourceTypes": ["VOLUME"], "TargetTags": [{"Key": "sweep", "Value": "yes"}],
               "Schedules": [{"Name": "daily", "CreateRule": {"Interval": 24, "IntervalUnit": "HOURS",
                                                              "Times": ["03:00"]}, "RetainRule": {"Count": 3}}]}

    def dlm(w):
        if not hasattr(w, "dlm"):
            w.dlm = w.server.session(w.creds).client("dlm", endpoint_url=w.server.endpoint)
        return w.dlm

    def new_policy(w) -> str:
        return dlm(w).create_lifecycle_policy(ExecutionRoleArn=role, Description="sweep", State="DISABLED",
                                              PolicyDetails=details, Tags={"made-by": "sweep"})["PolicyId"]

    def policy(w) -> str:
        if not hasattr(w, "dlm_policy"):
            w.dlm_policy = new_policy(w)
        return w.dlm_policy

    def arn(w) -> str:
        return dlm(w).get_lifecycle_policy(PolicyId=policy(w))["Policy"]["PolicyArn"]

    def get(w):
        return dlm(w).get_lifecycle_policy(PolicyId=policy(w))["Policy"]

    def gone(w, p, r):
        with pytest.raises(Exception, match="ResourceNotFoundException"):
            dlm(w).get_lifecycle_policy(PolicyId=p["PolicyId"])

    return {
        "CreateLifecyclePolicy": (lambda w: {"ExecutionRoleArn": role, "Description": "sweep", "State": "DISABLED",
                                             "PolicyDetails": details},
                                  lambda w, p, r: (r["PolicyId"].startswith("policy-")
                                                   and get(w)["State"] == "DISABLED") or pytest.fail(str(r))),
        "GetLifecyclePolicies": (lambda w: {"PolicyIds": [policy(w)]},
                                 lambda w, p, r: [x["PolicyId"] for x in r["Policies"]] == [policy(w)]
                                 or pytest.fail(str(r))),
        "GetLifecyclePolicy": (lambda w: {"PolicyId": policy(w)},
                               lambda w, p, r: (r["Policy"]["PolicyId"] == policy(w)
                                                and r["Policy"]["PolicyDetails"]["Schedules"] == details["Schedules"])
                               or pytest.fail(str(r))),
        "UpdateLifecyclePolicy": (lambda w: {"PolicyId": policy(w), "Description": "swept " + uniq()},
                                  lambda w, p, r: get(w)["Description"] == p["Description"] or pytest.fail(str(r))),
        "DeleteLifecyclePolicy": (lambda w: {"PolicyId": new_policy(w)}, gone),
        "TagResource": (lambda w: {"ResourceArn": arn(w), "Tags": {"swept": "yes"}},
                        lambda w, p, r: get(w)["Tags"].get("swept") == "yes" or pytest.fail(str(r))),
        "UntagResource": (lambda w: {"ResourceArn": arn(w), "TagKeys": ["swept"]},
                          lambda w, p, r: "swept" not in get(w)["Tags"] or pytest.fail(str(r))),
        "ListTagsForResource": (lambda w: {"ResourceArn": arn(w)},
                                lambda w, p, r: r["Tags"] == get(w)["Tags"] or pytest.fail(str(r))),
    }


def _rbin(w):
    if not hasattr(w, "rbin"):
        w.rbin = w.server.session(w.creds).client("rbin", endpoint_url=w.server.endpoint)
    return w.rbin


RBIN_TAG = [{"ResourceTagKey": "rbin-sweep", "ResourceTagValue": "yes"}]
RBIN_LOCK = {"UnlockDelay": {"UnlockDelayValue": 7, "UnlockDelayUnit": "DAYS"}}


def _rbin_rule(w) -> str:
    """A tag-level rule of the sweep's account (retains snapshots tagged rbin-sweep=yes)."""
    if not hasattr(w, "rbin_rule"):
        w.rbin_rule = _rbin(w).create_rule(ResourceType="EBS_SNAPSHOT", ResourceTags=RBIN_TAG,
                                           RetentionPeriod={"RetentionPeriodValue": 1, "RetentionPeriodUnit": "DAYS"},
                                           Description="sweep", Tags=[{"Key": "made-by", "Value": "sweep"}])["Identifier"]
    return w.rbin_rule


def _binned_snapshot(w) -> str:
    _rbin_rule(w)
    sid = w.new_snapshot()
    w.ec2.create_tags(Resources=[sid], Tags=[{"Key": "rbin-sweep", "Value": "yes"}])
    w.ec2.delete_snapshot(SnapshotId=sid)
    return sid


def _rbin_recipes():
    days = {"RetentionPeriodValue": 1, "RetentionPeriodUnit": "DAYS"}

    def region_rule(w) -> str:
        return _rbin(w).create_rule(ResourceType="EC2_IMAGE", RetentionPeriod=days)["Identifier"]

    def locked_rule(w) -> str:
        return _rbin(w).create_rule(ResourceType="EC2_IMAGE", RetentionPeriod=days,
                                    LockConfiguration=RBIN_LOCK)["Identifier"]

    def arn(w) -> str:
        return _rbin(w).get_rule(Identifier=_rbin_rule(w))["RuleArn"]

    def tags(w) -> list:
        return _rbin(w).list_tags_for_resource(ResourceArn=arn(w))["Tags"]

    def gone(w, p, r):
        with pytest.raises(Exception, match="ResourceNotFoundException"):
            _rbin(w).get_rule(Identifier=p["Identifier"])

    return {
        "CreateRule": (lambda w: {"ResourceType": "EC2_IMAGE", "RetentionPeriod": days},
                       lambda w, p, r: (len(r["Identifier"]) == 11 and r["Status"] == "available"
                                        and r["ResourceType"] == "EC2_IMAGE") or pytest.fail(str(r))),
        "GetRule": (lambda w: {"Identifier": _rbin_rule(w)},
                    lambda w, p, r: (r["Identifier"] == p["Identifier"] and r["ResourceTags"] == RBIN_TAG)
                    or pytest.fail(str(r))),
        "ListRules": (lambda w: {"ResourceType": "EBS_SNAPSHOT"},
                      lambda w, p, r: _rbin_rule(w) in [x["Identifier"] for x in r["Rules"]] or pytest.fail(str(r))),
        "UpdateRule": (lambda w: {"Identifier": _rbin_rule(w), "Description": "swept " + uniq()},
                       lambda w, p, r: _rbin(w).get_rule(Identifier=p["Identifier"])["Description"]
                       == p["Description"] or pytest.fail(str(r))),
        "DeleteRule": (lambda w: {"Identifier": region_rule(w)}, gone),
        "LockRule": (lambda w: {"Identifier": region_rule(w), "LockConfiguration": RBIN_LOCK},
                     lambda w, p, r: r["LockState"] == "locked" or pytest.fail(str(r))),
        "UnlockRule": (lambda w: {"Identifier": locked_rule(w)},
                       lambda w, p, r: (r["LockState"] == "pending_unlock" and "LockEndTime" in r)
                       or pytest.fail(str(r))),
        "TagResource": (lambda w: {"ResourceArn": arn(w), "Tags": [{"Key": "swept", "Value": "yes"}]},
                        lambda w, p, r: {"Key": "swept", "Value": "yes"} in tags(w) or pytest.fail(str(r))),
        "UntagResource": (lambda w: {"ResourceArn": arn(w), "TagKeys": ["swept"]},
                          lambda w, p, r: all(t["Key"] != "swept" for t in tags(w)) or pytest.fail(str(r))),
        "ListTagsForResource": (lambda w: {"ResourceArn": arn(w)},
                                lambda w, p, r: r["Tags"] == tags(w) or pytest.fail(str(r))),
    }


RECIPES = {"ec2": _ec2_recipes(), "lightsail": _ls_recipes(), "kms": _kms_recipes(), "ebs": _ebs_recipes(),
           "dlm": _dlm_recipes(), "rbin": _rbin_recipes()}
# GetSnapshotBlock's block goes to a file the CLI takes as a positional argument.
EBS_OUT = Path(tempfile.mkdtemp(prefix="sweep-ebs-out-")) / "block.out"
OUTFILE = {("ebs", "GetSnapshotBlock"): [str(EBS_OUT)]}
REGION_OF = {"lightsail": LS_REGION}
CASES = [(svc, op) for svc, ops in SERVED.items() for op in ops]


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def world(server):
    server.client().describe_regions()  # serving (catalog migrated) before `admin create-account`
    creds = server.create_account()
    return World(server, creds)


@pytest.fixture(scope="module")
def cli(server, world):
    c = Cli(server, world.creds)
    yield c
    print(f"\nCLI sweep: {c.calls} aws commands run in-process")  # shown with -s


# ------------------------------------------------------------------------------------ the sweep
def test_every_front_end_is_swept():
    """A new protocol front end (aws ebs, rbin, dlm, …) joins served_operations() and the recipes."""
    api = REPO_ROOT / "crates/api/src"
    # The web console serves pages that call the front ends below, not AWS operations of its own
    # (tests/e2e/test_console.py drives it in a browser).
    front_ends = {p.name for p in api.iterdir() if p.is_dir()} - {"console"}
    # Not yet serving anything (an empty OPERATIONS list): nothing to sweep.
    front_ends -= {p for p in front_ends
                   if re.search(r"pub const OPERATIONS: &\[&str\] = &\[\s*\];", (api / p / "mod.rs").read_text())}
    assert front_ends == set(SERVED), f"front ends {front_ends ^ set(SERVED)} are not swept"


def test_every_served_operation_has_a_recipe():
    for svc, ops in SERVED.items():
        missing = [op for op in ops if op not in RECIPES[svc]]
        assert not missing, f"{svc} serves {missing}: add a sweep recipe"
        stale = set(RECIPES[svc]) - set(ops)
        assert not stale, f"{svc}: recipes for operations no longer served: {stale}"


@pytest.mark.parametrize("svc,op", CASES, ids=[f"{s}-{xform_name(o, '-')}" for s, o in CASES])
def test_command(cli, world, svc, op):
    cmd = xform_name(op, "-")
    region = REGION_OF.get(svc)
    params_of, check = RECIPES[svc][op]
    outfile = OUTFILE.get((svc, op), [])
    op_model = model(svc).operation_model(op)
    members = op_model.input_shape.members if op_model.input_shape else {}

    # 1. The CLI's defaults, required arguments only.
    p = params_of(world)
    r = cli.ok(svc, cmd, *cli_args(p), *outfile, region=region)
    check(world, p, r)

    # 2. Output formats and --query (reads: same state, same answer).
    if is_read(op):
        text = cli.ok(svc, cmd, *cli_args(p), *outfile, region=region, output="text")
        table = cli.ok(svc, cmd, *cli_args(p), *outfile, region=region, output="table")
        for ident in set(ID_RE.findall(json.dumps(r))):
            assert ident in text and ident in table, f"{ident} missing from text/table output of {cmd}"
        if r:
            assert text.strip(), f"{cmd} --output text printed nothing"
            assert op in table, f"{cmd} --output table has no {op} title:\n{table[:400]}"
        keys = cli.ok(svc, cmd, *cli_args(p), *outfile, "--query", "keys(@)", region=region)
        assert sorted(keys) == sorted(r), (keys, list(r))

    # 3. Client-side paging on top of the server's tokens.
    pag = paginator(svc, op)
    if pag:
        result_key = pag["result_key"]
        full = r[result_key]
        full = idents(full)
        first = cli.ok(svc, cmd, *cli_args(p), "--max-items", "1", region=region)
        assert idents(first[result_key]) == full[:1]
        if len(full) > 1:
            rest = cli.ok(svc, cmd, *cli_args(p), "--starting-token", first["NextToken"], region=region)
            assert idents(first[result_key] + rest[result_key]) == full, cmd
        else:
            assert "NextToken" not in first
        if "limit_key" in pag:
            small = 5 if svc == "ec2" and op != "DescribeImages" else 1
            paged = cli.ok(svc, cmd, *cli_args(p), "--page-size", str(small), region=region)
            assert idents(paged[result_key]) == full, cmd

    # 4. --dry-run: refused with DryRunOperation, nothing done.
    if "DryRun" in members:
        p = params_of(world)
        before = None if is_read(op) else _snapshot_of_state(world)
        rc, out, err = cli.run(svc, cmd, *cli_args(p), "--dry-run", region=region)
        assert rc != 0 and "DryRunOperation" in err and "Request would have succeeded" in err, (rc, err)
        if before is not None:
            assert _snapshot_of_state(world) == before, f"{cmd} --dry-run changed something"

    # 5. --cli-input-json from --generate-cli-skeleton's keys.
    if outfile:
        # awscli v1's argparse checks a command with an output file (get-snapshot-block) for its
        # required arguments before it reads --generate-cli-skeleton or --cli-input-json: neither
        # works for such a command with any service, so there is nothing of ours to check.
        return
    skeleton = cli.ok(svc, cmd, "--generate-cli-skeleton", region=region)
    p = params_of(world)
    if op == "RunInstances":
        p.update(MinCount=1, MaxCount=1)  # the CLI's --count becomes these two
    assert set(p) <= set(skeleton), f"{cmd}: skeleton lacks {set(p) - set(skeleton)}"
    assert set(op_model.input_shape.required_members if op_model.input_shape else []) <= set(skeleton)
    extra = []
    if (svc, op) == ("ebs", "PutSnapshotBlock"):
        # A streaming blob is a file path on the command line; in the JSON it would be the bytes.
        extra = ["--block-data", p.pop("BlockData")]
    r = cli.ok(svc, cmd, "--cli-input-json", json.dumps(p), *outfile, *extra, region=region)
    check(world, p, r)


def idents(items: list) -> list[tuple]:
    """What names each listed item (ids, names, keys), not its state: a snapshot may complete between
    two calls."""
    return [tuple(str(v) for k, v in sorted(it.items())
                  if isinstance(v, str) and (k.endswith(("Id", "Name")) or k in ("name", "id", "Key")))
            for it in items]


def _snapshot_of_state(w) -> tuple:
    vols = w.ec2.describe_volumes()["Volumes"]
    insts = w.ec2.describe_instances()["Reservations"]
    snaps = w.ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
    tags = w.ec2.describe_tags()["Tags"]
    return (sorted((v["VolumeId"], v["State"], v["Size"], len(v.get("Attachments", []))) for v in vols),
            sorted((i["InstanceId"], i["State"]["Name"]) for rv in insts for i in rv["Instances"]),
            sorted(s["SnapshotId"] for s in snaps), len(tags),
            w.ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"],
            w.ec2.get_ebs_default_kms_key_id()["KmsKeyId"])


# ------------------------------------------------------------------------------------ waiters
def _waiter_recipes():
    def vol(w):
        return {"VolumeIds": [w.volume]}

    def deleted_volume(w):
        vid = w.new_volume()
        w.ec2.delete_volume(VolumeId=vid)
        return {"VolumeIds": [vid]}

    return {
        "VolumeAvailable": vol,
        "VolumeInUse": lambda w: {"VolumeIds": [w.attached()[0]]},
        "VolumeDeleted": deleted_volume,
        "SnapshotCompleted": lambda w: {"SnapshotIds": [w.snapshot]},
        "InstanceExists": lambda w: {"InstanceIds": [w.instance]},
        "InstanceRunning": lambda w: {"InstanceIds": [w.instance]},
        "InstanceStopped": lambda w: {"InstanceIds": [w.new_instance("stopped")]},
        "InstanceTerminated": lambda w: {"InstanceIds": [w.new_instance("terminated")]},
        "ImageExists": lambda w: {"ImageIds": [w.image]},
        "ImageAvailable": lambda w: {"ImageIds": [w.image]},
    }


WAITER_RECIPES = _waiter_recipes()
_EC2_WAITERS = _BOTOCORE.get_waiter_model("ec2")
SERVED_WAITERS = [n for n in _EC2_WAITERS.waiter_names
                  if _EC2_WAITERS.get_waiter(n).operation in SERVED["ec2"]]


def test_every_served_waiter_has_a_recipe():
    missing = [n for n in SERVED_WAITERS if n not in WAITER_RECIPES]
    assert not missing, f"waiters on served operations without a recipe: {missing}"


@pytest.mark.parametrize("name", SERVED_WAITERS, ids=[xform_name(n, "-") for n in SERVED_WAITERS])
def test_waiter(cli, world, name):
    p = WAITER_RECIPES[name](world)
    started = time.monotonic()
    out = cli.ok("ec2", "wait", xform_name(name, "-"), *cli_args(p))
    assert out == {}
    # Already in the state: answered on the first poll (a miss would sleep the waiter's 15 s delay).
    assert time.monotonic() - started < 14, f"wait {name} needed more than one poll"
    # And a waiter that cannot succeed fails with the waiter's error, not a crash.
    if name == "VolumeAvailable":
        rc, _, err = cli.run("ec2", "wait", "volume-available", "--volume-ids", "vol-0123456789abcdef0")
        assert rc != 0 and "InvalidVolume.NotFound" in err


def test_lightsail_polling_loops(cli, world):
    """Lightsail has no CLI waiters: people poll get-operation and get-disk-snapshot with the CLI."""
    name = uniq()
    ops = cli.ok("lightsail", "create-disk-snapshot", "--disk-name", world.disk, "--disk-snapshot-name", name,
                 region=LS_REGION)["operations"]
    for op in ops:
        status = poll(lambda: cli.ok("lightsail", "get-operation", "--operation-id", op["id"], "--query",
                                     "operation.status", region=LS_REGION),
                      lambda s: s in ("Succeeded", "Failed"), timeout=120, interval=0.5)
        assert status == "Succeeded"
    state = poll(lambda: cli.ok("lightsail", "get-disk-snapshot", "--disk-snapshot-name", name, "--query",
                                "diskSnapshot.state", "--output", "text", region=LS_REGION, output="text").strip(),
                 lambda s: s in ("completed", "error"), timeout=120, interval=0.5)
    assert state == "completed"


# ------------------------------------------------------------------------------------ the real executable
@pytest.mark.parametrize("argv,region,expect", [
    (["ec2", "describe-volumes", "--max-items", "2"], None, "Volumes"),
    (["lightsail", "get-disks"], LS_REGION, "disks"),
    (["kms", "list-aliases"], None, "Aliases"),
], ids=["ec2", "lightsail", "kms"])
def test_real_aws_executable(server, world, argv, region, expect):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": world.creds.access_key, "AWS_SECRET_ACCESS_KEY": world.creds.secret_key,
                "AWS_DEFAULT_REGION": region or server.region, "AWS_CONFIG_FILE": os.devnull,
                "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_MAX_ATTEMPTS": "1", "AWS_PAGER": ""})
    out = subprocess.run(["aws", *argv, "--endpoint-url", server.endpoint, "--output", "json"],
                         capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    listing = json.loads(out.stdout)[expect]
    assert isinstance(listing, list) and listing

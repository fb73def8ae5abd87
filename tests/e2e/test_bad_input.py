"""Bad input never breaks the service: for every EC2 action, malformed and hostile parameter values get
an AWS error document with a 4xx status (never a 5xx, never a hang), and the service keeps answering."""
from __future__ import annotations

import random

import pytest

pytestmark = pytest.mark.blocksnap_only

ACTIONS = [
    "CreateVolume", "DescribeVolumes", "DeleteVolume", "ModifyVolume", "AttachVolume", "DetachVolume",
    "RunInstances", "DescribeInstances", "StopInstances", "StartInstances", "TerminateInstances",
    "DescribeImages", "CreateSnapshot", "CreateSnapshots", "CopySnapshot", "DescribeSnapshots",
    "DeleteSnapshot", "ModifySnapshotAttribute", "DescribeSnapshotAttribute", "ResetSnapshotAttribute",
    "CreateTags", "DeleteTags", "DescribeTags", "DescribeRegions", "DescribeAvailabilityZones",
    "DescribeAccountAttributes", "EnableEbsEncryptionByDefault", "ModifyEbsDefaultKmsKeyId",
]

KEYS = ["VolumeId", "VolumeId.1", "InstanceId", "InstanceId.1", "SnapshotId", "SnapshotId.1", "Size",
        "AvailabilityZone", "VolumeType", "Iops", "Throughput", "Encrypted", "KmsKeyId", "Device",
        "MaxResults", "NextToken", "Filter.1.Name", "Filter.1.Value.1", "Filter.0.Name", "Filter.x.Name",
        "TagSpecification.1.ResourceType", "TagSpecification.1.Tag.1.Key", "Tag.1.Key", "Tag.1.Value",
        "ResourceId.1", "ImageId", "MinCount", "MaxCount", "Placement.AvailabilityZone",
        "BlockDeviceMapping.1.DeviceName", "BlockDeviceMapping.1.Ebs.VolumeSize", "SourceRegion",
        "SourceSnapshotId", "PresignedUrl", "InstanceSpecification.InstanceId", "Attribute", "OperationType",
        "UserId.1", "CreateVolumePermission.Add.1.UserId", "DryRun", "Force", "Description", "ClientToken"]

VALUES = ["", " ", "-1", "0", "99999999999999999999999", "1e9", "true", "maybe", "vol-", "vol-zzzzzzzzzzzzzzzzz",
          "i-00000000000000000", "snap-../../etc/passwd", "../../../../etc/passwd", "\u00e9\u6f22\U0001F600",
          "a" * 5000, "%00", "<xml>&amp;", "arn:aws:kms:us-east-1:000000000000:key/x", "alias/aws/ebs",
          "us-east-1z", "/dev/sdf", "gp3", "io2", "NaN", "9" * 30]


def test_fuzzed_parameters_get_clean_4xx(fresh_server):
    # A server of its own: valid fuzzed calls may change account settings (e.g. encryption by default).
    server = fresh_server
    rnd = random.Random(20261122)
    for i in range(400):
        action = ACTIONS[i % len(ACTIONS)]
        params = {"Action": action}
        for k in rnd.sample(KEYS, rnd.randint(1, 6)):
            params[k] = rnd.choice(VALUES)
        r = server.raw(params)
        if r.status == 200:
            continue  # a valid call (e.g. a Describe with a harmless filter) is fine
        assert 400 <= r.status < 500 or r.status == 412, (params, r.status, r.text[:300])
        assert r.code, (params, r.text[:300])
        assert "<Message>" in r.text
    # Still healthy.
    assert server.raw({"Action": "DescribeVolumes"}).status == 200


def test_malformed_bodies_and_json(fresh_server):
    server = fresh_server
    import requests
    # Unsigned garbage: refused as unauthenticated, not a crash.
    for body in (b"\xff\xfe\x00", b"Action=DescribeVolumes&" * 1000, b"=&=&&="):
        r = requests.post(server.endpoint, data=body, timeout=10)
        assert 400 <= r.status_code < 500
    kms = server.session().client("kms", endpoint_url=server.endpoint)
    import botocore.exceptions
    for kid in ("", "x" * 3000, "alias/", "arn:aws:kms:us-east-1:1:alias/"):
        with pytest.raises(botocore.exceptions.ClientError) as e:
            kms.describe_key(KeyId=kid) if kid else kms.create_alias(AliasName="nope", TargetKeyId="x")
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] < 500
    assert server.raw({"Action": "DescribeVolumes"}).status == 200

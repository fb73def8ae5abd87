"""Protocol-level behaviour: DryRun, InvalidAction, MissingParameter, malformed values, GET query strings,
the XML error envelope, and EBS encryption by default."""
import re

import pytest
from botocore.exceptions import ClientError

from conftest import (IS_MOTO, client_error_code, describe_volume, http_status, make_instance, make_volume,
                      run_filter, tagspec, wait_attached)


# ------------------------------------------------------------------ DryRun

def _count(ec2, run_tag):
    return len(ec2.describe_volumes(Filters=[run_filter(run_tag)])["Volumes"])


def test_dry_run_create_volume(ec2, az, run_tag):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=1, DryRun=True, TagSpecifications=tagspec("volume", run_tag))
    assert client_error_code(e) == "DryRunOperation"
    assert http_status(e) == 412
    assert _count(ec2, run_tag) == 0


def test_dry_run_run_instances(ec2, image_id, az, run_tag):
    with pytest.raises(ClientError) as e:
        ec2.run_instances(ImageId=image_id, MinCount=1, MaxCount=1, Placement={"AvailabilityZone": az},
                          TagSpecifications=tagspec("instance", run_tag), DryRun=True)
    assert client_error_code(e) == "DryRunOperation"
    res = ec2.describe_instances(Filters=[{"Name": "tag:e2e-run", "Values": [run_tag]}])["Reservations"]
    assert res == []


@pytest.fixture
def attached_pair(ec2, az, image_id, run_tag):
    inst = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    free = make_volume(ec2, az, run_tag)["VolumeId"]
    used = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.attach_volume(VolumeId=used, InstanceId=inst, Device="/dev/sdf")
    wait_attached(ec2, used)
    return inst, free, used


# (name, call, check that nothing changed)
DRY_CALLS = [
    ("attach", lambda ec2, i, f, u: ec2.attach_volume(VolumeId=f, InstanceId=i, Device="/dev/sdg", DryRun=True),
     lambda ec2, i, f, u: describe_volume(ec2, f)["State"] == "available"),
    ("detach", lambda ec2, i, f, u: ec2.detach_volume(VolumeId=u, DryRun=True),
     lambda ec2, i, f, u: describe_volume(ec2, u)["State"] == "in-use"),
    ("delete", lambda ec2, i, f, u: ec2.delete_volume(VolumeId=f, DryRun=True),
     lambda ec2, i, f, u: describe_volume(ec2, f)["State"] == "available"),
    ("modify", lambda ec2, i, f, u: ec2.modify_volume(VolumeId=f, Size=5, DryRun=True),
     lambda ec2, i, f, u: describe_volume(ec2, f)["Size"] == 1),
    ("create_tags", lambda ec2, i, f, u: ec2.create_tags(Resources=[f], Tags=[{"Key": "dry", "Value": "1"}],
                                                        DryRun=True),
     lambda ec2, i, f, u: "dry" not in {t["Key"] for t in describe_volume(ec2, f)["Tags"]}),
    ("delete_tags", lambda ec2, i, f, u: ec2.delete_tags(Resources=[f], Tags=[{"Key": "e2e-run"}], DryRun=True),
     lambda ec2, i, f, u: "e2e-run" in {t["Key"] for t in describe_volume(ec2, f)["Tags"]}),
    ("stop", lambda ec2, i, f, u: ec2.stop_instances(InstanceIds=[i], DryRun=True),
     lambda ec2, i, f, u: ec2.describe_instances(InstanceIds=[i])["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"),
    ("terminate", lambda ec2, i, f, u: ec2.terminate_instances(InstanceIds=[i], DryRun=True),
     lambda ec2, i, f, u: ec2.describe_instances(InstanceIds=[i])["Reservations"][0]["Instances"][0]["State"]["Name"] == "running"),
    ("enable_ebs_default", lambda ec2, i, f, u: ec2.enable_ebs_encryption_by_default(DryRun=True),
     lambda ec2, i, f, u: ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False),
]


@pytest.mark.parametrize("name,call,unchanged", DRY_CALLS, ids=[c[0] for c in DRY_CALLS])
def test_dry_run_mutating_calls(ec2, attached_pair, name, call, unchanged):
    if IS_MOTO and name in ("detach", "delete_tags", "enable_ebs_default", "modify"):
        pytest.skip("moto ignores DryRun on this call")
    inst, free, used = attached_pair
    with pytest.raises(ClientError) as e:
        call(ec2, inst, free, used)
    assert client_error_code(e) == "DryRunOperation", e.value.response
    assert http_status(e) == 412
    assert unchanged(ec2, inst, free, used)


@pytest.mark.moto_deviates  # moto ignores DryRun on DescribeVolumes
def test_dry_run_describe(ec2):
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(DryRun=True)
    assert client_error_code(e) == "DryRunOperation"


# ------------------------------------------------------------------ envelope, InvalidAction, MissingParameter

def test_success_xml_envelope(server):
    r = server.raw({"Action": "DescribeVolumes"})
    assert r.status == 200, r.text
    assert "<DescribeVolumesResponse" in r.text
    # AWS writes the namespace with a trailing slash; moto without.
    ns = 'xmlns="http://ec2.amazonaws.com/doc/2016-11-15' + ('' if IS_MOTO else '/') + '"'
    assert ns in r.text, r.text
    assert re.search(r"<requestId>[^<]+</requestId>", r.text)


def test_get_query_string(server, ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    r = server.raw({"Action": "DescribeVolumes", "VolumeId.1": v}, method="GET")
    assert r.status == 200, r.text
    assert f"<volumeId>{v}</volumeId>" in r.text


def test_flattened_list_params(server, ec2, az, run_tag):
    a = make_volume(ec2, az, run_tag, Size=1)["VolumeId"]
    b = make_volume(ec2, az, run_tag, Size=2)["VolumeId"]
    r = server.raw({"Action": "DescribeVolumes", "Filter.1.Name": "tag:e2e-run", "Filter.1.Value.1": run_tag,
                    "Filter.2.Name": "size", "Filter.2.Value.1": "2", "Filter.2.Value.2": "3"})
    assert r.status == 200, r.text
    assert b in r.text and a not in r.text


@pytest.mark.moto_deviates  # moto answers HTTP 500
def test_unknown_action(server):
    r = server.raw({"Action": "FrobnicateVolumes"})
    assert r.status == 400, r.text
    assert r.code == "InvalidAction"
    if not IS_MOTO:  # the EC2 error envelope
        assert re.search(r"<Response>\s*<Errors>\s*<Error>\s*<Code>InvalidAction</Code>\s*<Message>", r.text), r.text
        assert re.search(r"<RequestID>[^<]+</RequestID>", r.text), r.text


@pytest.mark.moto_deviates
def test_missing_action(server):
    r = server.raw({})
    assert r.status == 400, r.text
    assert r.code in ("MissingAction", "InvalidAction", "MissingParameter")


@pytest.mark.moto_deviates  # moto answers HTTP 500 for a missing required parameter
@pytest.mark.parametrize("params", [
    {"Action": "AttachVolume", "VolumeId": "vol-0123456789abcdef0", "InstanceId": "i-0123456789abcdef0"},
    {"Action": "DeleteVolume"},
    {"Action": "DetachVolume"},
    {"Action": "CreateTags", "ResourceId.1": "vol-0123456789abcdef0"},
])
def test_missing_parameter(server, params):
    r = server.raw(params)
    assert r.status == 400, r.text
    assert r.code == "MissingParameter", r.text


@pytest.mark.moto_deviates
@pytest.mark.parametrize("params", [
    {"Action": "CreateVolume", "AvailabilityZone": "us-east-1a", "Size": "abc"},
    {"Action": "CreateVolume", "AvailabilityZone": "us-east-1a", "Size": "1", "Encrypted": "maybe"},
    {"Action": "DescribeVolumes", "MaxResults": "lots"},
])
def test_malformed_value(server, params, ec2, run_tag):
    params = {**params, "TagSpecification.1.ResourceType": "volume",
              "TagSpecification.1.Tag.1.Key": "e2e-run", "TagSpecification.1.Tag.1.Value": run_tag}
    if params["Action"] == "DescribeVolumes":
        params = {k: v for k, v in params.items() if not k.startswith("TagSpecification")}
    params["AvailabilityZone"] = f"{server.region}a" if "AvailabilityZone" in params else None
    params = {k: v for k, v in params.items() if v is not None}
    r = server.raw(params)
    assert r.status == 400, r.text
    assert r.code == "InvalidParameterValue", r.text
    assert _count(ec2, run_tag) == 0


def test_raw_create_volume_with_tag_specification(server, ec2, run_tag):
    r = server.raw({"Action": "CreateVolume", "AvailabilityZone": f"{server.region}a", "Size": "2",
                    "TagSpecification.1.ResourceType": "volume",
                    "TagSpecification.1.Tag.1.Key": "e2e-run", "TagSpecification.1.Tag.1.Value": run_tag,
                    "TagSpecification.1.Tag.2.Key": "Name", "TagSpecification.1.Tag.2.Value": "raw"})
    assert r.status == 200, r.text
    assert "<CreateVolumeResponse" in r.text
    vols = ec2.describe_volumes(Filters=[run_filter(run_tag), {"Name": "tag:Name", "Values": ["raw"]}])["Volumes"]
    assert len(vols) == 1 and vols[0]["Size"] == 2


# ------------------------------------------------------------------ EBS encryption by default

def test_ebs_encryption_by_default(ec2, az, run_tag, server):
    assert ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    try:
        assert ec2.enable_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
        assert ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is True
        v = ec2.create_volume(AvailabilityZone=az, Size=1, TagSpecifications=tagspec("volume", run_tag))
        vol = describe_volume(ec2, v["VolumeId"])
        if not IS_MOTO:  # moto does not apply the account default to new volumes
            assert v["Encrypted"] is True and vol["Encrypted"] is True
            assert vol.get("KmsKeyId")
        # Encrypted=false cannot opt out while the default is on: the volume is still encrypted.
        w = ec2.create_volume(AvailabilityZone=az, Size=1, Encrypted=False,
                              TagSpecifications=tagspec("volume", run_tag))
        if not IS_MOTO:
            assert describe_volume(ec2, w["VolumeId"])["Encrypted"] is True
    finally:
        r = ec2.disable_ebs_encryption_by_default()
    assert r["EbsEncryptionByDefault"] is False
    assert ec2.get_ebs_encryption_by_default()["EbsEncryptionByDefault"] is False
    u = ec2.create_volume(AvailabilityZone=az, Size=1, TagSpecifications=tagspec("volume", run_tag))
    assert describe_volume(ec2, u["VolumeId"])["Encrypted"] is False


@pytest.mark.moto_deviates  # moto lacks GetEbsDefaultKmsKeyId
def test_get_ebs_default_kms_key_id(ec2, server):
    k = ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
    assert k == "alias/aws/ebs" or re.match(rf"^arn:aws:kms:{server.region}:\d{{12}}:(key/|alias/aws/ebs)", k), k

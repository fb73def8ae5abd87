"""CreateVolume / DescribeVolumes / DeleteVolume / ModifyVolume, following the EC2 API reference."""
import datetime
import re
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import (IS_MOTO, client_error_code, describe_volume, make_volume, run_filter, tagspec,
                      wait_volume_state, wait_cfg)

VOL_ID = re.compile(r"^vol-[0-9a-f]{17}$")


# ------------------------------------------------------------------ CreateVolume: shape and sizes

def test_create_volume_response_shape(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=8, VolumeType="gp2",
                          TagSpecifications=tagspec("volume", run_tag, Name="shape"))
    assert VOL_ID.match(v["VolumeId"]), v["VolumeId"]
    assert v["Size"] == 8 and isinstance(v["Size"], int)
    assert v["AvailabilityZone"] == az
    assert v["VolumeType"] == "gp2"
    assert v["State"] in ("creating", "available")
    assert isinstance(v["CreateTime"], datetime.datetime)
    assert v["CreateTime"].tzinfo is not None
    now = datetime.datetime.now(datetime.timezone.utc)
    assert abs((now - v["CreateTime"]).total_seconds()) < 300
    assert v["Encrypted"] is False
    assert v.get("SnapshotId", "") == ""
    assert {"Key": "Name", "Value": "shape"} in v["Tags"]
    if not IS_MOTO:  # moto omits Iops for gp2; AWS reports 3 IOPS/GiB, minimum 100
        assert v["Iops"] == 100
    vol = wait_volume_state(ec2, v["VolumeId"], "available")
    assert vol["Attachments"] == []
    assert vol["Size"] == 8 and vol["VolumeType"] == "gp2" and vol["AvailabilityZone"] == az
    assert isinstance(vol["CreateTime"], datetime.datetime)
    if not IS_MOTO:  # moto omits MultiAttachEnabled
        assert vol["MultiAttachEnabled"] is False


@pytest.mark.parametrize("size", [1, 16384])
def test_create_volume_size_bounds_ok(ec2, az, run_tag, size):
    v = ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType="gp2",
                          TagSpecifications=tagspec("volume", run_tag))
    assert v["Size"] == size
    assert describe_volume(ec2, v["VolumeId"])["Size"] == size


@pytest.mark.moto_deviates  # moto accepts any size
@pytest.mark.parametrize("size", [0, 16385, -1])
def test_create_volume_size_out_of_range(ec2, az, size):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType="gp2")
    assert client_error_code(e) == "InvalidParameterValue"


def test_create_volume_default_type_is_gp2(ec2, az, run_tag):
    # API reference: VolumeType "Default: gp2".
    v = ec2.create_volume(AvailabilityZone=az, Size=2, TagSpecifications=tagspec("volume", run_tag))
    assert v["VolumeType"] == "gp2"


def test_create_volume_without_size_or_snapshot(ec2, az):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az)
    assert client_error_code(e) == "MissingParameter"


@pytest.mark.moto_deviates  # moto defaults the zone
def test_create_volume_without_az(ec2):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(Size=1)
    assert client_error_code(e) == "MissingParameter"


@pytest.mark.moto_deviates  # moto accepts any zone name
@pytest.mark.parametrize("zone", ["us-east-1z", "eu-west-1a", "nowhere"])
def test_create_volume_bad_az(ec2, server, zone):
    if zone.startswith(server.region):
        zone = server.region + "z"
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=zone, Size=1)
    # AWS answers InvalidZone.NotFound for an unknown zone (InvalidParameterValue on some paths).
    assert client_error_code(e) in ("InvalidZone.NotFound", "InvalidParameterValue")


# ------------------------------------------------------------------ CreateVolume: types, IOPS, throughput

@pytest.mark.moto_deviates  # moto omits Throughput and does not default gp3 IOPS
def test_create_gp3_defaults(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=10, VolumeType="gp3",
                          TagSpecifications=tagspec("volume", run_tag))
    assert v["VolumeType"] == "gp3"
    assert v["Iops"] == 3000
    assert v["Throughput"] == 125
    vol = describe_volume(ec2, v["VolumeId"])
    assert vol["Iops"] == 3000 and vol["Throughput"] == 125


def test_create_gp3_custom(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=100, VolumeType="gp3", Iops=6000, Throughput=500,
                          TagSpecifications=tagspec("volume", run_tag))
    assert v["Iops"] == 6000 and v["Throughput"] == 500
    vol = describe_volume(ec2, v["VolumeId"])
    assert vol["Iops"] == 6000 and vol["Throughput"] == 500


@pytest.mark.moto_deviates
@pytest.mark.parametrize("kw", [
    {"Iops": 2999},                     # gp3 minimum is 3000 IOPS
    {"Throughput": 124},                # gp3 minimum is 125 MiB/s
    {"Iops": 3000, "Throughput": 751},  # max 0.25 MiB/s per provisioned IOPS
])
def test_create_gp3_out_of_range(ec2, az, kw):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=100, VolumeType="gp3", **kw)
    assert client_error_code(e) == "InvalidParameterValue"


@pytest.mark.moto_deviates  # moto has no IOPS/GiB ratio check
def test_create_gp3_iops_per_gib_ratio(ec2, az):
    # gp3: at most 500 IOPS per GiB; 8 GiB -> at most 4000.
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=8, VolumeType="gp3", Iops=5000)
    assert client_error_code(e) == "InvalidParameterValue"


@pytest.mark.parametrize("vtype,size,iops", [("io1", 10, 500), ("io2", 10, 1000)])
def test_create_provisioned_iops(ec2, az, run_tag, vtype, size, iops):
    v = ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType=vtype, Iops=iops,
                          TagSpecifications=tagspec("volume", run_tag))
    assert v["VolumeType"] == vtype and v["Iops"] == iops
    assert describe_volume(ec2, v["VolumeId"])["Iops"] == iops


@pytest.mark.parametrize("vtype", ["io1", "io2"])
def test_create_provisioned_iops_requires_iops(ec2, az, vtype):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=10, VolumeType=vtype)
    # moto (modelled on AWS) answers InvalidParameterDependency: "[VolumeType] requires the parameter Iops"
    assert client_error_code(e) in ("InvalidParameterDependency", "MissingParameter",
                                    "InvalidParameterCombination", "InvalidParameterValue")


@pytest.mark.moto_deviates
@pytest.mark.parametrize("vtype,size,iops", [
    ("io1", 10, 99),     # below 100
    ("io1", 10, 501),    # io1: 50 IOPS/GiB
    ("io2", 10, 10001),  # io2: 1000 IOPS/GiB
])
def test_create_provisioned_iops_out_of_range(ec2, az, vtype, size, iops):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType=vtype, Iops=iops)
    assert client_error_code(e) == "InvalidParameterValue"


@pytest.mark.parametrize("vtype,size", [("gp2", 10), ("st1", 125), ("sc1", 125), ("standard", 10)])
def test_create_iops_not_supported(ec2, az, vtype, size):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType=vtype, Iops=1000)
    assert client_error_code(e) in ("InvalidParameterCombination", "InvalidParameterValue",
                                    "InvalidParameterDependency")


@pytest.mark.parametrize("vtype,kw", [("gp2", {}), ("io1", {"Iops": 100}), ("st1", {}), ("standard", {})])
def test_create_throughput_only_for_gp3(ec2, az, vtype, kw):
    size = 125 if vtype == "st1" else 10
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType=vtype, Throughput=200, **kw)
    assert client_error_code(e) in ("InvalidParameterCombination", "InvalidParameterValue",
                                    "InvalidParameterDependency")


@pytest.mark.parametrize("vtype,size", [("st1", 125), ("sc1", 125), ("standard", 1), ("standard", 1024)])
def test_create_hdd_types(ec2, az, run_tag, vtype, size):
    v = ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType=vtype,
                          TagSpecifications=tagspec("volume", run_tag))
    assert v["VolumeType"] == vtype and v["Size"] == size


@pytest.mark.moto_deviates  # moto has no per-type size ranges
@pytest.mark.parametrize("vtype,size", [("st1", 124), ("sc1", 124), ("standard", 1025), ("io1", 3)])
def test_create_type_size_ranges(ec2, az, vtype, size):
    kw = {"Iops": 100} if vtype == "io1" else {}
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=size, VolumeType=vtype, **kw)
    assert client_error_code(e) == "InvalidParameterValue"


@pytest.mark.moto_deviates  # moto accepts any volume type
def test_create_unknown_volume_type(ec2, az):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=1, VolumeType="gp9")
    assert client_error_code(e) == "InvalidParameterValue"


# ------------------------------------------------------------------ CreateVolume: encryption, multi-attach

def test_create_encrypted_default_key(ec2, az, run_tag, server):
    v = ec2.create_volume(AvailabilityZone=az, Size=1, Encrypted=True,
                          TagSpecifications=tagspec("volume", run_tag))
    assert v["Encrypted"] is True
    vol = describe_volume(ec2, v["VolumeId"])
    assert vol["Encrypted"] is True
    # The volume records the KMS key ARN (the region's default key, alias/aws/ebs).
    assert re.match(rf"^arn:aws:kms:{server.region}:\d{{12}}:key/", vol["KmsKeyId"]), vol["KmsKeyId"]


@pytest.mark.moto_deviates  # moto lacks GetEbsDefaultKmsKeyId
def test_create_encrypted_with_default_key_matches_get_default(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=1, Encrypted=True,
                          TagSpecifications=tagspec("volume", run_tag))
    default = ec2.get_ebs_default_kms_key_id()["KmsKeyId"]
    kms = describe_volume(ec2, v["VolumeId"])["KmsKeyId"]
    # GetEbsDefaultKmsKeyId may answer the alias ARN or the key ARN.
    assert kms == default or default.endswith("alias/aws/ebs")


def test_create_kms_key_without_encrypted(ec2, az, server):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=1, KmsKeyId="alias/aws/ebs")
    # AWS: "The parameter KmsKeyId requires the parameter Encrypted to be set."
    assert client_error_code(e) in ("InvalidParameterDependency", "InvalidParameterCombination",
                                    "MissingParameter")


def test_create_encrypted_false_is_plain(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=1, Encrypted=False,
                          TagSpecifications=tagspec("volume", run_tag))
    vol = describe_volume(ec2, v["VolumeId"])
    assert vol["Encrypted"] is False
    assert "KmsKeyId" not in vol


@pytest.mark.parametrize("vtype", ["io1", "io2"])
def test_create_multi_attach_io(ec2, az, run_tag, vtype):
    v = ec2.create_volume(AvailabilityZone=az, Size=10, VolumeType=vtype, Iops=100,
                          MultiAttachEnabled=True, TagSpecifications=tagspec("volume", run_tag))
    assert v["MultiAttachEnabled"] is True
    assert describe_volume(ec2, v["VolumeId"])["MultiAttachEnabled"] is True


@pytest.mark.parametrize("vtype", ["gp2", "gp3", "standard"])
def test_create_multi_attach_rejected(ec2, az, vtype):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=10, VolumeType=vtype, MultiAttachEnabled=True)
    assert client_error_code(e) in ("InvalidParameterCombination", "InvalidParameterValue",
                                    "InvalidParameterDependency")


# ------------------------------------------------------------------ CreateVolume: tags, ClientToken

def test_create_tag_specifications(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=1,
                          TagSpecifications=tagspec("volume", run_tag, Name="db", env="prod"))
    tags = {t["Key"]: t["Value"] for t in v["Tags"]}
    assert tags == {"e2e-run": run_tag, "Name": "db", "env": "prod"}
    d = {t["Key"]: t["Value"] for t in describe_volume(ec2, v["VolumeId"])["Tags"]}
    assert d == tags


@pytest.mark.moto_deviates  # moto ignores the ResourceType
def test_create_tag_specifications_wrong_resource_type(ec2, az):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=1,
                          TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "a", "Value": "b"}]}])
    assert client_error_code(e) in ("InvalidParameterValue", "InvalidTagSpecification")


@pytest.mark.moto_deviates  # moto has no ClientToken idempotency for volumes
def test_create_client_token_idempotent(ec2, az, run_tag):
    token = uuid.uuid4().hex
    a = ec2.create_volume(AvailabilityZone=az, Size=3, ClientToken=token,
                          TagSpecifications=tagspec("volume", run_tag))
    b = ec2.create_volume(AvailabilityZone=az, Size=3, ClientToken=token,
                          TagSpecifications=tagspec("volume", run_tag))
    assert a["VolumeId"] == b["VolumeId"]
    vols = ec2.describe_volumes(Filters=[run_filter(run_tag)])["Volumes"]
    assert [v["VolumeId"] for v in vols] == [a["VolumeId"]]
    # Same token, different parameters: IdempotentParameterMismatch.
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=4, ClientToken=token)
    assert client_error_code(e) == "IdempotentParameterMismatch"
    # A different token makes a new volume.
    c = ec2.create_volume(AvailabilityZone=az, Size=3, ClientToken=uuid.uuid4().hex,
                          TagSpecifications=tagspec("volume", run_tag))
    assert c["VolumeId"] != a["VolumeId"]


def test_create_volume_waiter_available(ec2, az, run_tag):
    v = ec2.create_volume(AvailabilityZone=az, Size=1, TagSpecifications=tagspec("volume", run_tag))
    ec2.get_waiter("volume_available").wait(VolumeIds=[v["VolumeId"]], WaiterConfig=wait_cfg())
    assert describe_volume(ec2, v["VolumeId"])["State"] == "available"


# ------------------------------------------------------------------ DescribeVolumes

def test_describe_volumes_by_ids(ec2, az, run_tag):
    a = make_volume(ec2, az, run_tag)
    b = make_volume(ec2, az, run_tag)
    got = ec2.describe_volumes(VolumeIds=[a["VolumeId"], b["VolumeId"]])["Volumes"]
    assert sorted(v["VolumeId"] for v in got) == sorted([a["VolumeId"], b["VolumeId"]])


def test_describe_volumes_all_or_nothing(ec2, az, run_tag):
    a = make_volume(ec2, az, run_tag)
    missing = "vol-0123456789abcdef0"
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(VolumeIds=[a["VolumeId"], missing])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    assert missing in e.value.response["Error"]["Message"]


@pytest.mark.moto_deviates  # moto answers InvalidVolume.NotFound
def test_describe_volumes_malformed_id(ec2):
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(VolumeIds=["vol-xyz"])
    assert client_error_code(e) in ("InvalidVolumeID.Malformed", "InvalidParameterValue")


def _ids(ec2, filters):
    return sorted(v["VolumeId"] for v in ec2.describe_volumes(Filters=filters)["Volumes"])


@pytest.fixture
def filter_set(ec2, az, az_b, run_tag):
    """Five volumes that differ in type, size, zone, encryption and tags."""
    mk = lambda **kw: make_volume(ec2, kw.pop("zone", az), run_tag, **kw)["VolumeId"]
    vols = {
        "a": mk(Size=1, VolumeType="gp2",
                TagSpecifications=tagspec("volume", run_tag, Name="alpha", tier="web")),
        "b": mk(Size=2, VolumeType="gp3",
                TagSpecifications=tagspec("volume", run_tag, Name="beta", tier="db")),
        "c": mk(Size=2, VolumeType="gp3", zone=az_b, Encrypted=True,
                TagSpecifications=tagspec("volume", run_tag, Name="gamma")),
        "d": mk(Size=3, VolumeType="standard",
                TagSpecifications=tagspec("volume", run_tag, Name="Alpha2", owner="x")),
        "e": mk(Size=125, VolumeType="st1", zone=az_b, TagSpecifications=tagspec("volume", run_tag)),
    }
    return vols


def test_filter_volume_id(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [{"Name": "volume-id", "Values": [fs["a"], fs["c"]]}]) == sorted([fs["a"], fs["c"]])


def test_filter_status(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "status", "Values": ["available"]}]) == sorted(fs.values())
    assert _ids(ec2, [run_filter(run_tag), {"Name": "status", "Values": ["in-use"]}]) == []


def test_filter_availability_zone(ec2, filter_set, run_tag, az_b):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "availability-zone", "Values": [az_b]}]) == \
        sorted([fs["c"], fs["e"]])


def test_filter_size(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "size", "Values": ["2"]}]) == sorted([fs["b"], fs["c"]])


def test_filter_volume_type(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "volume-type", "Values": ["gp3"]}]) == \
        sorted([fs["b"], fs["c"]])


def test_filter_encrypted(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "encrypted", "Values": ["true"]}]) == [fs["c"]]
    assert _ids(ec2, [run_filter(run_tag), {"Name": "encrypted", "Values": ["false"]}]) == \
        sorted([fs["a"], fs["b"], fs["d"], fs["e"]])


def test_filter_snapshot_id(ec2, filter_set, run_tag):
    # None of them comes from a snapshot.
    assert _ids(ec2, [run_filter(run_tag), {"Name": "snapshot-id", "Values": ["snap-0123456789abcdef0"]}]) == []


def test_filter_values_are_ored(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "volume-type", "Values": ["gp2", "st1"]}]) == \
        sorted([fs["a"], fs["e"]])


def test_filters_are_anded(ec2, filter_set, run_tag, az_b):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "volume-type", "Values": ["gp3"]},
                      {"Name": "availability-zone", "Values": [az_b]}]) == [fs["c"]]
    assert _ids(ec2, [run_filter(run_tag), {"Name": "volume-type", "Values": ["gp2"]},
                      {"Name": "availability-zone", "Values": [az_b]}]) == []


def test_filter_tag_key_value(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["beta"]}]) == [fs["b"]]
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:tier", "Values": ["web", "db"]}]) == \
        sorted([fs["a"], fs["b"]])


def test_filter_tag_key(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag-key", "Values": ["tier"]}]) == sorted([fs["a"], fs["b"]])
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag-key", "Values": ["owner"]}]) == [fs["d"]]


def test_filter_tag_value(ec2, filter_set, run_tag):
    fs = filter_set
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag-value", "Values": ["gamma"]}]) == [fs["c"]]


def test_filter_wildcards(ec2, filter_set, run_tag):
    fs = filter_set
    # '*' any run of characters, '?' exactly one; matching is case-sensitive.
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["*lpha*"]}]) == \
        sorted([fs["a"], fs["d"]])
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["alph?"]}]) == [fs["a"]]
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["Alpha*"]}]) == [fs["d"]]
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["?eta"]}]) == [fs["b"]]
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["be?"]}]) == []
    assert _ids(ec2, [run_filter(run_tag), {"Name": "volume-type", "Values": ["gp*"]}]) == \
        sorted([fs["a"], fs["b"], fs["c"]])
    assert _ids(ec2, [{"Name": "tag:e2e-run", "Values": [run_tag[:-3] + "???"]}]) == sorted(fs.values())


def test_filter_case_sensitive(ec2, filter_set, run_tag):
    assert _ids(ec2, [run_filter(run_tag), {"Name": "tag:Name", "Values": ["BETA"]}]) == []
    assert _ids(ec2, [run_filter(run_tag), {"Name": "volume-type", "Values": ["GP3"]}]) == []


@pytest.mark.moto_deviates  # moto raises NotImplemented (HTTP 500)
def test_filter_unknown_name(ec2):
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(Filters=[{"Name": "no-such-filter", "Values": ["x"]}])
    assert client_error_code(e) == "InvalidParameterValue"


@pytest.mark.moto_deviates  # moto ignores MaxResults on DescribeVolumes
def test_pagination_max_results(ec2, az, run_tag):
    ids = sorted(make_volume(ec2, az, run_tag, wait=False)["VolumeId"] for _ in range(12))
    seen, token, pages = [], None, 0
    while True:
        kw = {"Filters": [run_filter(run_tag)], "MaxResults": 5}
        if token:
            kw["NextToken"] = token
        r = ec2.describe_volumes(**kw)
        pages += 1
        assert len(r["Volumes"]) <= 5
        seen += [v["VolumeId"] for v in r["Volumes"]]
        token = r.get("NextToken")
        if not token:
            break
        assert pages < 10
    assert sorted(seen) == ids and len(seen) == len(set(seen))
    assert pages == 3


@pytest.mark.moto_deviates  # moto ignores MaxResults on DescribeVolumes
def test_pagination_paginator(ec2, az, run_tag):
    ids = sorted(make_volume(ec2, az, run_tag, wait=False)["VolumeId"] for _ in range(7))
    pag = ec2.get_paginator("describe_volumes")
    pages = list(pag.paginate(Filters=[run_filter(run_tag)], PaginationConfig={"PageSize": 5}))
    assert len(pages) == 2
    assert sorted(v["VolumeId"] for p in pages for v in p["Volumes"]) == ids
    # Whole-account pagination sees every volume exactly once.
    all_ids = [v["VolumeId"] for p in pag.paginate(PaginationConfig={"PageSize": 6}) for v in p["Volumes"]]
    assert len(all_ids) == len(set(all_ids))
    assert set(ids) <= set(all_ids)


@pytest.mark.moto_deviates  # moto ignores MaxResults
def test_max_results_with_volume_ids(ec2, az, run_tag):
    a = make_volume(ec2, az, run_tag)
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(VolumeIds=[a["VolumeId"]], MaxResults=5)
    assert client_error_code(e) == "InvalidParameterCombination"


@pytest.mark.moto_deviates  # moto ignores MaxResults
def test_max_results_range(ec2):
    # DescribeVolumes: "between 5 and 500; if you specify a value larger than 500, only 500 items are
    # returned" (the AWS CLI sends 1000 by default); every action's range: test_cli_paging.py.
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(MaxResults=4)
    assert client_error_code(e) == "InvalidParameterValue"
    assert len(ec2.describe_volumes(MaxResults=1000)["Volumes"]) <= 500


@pytest.mark.moto_deviates  # moto ignores NextToken
def test_bad_next_token(ec2):
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(MaxResults=5, NextToken="not-a-token")
    # EC2's client error list has InvalidPaginationToken ("The specified pagination token is not valid").
    assert client_error_code(e) in ("InvalidPaginationToken", "InvalidParameterValue", "InvalidNextToken")


# ------------------------------------------------------------------ DeleteVolume

def test_delete_volume(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)
    r = ec2.delete_volume(VolumeId=v["VolumeId"])
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    ec2.get_waiter("volume_deleted").wait(VolumeIds=[v["VolumeId"]], WaiterConfig=wait_cfg())
    with pytest.raises(ClientError) as e:
        ec2.describe_volumes(VolumeIds=[v["VolumeId"]])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    with pytest.raises(ClientError) as e:
        ec2.delete_volume(VolumeId=v["VolumeId"])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    assert _ids(ec2, [run_filter(run_tag)]) == []


def test_delete_unknown_volume(ec2):
    with pytest.raises(ClientError) as e:
        ec2.delete_volume(VolumeId="vol-0fedcba9876543210")
    assert client_error_code(e) == "InvalidVolume.NotFound"


# ------------------------------------------------------------------ ModifyVolume

def test_modify_volume_grow(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag, Size=4, VolumeType="gp3")
    r = ec2.modify_volume(VolumeId=v["VolumeId"], Size=8)
    m = r["VolumeModification"]
    assert m["VolumeId"] == v["VolumeId"]
    assert m["TargetSize"] == 8 and m["OriginalSize"] == 4
    assert m["ModificationState"] in ("modifying", "optimizing", "completed")
    vol = poll_size(ec2, v["VolumeId"], 8)
    assert vol["Size"] == 8


def poll_size(ec2, vid, size):
    from conftest import poll
    return poll(lambda: describe_volume(ec2, vid), lambda v: v["Size"] == size)


@pytest.mark.moto_deviates  # moto lets a volume shrink
def test_modify_volume_shrink_fails(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag, Size=8)
    with pytest.raises(ClientError) as e:
        ec2.modify_volume(VolumeId=v["VolumeId"], Size=4)
    assert client_error_code(e) == "InvalidParameterValue"
    assert describe_volume(ec2, v["VolumeId"])["Size"] == 8


def test_modify_unknown_volume(ec2):
    with pytest.raises(ClientError) as e:
        ec2.modify_volume(VolumeId="vol-0fedcba9876543210", Size=10)
    assert client_error_code(e) == "InvalidVolume.NotFound"


def test_create_encrypted_with_alias_records_key_arn(ec2, az, run_tag, server):
    v = ec2.create_volume(AvailabilityZone=az, Size=1, Encrypted=True, KmsKeyId="alias/aws/ebs",
                          TagSpecifications=tagspec("volume", run_tag))
    vol = describe_volume(ec2, v["VolumeId"])
    assert vol["Encrypted"] is True
    if not IS_MOTO:  # moto stores the alias as given; EBS records the key ARN
        assert re.match(rf"^arn:aws:kms:{server.region}:\d{{12}}:key/[0-9a-f-]{{36}}$", vol["KmsKeyId"]), vol["KmsKeyId"]
        plain = ec2.create_volume(AvailabilityZone=az, Size=1, Encrypted=True,
                                  TagSpecifications=tagspec("volume", run_tag))
        assert describe_volume(ec2, plain["VolumeId"])["KmsKeyId"] == vol["KmsKeyId"]


@pytest.mark.blocksnap_only
def test_describe_volumes_modifications_and_status(ec2, az, run_tag):
    v = ec2.create_volume(Size=2, AvailabilityZone=az, VolumeType="gp3",
                          TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "e2e-run", "Value": run_tag}]}])
    vid = v["VolumeId"]
    m = ec2.modify_volume(VolumeId=vid, Size=10, Iops=4000)["VolumeModification"]
    assert m["ModificationState"] == "modifying" and m["TargetSize"] == 10 and m["OriginalSize"] == 2
    mods = ec2.describe_volumes_modifications(VolumeIds=[vid])["VolumesModifications"]
    # modifying -> optimizing -> completed over time (test_fidelity.py walks it with the test clock).
    assert len(mods) == 1 and mods[0]["ModificationState"] in ("modifying", "optimizing", "completed")
    assert mods[0]["TargetIops"] == 4000 and mods[0]["OriginalIops"] == 3000
    assert ec2.describe_volumes_modifications(
        VolumeIds=[vid], Filters=[{"Name": "modification-state", "Values": ["failed"]}])["VolumesModifications"] == []
    st = ec2.describe_volume_status(VolumeIds=[vid])["VolumeStatuses"]
    assert st[0]["VolumeId"] == vid and st[0]["VolumeStatus"]["Status"] == "ok"
    assert {"Name": "io-enabled", "Status": "passed"} in st[0]["VolumeStatus"]["Details"]
    assert ec2.describe_volume_status(
        VolumeIds=[vid], Filters=[{"Name": "volume-status.status", "Values": ["impaired"]}])["VolumeStatuses"] == []
    with pytest.raises(ClientError) as e:
        ec2.describe_volume_status(VolumeIds=["vol-00000000000000000"])
    assert client_error_code(e) == "InvalidVolume.NotFound"

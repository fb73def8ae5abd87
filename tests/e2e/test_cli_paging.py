"""MaxResults / Limit / page tokens as AWS accepts them, per action, and as the AWS CLI sends them.

The ranges are the EC2 API reference's (see crates/engine/src/describe.rs): where the reference says a
larger value returns the maximum, the call is answered (the AWS CLI sends `MaxResults=1000` by default
for describe-volumes and describe-snapshots); values below the minimum, above a hard maximum, or
MaxResults together with explicit ids where AWS forbids it are refused with AWS's error codes.
"""
from __future__ import annotations

import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from conftest import client_error_code, make_instance, make_volume, run_filter

pytestmark = pytest.mark.blocksnap_only

# action, ids parameter (boto3 name) or None, min, max, values above max answered (clamped),
# MaxResults refused together with ids, result key
EC2_LIMITS = [
    ("describe_volumes", "VolumeIds", 5, 500, True, True, "Volumes"),
    ("describe_volume_status", "VolumeIds", 5, 1000, True, True, "VolumeStatuses"),
    ("describe_volumes_modifications", "VolumeIds", 5, 500, True, False, "VolumesModifications"),
    ("describe_snapshots", "SnapshotIds", 5, 1000, True, True, "Snapshots"),
    ("describe_instances", "InstanceIds", 5, 1000, False, True, "Reservations"),
    ("describe_images", "ImageIds", 1, 1000, True, False, "Images"),
    ("describe_tags", None, 5, 1000, False, False, "Tags"),
]


@pytest.fixture(scope="module")
def account(server):
    """An account of its own, so item counts are this module's."""
    server.client().describe_regions()  # the server is up (its catalog migrated) before admin opens it
    return server.create_account()


@pytest.fixture(scope="module")
def raw_ec2(server, account):
    """boto3 without client-side validation: the server alone decides what is valid."""
    return server.client(account, parameter_validation=False)


@pytest.fixture(scope="module")
def ids(server, account, raw_ec2):
    az = f"{server.region}a"
    vols = [make_volume(raw_ec2, az, "paging")["VolumeId"] for _ in range(7)]
    raw_ec2.modify_volume(VolumeId=vols[0], Size=2)
    snap = raw_ec2.create_snapshot(VolumeId=vols[0])["SnapshotId"]
    images = raw_ec2.describe_images()["Images"]
    inst = make_instance(raw_ec2, images[0]["ImageId"], az, "paging")["InstanceId"]
    root = raw_ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]
    return {"root_volume": root["BlockDeviceMappings"][0]["Ebs"]["VolumeId"],"VolumeIds": [vols[0]], "SnapshotIds": [snap], "InstanceIds": [inst],
            "ImageIds": [images[0]["ImageId"]], "volumes": vols}


@pytest.mark.parametrize("action,ids_key,lo,hi,clamp,ids_excl,key", EC2_LIMITS, ids=[a[0] for a in EC2_LIMITS])
def test_ec2_max_results_ranges(raw_ec2, ids, action, ids_key, lo, hi, clamp, ids_excl, key):
    call = getattr(raw_ec2, action)
    for n in (lo, hi):
        assert isinstance(call(MaxResults=n)[key], list)
    if lo > 1:
        with pytest.raises(ClientError) as e:
            call(MaxResults=lo - 1)
        assert client_error_code(e) == "InvalidParameterValue"
        assert f"Value ( {lo - 1} ) for parameter maxResults is invalid" in str(e.value)
    if clamp:
        assert isinstance(call(MaxResults=hi + 1)[key], list)
        assert isinstance(call(MaxResults=100000)[key], list)
    else:
        with pytest.raises(ClientError) as e:
            call(MaxResults=hi + 1)
        assert client_error_code(e) == "InvalidParameterValue"
    if ids_key:
        if ids_excl:
            with pytest.raises(ClientError) as e:
                call(**{ids_key: ids[ids_key]}, MaxResults=lo)
            assert client_error_code(e) == "InvalidParameterCombination"
        else:
            assert call(**{ids_key: ids[ids_key]}, MaxResults=lo)[key]
    with pytest.raises(ClientError) as e:
        call(NextToken="not-a-token")
    assert client_error_code(e) == "InvalidPaginationToken"


def test_describe_volumes_pages_follow_tokens(raw_ec2, ids):
    seen, token, pages = [], None, 0
    while True:
        kw = {"NextToken": token} if token else {}
        r = raw_ec2.describe_volumes(MaxResults=5, Filters=[run_filter("paging")], **kw)
        assert len(r["Volumes"]) <= 5
        seen += [v["VolumeId"] for v in r["Volumes"]]
        pages += 1
        token = r.get("NextToken")
        if not token:
            break
    assert pages == 2 and sorted(seen) == sorted(ids["volumes"])


def test_describe_images_pages(raw_ec2, ids):
    first = raw_ec2.describe_images(MaxResults=1)
    assert len(first["Images"]) == 1 and first["NextToken"]
    rest = raw_ec2.describe_images(MaxResults=1000, NextToken=first["NextToken"])
    everything = raw_ec2.describe_images()["Images"]
    assert [i["ImageId"] for i in first["Images"] + rest["Images"]] == sorted(i["ImageId"] for i in everything)
    assert "NextToken" not in rest


def test_cli_describe_volumes_defaults_and_max_items(server, account, ids):
    """The issue's first command: the CLI sends MaxResults=1000 by default; --max-items 2 pages on top."""
    everything = sorted(ids["volumes"] + [ids["root_volume"]])
    vols = server.cli("describe-volumes", creds=account)["Volumes"]
    assert sorted(v["VolumeId"] for v in vols) == everything
    two = server.cli("describe-volumes", "--max-items", "2", creds=account)
    assert len(two["Volumes"]) == 2 and two["NextToken"]
    rest = server.cli("describe-volumes", "--starting-token", two["NextToken"], creds=account)
    assert sorted(v["VolumeId"] for v in two["Volumes"] + rest["Volumes"]) == everything
    snaps = server.cli("describe-snapshots", "--owner-ids", "self", "--max-items", "1", creds=account)
    assert [s["SnapshotId"] for s in snaps["Snapshots"]] == ids["SnapshotIds"]
    # Explicit ids: the CLI sends no MaxResults, and the call works.
    one = server.cli("describe-volumes", "--volume-ids", ids["volumes"][1], creds=account)
    assert [v["VolumeId"] for v in one["Volumes"]] == [ids["volumes"][1]]


def test_kms_limit_and_marker(server, account):
    kms = server.session(account).client("kms", endpoint_url=server.endpoint,
                                         config=Config(parameter_validation=False,
                                                       retries={"max_attempts": 1, "mode": "standard"}))
    made = [kms.create_key(Description=f"paging {n}")["KeyMetadata"]["KeyId"] for n in range(3)]
    for n in (0, 1001):
        with pytest.raises(ClientError) as e:
            kms.list_keys(Limit=n)
        assert client_error_code(e) == "ValidationException"
    first = kms.list_keys(Limit=1)
    assert len(first["Keys"]) == 1 and first["Truncated"] and first["NextMarker"]
    rest = kms.list_keys(Limit=1000, Marker=first["NextMarker"])
    assert not rest["Truncated"]
    got = [k["KeyId"] for k in first["Keys"] + rest["Keys"]]
    assert set(made) <= set(got) and len(got) == len(set(got))
    with pytest.raises(ClientError) as e:
        kms.list_aliases(Limit=0)
    assert client_error_code(e) == "ValidationException"
    assert kms.list_aliases(Limit=1000)["Aliases"]
    with pytest.raises(ClientError) as e:
        kms.list_keys(Marker="garbage!")
    assert client_error_code(e) == "InvalidMarkerException"


def test_lightsail_page_tokens(server, account):
    ls = server.session(account, "us-west-2").client(
        "lightsail", endpoint_url=server.endpoint, config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    for op in ("get_disks", "get_disk_snapshots", "get_instances", "get_instance_snapshots", "get_operations"):
        assert getattr(ls, op)().get("nextPageToken") is None, op
        with pytest.raises(ClientError) as e:
            getattr(ls, op)(pageToken="garbage")
        assert client_error_code(e) == "InvalidInputException", op

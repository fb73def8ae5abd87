"""CreateTags / DeleteTags / DescribeTags on volumes and instances, with AWS's limits and errors."""
import pytest
from botocore.exceptions import ClientError

from conftest import IS_MOTO, client_error_code, describe_volume, make_instance, make_volume, tagspec


def tags_of(ec2, vid):
    return {t["Key"]: t["Value"] for t in describe_volume(ec2, vid).get("Tags", [])}


def test_create_and_describe_tags(ec2, az, image_id, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    i = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    r = ec2.create_tags(Resources=[v, i], Tags=[{"Key": "team", "Value": "storage"}, {"Key": "empty", "Value": ""}])
    assert r["ResponseMetadata"]["HTTPStatusCode"] == 200
    assert tags_of(ec2, v) == {"e2e-run": run_tag, "team": "storage", "empty": ""}

    got = ec2.describe_tags(Filters=[{"Name": "resource-id", "Values": [v, i]}])["Tags"]
    got = sorted((t["ResourceId"], t["ResourceType"], t["Key"], t["Value"]) for t in got)
    assert got == sorted([
        (v, "volume", "e2e-run", run_tag), (v, "volume", "team", "storage"), (v, "volume", "empty", ""),
        (i, "instance", "e2e-run", run_tag), (i, "instance", "team", "storage"), (i, "instance", "empty", ""),
    ])
    # Filters: resource-type, key, value (with wildcards), AND across filters.
    only = lambda *f: sorted((t["ResourceId"], t["Key"]) for t in ec2.describe_tags(
        Filters=[{"Name": "resource-id", "Values": [v, i]}, *f])["Tags"])
    assert only({"Name": "resource-type", "Values": ["volume"]}) == sorted([(v, "e2e-run"), (v, "team"), (v, "empty")])
    assert only({"Name": "key", "Values": ["team"]}) == sorted([(v, "team"), (i, "team")])
    assert only({"Name": "value", "Values": ["stor*"]}) == sorted([(v, "team"), (i, "team")])
    assert only({"Name": "key", "Values": ["team"]}, {"Name": "resource-type", "Values": ["instance"]}) == [(i, "team")]


def test_create_tags_overwrites_value(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.create_tags(Resources=[v], Tags=[{"Key": "k", "Value": "1"}])
    ec2.create_tags(Resources=[v], Tags=[{"Key": "k", "Value": "2"}])
    assert tags_of(ec2, v)["k"] == "2"


def test_delete_tags_by_key_by_value_all(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.create_tags(Resources=[v], Tags=[{"Key": k, "Value": val} for k, val in
                                         [("a", "1"), ("b", "2"), ("c", "3"), ("d", "")]])
    # By key: whatever the value.
    ec2.delete_tags(Resources=[v], Tags=[{"Key": "a"}])
    assert set(tags_of(ec2, v)) == {"e2e-run", "b", "c", "d"}
    # Key + value: only when the value matches.
    ec2.delete_tags(Resources=[v], Tags=[{"Key": "b", "Value": "nope"}])
    assert "b" in tags_of(ec2, v)
    ec2.delete_tags(Resources=[v], Tags=[{"Key": "b", "Value": "2"}])
    assert "b" not in tags_of(ec2, v)
    # Value "" deletes only a tag whose value is empty.
    ec2.delete_tags(Resources=[v], Tags=[{"Key": "c", "Value": ""}])
    assert "c" in tags_of(ec2, v)
    ec2.delete_tags(Resources=[v], Tags=[{"Key": "d", "Value": ""}])
    assert "d" not in tags_of(ec2, v)
    # Deleting a tag that is not there is not an error.
    ec2.delete_tags(Resources=[v], Tags=[{"Key": "never-there"}])


@pytest.mark.moto_deviates  # moto deletes nothing when Tags is omitted
def test_delete_tags_all(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.create_tags(Resources=[v], Tags=[{"Key": "a", "Value": "1"}, {"Key": "b", "Value": ""}])
    # "If you omit this parameter, we delete all user-defined tags for the specified resources."
    ec2.delete_tags(Resources=[v])
    assert tags_of(ec2, v) == {}


def test_tag_limits_ok(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.create_tags(Resources=[v], Tags=[{"Key": "k" * 127, "Value": "v" * 256}])
    assert tags_of(ec2, v)["k" * 127] == "v" * 256
    # 50 tags in all (e2e-run + the one above + 48 more).
    ec2.create_tags(Resources=[v], Tags=[{"Key": f"n{j}", "Value": str(j)} for j in range(48)])
    assert len(tags_of(ec2, v)) == 50


def test_tag_limit_exceeded(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.create_tags(Resources=[v], Tags=[{"Key": f"n{j}", "Value": str(j)} for j in range(49)])
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=[v], Tags=[{"Key": "one-too-many", "Value": "x"}])
    assert client_error_code(e) == "TagLimitExceeded"
    assert len(tags_of(ec2, v)) == 50


def test_tag_limit_exceeded_in_one_call(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=[v], Tags=[{"Key": f"n{j}", "Value": str(j)} for j in range(51)])
    assert client_error_code(e) == "TagLimitExceeded"
    assert tags_of(ec2, v) == {"e2e-run": run_tag}


@pytest.mark.moto_deviates  # moto accepts over-long keys/values
@pytest.mark.parametrize("tag", [{"Key": "k" * 128, "Value": "v"}, {"Key": "k", "Value": "v" * 257}])
def test_tag_too_long(ec2, az, run_tag, tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=[v], Tags=[tag])
    assert client_error_code(e) == "InvalidParameterValue"
    assert tags_of(ec2, v) == {"e2e-run": run_tag}


@pytest.mark.moto_deviates  # moto accepts aws: keys
@pytest.mark.parametrize("key", ["aws:foo", "aws:"])
def test_tag_aws_prefix_reserved(ec2, az, run_tag, key):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=[v], Tags=[{"Key": key, "Value": "x"}])
    assert client_error_code(e) == "InvalidParameterValue"
    assert tags_of(ec2, v) == {"e2e-run": run_tag}


@pytest.mark.moto_deviates  # moto accepts aws: keys in TagSpecifications
def test_tag_aws_prefix_in_tag_specifications(ec2, az):
    with pytest.raises(ClientError) as e:
        ec2.create_volume(AvailabilityZone=az, Size=1,
                          TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "aws:x", "Value": "y"}]}])
    assert client_error_code(e) == "InvalidParameterValue"


def test_tag_unknown_resource(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=[v, "vol-0123456789abcdef0"], Tags=[{"Key": "x", "Value": "y"}])
    assert client_error_code(e) in ("InvalidVolume.NotFound", "InvalidID")
    # All or nothing.
    assert "x" not in tags_of(ec2, v)


def test_tag_malformed_resource_id(ec2):
    with pytest.raises(ClientError) as e:
        ec2.create_tags(Resources=["nonsense"], Tags=[{"Key": "x", "Value": "y"}])
    assert client_error_code(e) in ("InvalidID", "InvalidParameterValue")


@pytest.mark.moto_deviates  # moto ignores MaxResults on DescribeTags
def test_describe_tags_pagination(ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.create_tags(Resources=[v], Tags=[{"Key": f"p{j:02d}", "Value": "x"} for j in range(11)])
    pages = list(ec2.get_paginator("describe_tags").paginate(
        Filters=[{"Name": "resource-id", "Values": [v]}], PaginationConfig={"PageSize": 5}))
    keys = [t["Key"] for p in pages for t in p["Tags"]]
    assert sorted(keys) == sorted(["e2e-run"] + [f"p{j:02d}" for j in range(11)])
    assert len(pages) == 3

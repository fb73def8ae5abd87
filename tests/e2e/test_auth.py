"""SigV4 verification: wrong secret, unknown key, expired and future requests, unsigned, tampered, presigned
query strings, region from the credential scope. moto does not verify signatures: blocksnap only."""
import datetime
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import Creds, client_error_code, make_volume, run_filter

pytestmark = pytest.mark.blocksnap_only


def _tagged_create(server, run_tag, **kw):
    return server.raw({"Action": "CreateVolume", "AvailabilityZone": f"{server.region}a", "Size": "1",
                       "TagSpecification.1.ResourceType": "volume",
                       "TagSpecification.1.Tag.1.Key": "e2e-run", "TagSpecification.1.Tag.1.Value": run_tag}, **kw)


def _none_created(ec2, run_tag):
    return ec2.describe_volumes(Filters=[run_filter(run_tag)])["Volumes"] == []


def test_valid_signature_creates(server, ec2, run_tag):
    r = _tagged_create(server, run_tag)
    assert r.status == 200, r.text
    assert len(ec2.describe_volumes(Filters=[run_filter(run_tag)])["Volumes"]) == 1


def test_wrong_secret(server, ec2, run_tag):
    bad = Creds(server.creds.access_key, server.creds.secret_key + "x")
    r = _tagged_create(server, run_tag, creds=bad)
    assert r.code == "AuthFailure", r.text
    assert r.status in (401, 403)
    assert _none_created(ec2, run_tag)
    with pytest.raises(ClientError) as e:
        server.client(bad).describe_volumes()
    assert client_error_code(e) == "AuthFailure"


def test_unknown_access_key(server, ec2, run_tag):
    r = _tagged_create(server, run_tag, creds=Creds("AKIANOSUCHKEY0000000", "whatever"))
    assert r.code == "AuthFailure", r.text
    assert r.status in (401, 403)
    assert _none_created(ec2, run_tag)


@pytest.mark.parametrize("minutes", [-20, 20])
def test_request_outside_15_minutes(server, ec2, run_tag, minutes):
    # CommonErrors: RequestExpired — "more than 15 minutes after the date stamp on the request ...
    # or the date stamp on the request is more than 15 minutes in the future."
    when = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=minutes)
    r = _tagged_create(server, run_tag, when=when)
    assert r.code == "RequestExpired", r.text
    assert 400 <= r.status < 500
    assert _none_created(ec2, run_tag)


def test_request_within_skew_ok(server):
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=10)
    r = server.raw({"Action": "DescribeVolumes"}, when=when)
    assert r.status == 200, r.text


def test_unsigned(server, ec2, run_tag):
    r = _tagged_create(server, run_tag, sign=False)
    assert r.code in ("MissingAuthenticationToken", "AuthFailure"), r.text
    assert r.status in (400, 401, 403)
    assert _none_created(ec2, run_tag)


def test_tampered_body(server, ec2, run_tag):
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import requests
    from urllib.parse import urlencode
    body = urlencode({"Action": "DescribeVolumes", "Version": "2016-11-15"})
    req = AWSRequest(method="POST", url=server.endpoint, data=body,
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    botocore.auth.SigV4Auth(Credentials(server.creds.access_key, server.creds.secret_key), "ec2",
                            server.region).add_auth(req)
    p = req.prepare()
    evil = urlencode({"Action": "CreateVolume", "Version": "2016-11-15", "AvailabilityZone": f"{server.region}a",
                      "Size": "1", "TagSpecification.1.ResourceType": "volume",
                      "TagSpecification.1.Tag.1.Key": "e2e-run", "TagSpecification.1.Tag.1.Value": run_tag})
    headers = {k: v for k, v in p.headers.items() if k.lower() != "content-length"}
    r = requests.post(p.url, headers=headers, data=evil, timeout=30)
    assert "<Code>AuthFailure</Code>" in r.text, r.text
    assert _none_created(ec2, run_tag)


def test_presigned_query(server, ec2, az, run_tag):
    v = make_volume(ec2, az, run_tag)["VolumeId"]
    r = server.presigned_get({"Action": "DescribeVolumes", "VolumeId.1": v})
    assert r.status == 200, r.text
    assert f"<volumeId>{v}</volumeId>" in r.text


def test_presigned_query_expired(server):
    when = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=20)
    r = server.presigned_get({"Action": "DescribeVolumes"}, expires=60, when=when)
    assert r.code in ("RequestExpired", "AuthFailure"), r.text
    assert 400 <= r.status < 500


def test_presigned_query_wrong_secret(server):
    r = server.presigned_get({"Action": "DescribeVolumes"}, creds=Creds(server.creds.access_key, "nope"))
    assert r.code == "AuthFailure", r.text


def test_region_from_scope(server, run_tag):
    # A volume made in another region's scope lives in that region: its zones are <region>a|b|c.
    other = "us-west-2"
    c = server.client(region=other)
    zones = [z["ZoneName"] for z in c.describe_availability_zones()["AvailabilityZones"]]
    assert f"{other}a" in zones
    v = c.create_volume(AvailabilityZone=f"{other}a", Size=1,
                        TagSpecifications=[{"ResourceType": "volume", "Tags": [{"Key": "e2e-run", "Value": run_tag}]}])
    assert v["AvailabilityZone"] == f"{other}a"
    # Not visible from us-east-1.
    assert server.client().describe_volumes(Filters=[run_filter(run_tag)])["Volumes"] == []
    with pytest.raises(ClientError) as e:
        server.client().describe_volumes(VolumeIds=[v["VolumeId"]])
    assert client_error_code(e) == "InvalidVolume.NotFound"
    # A zone of another region is refused.
    with pytest.raises(ClientError) as e:
        c.create_volume(AvailabilityZone=f"{server.region}a", Size=1)
    assert client_error_code(e) in ("InvalidZone.NotFound", "InvalidParameterValue")


def test_unconfigured_region(server):
    r = server.raw({"Action": "DescribeVolumes"}, region="xx-nowhere-" + uuid.uuid4().hex[:4])
    assert 400 <= r.status < 500, r.text
    assert r.code, r.text

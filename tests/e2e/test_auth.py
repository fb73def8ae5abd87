"""SigV4 verification: wrong secret, unknown key, expired and future requests, unsigned, tampered, presigned
query strings, region from the credential scope. moto does not verify signatures: blocksnap only."""
import datetime
import uuid

import pytest
from botocore.exceptions import ClientError

from conftest import Creds, client_error_code, make_volume, poll, run_filter

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


@pytest.mark.parametrize("service", ["lightsail", "kms"])
def test_json_services_refuse_in_their_own_words(server, service):
    """Lightsail and KMS answer a refused signature as JSON 1.1 services do, never with EC2's
    AuthFailure: a wrong secret is InvalidSignatureException, an unknown key
    UnrecognizedClientException (both 400, a `__type` document)."""
    call = {"lightsail": lambda c: c.get_disks(), "kms": lambda c: c.list_keys()}[service]
    cases = [(Creds(server.creds.access_key, server.creds.secret_key + "x"), "InvalidSignatureException"),
             (Creds("AKIANOSUCHKEY0000000", "whatever"), "UnrecognizedClientException")]
    for creds, code in cases:
        c = server.session(creds).client(service, endpoint_url=server.endpoint)
        with pytest.raises(ClientError) as e:
            call(c)
        assert client_error_code(e) == code, e.value.response
        assert e.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400
        assert "AuthFailure" not in str(e.value.response)
    # The same clients with the right secret are served.
    call(server.session().client(service, endpoint_url=server.endpoint))


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


# --- the signature covers what the request does (issue 12) ----------------------------------------
# A captured request must not be replayable with another body, Action or X-Amz-Target; a presigned URL
# authenticates its query string only, so it must not carry a body.

def _signed_post(server, body: str, *, service: str = "ec2", headers: dict | None = None,
                 signer_cls=None) -> "object":
    """A botocore-signed POST of `body` to the server, prepared but not sent."""
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    h = {"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"}
    h.update(headers or {})
    req = AWSRequest(method="POST", url=server.endpoint, data=body, headers=h)
    signer_cls = signer_cls or botocore.auth.SigV4Auth
    signer_cls(Credentials(server.creds.access_key, server.creds.secret_key), service, server.region).add_auth(req)
    return req.prepare()


def _send(prepared, *, body=None, url=None, method=None, headers=None):
    import requests
    h = {k: v for k, v in (headers or prepared.headers).items() if k.lower() != "content-length"}
    return requests.request(method or prepared.method, url or prepared.url, headers=h,
                            data=prepared.body if body is None else body, timeout=30)


def _create_body(server, run_tag):
    from urllib.parse import urlencode
    return urlencode({"Action": "CreateVolume", "Version": "2016-11-15", "AvailabilityZone": f"{server.region}a",
                      "Size": "1", "TagSpecification.1.ResourceType": "volume",
                      "TagSpecification.1.Tag.1.Key": "e2e-run", "TagSpecification.1.Tag.1.Value": run_tag})


def test_replay_with_changed_action_refused(server, ec2, run_tag):
    from urllib.parse import urlencode
    p = _signed_post(server, urlencode({"Action": "DescribeVolumes", "Version": "2016-11-15"}))
    assert _send(p).status_code == 200  # the captured request itself is fine
    # Same signature, same length, another Action.
    evil = urlencode({"Action": "DescribeRegions", "Version": "2016-11-15"})
    r = _send(p, body=evil)
    assert "<Code>AuthFailure</Code>" in r.text, r.text
    # The Action moved into the (unsigned-for-body) query string, body kept: refused, nothing merged.
    r = _send(p, url=server.endpoint + "?" + _create_body(server, run_tag))
    assert r.status_code == 401 or r.status_code == 400, r.text
    assert _none_created(ec2, run_tag)


class _UnsignedPayloadAuth(__import__("botocore.auth").auth.SigV4Auth):
    """botocore's signer, declaring the body unsigned (as S3 clients may)."""

    def add_auth(self, request):
        request.headers["X-Amz-Content-SHA256"] = "UNSIGNED-PAYLOAD"
        super().add_auth(request)

    def payload(self, request):
        return "UNSIGNED-PAYLOAD"


def test_unsigned_payload_refused_for_query(server, ec2, run_tag):
    # Were it accepted, anyone holding this captured DescribeVolumes could send any body with it.
    from urllib.parse import urlencode
    p = _signed_post(server, urlencode({"Action": "DescribeVolumes", "Version": "2016-11-15"}),
                     signer_cls=_UnsignedPayloadAuth)
    assert p.headers["X-Amz-Content-SHA256"] == "UNSIGNED-PAYLOAD"
    r = _send(p)
    assert r.status_code in (400, 401) and "<Code>IncompleteSignature</Code>" in r.text, r.text
    assert "UNSIGNED-PAYLOAD" in r.text
    r = _send(p, body=_create_body(server, run_tag))
    assert r.status_code in (400, 401) and "<Code>IncompleteSignature</Code>" in r.text, r.text
    assert _none_created(ec2, run_tag)


def test_unsigned_payload_refused_for_json(server):
    body = "{}"
    p = _signed_post(server, body, service="lightsail", signer_cls=_UnsignedPayloadAuth,
                     headers={"Content-Type": "application/x-amz-json-1.1",
                              "X-Amz-Target": "Lightsail_20161128.GetDisks"})
    r = _send(p)
    assert r.status_code == 400, r.text
    assert r.json()["__type"] == "IncompleteSignatureException", r.text
    # The same request with its body hashed goes through.
    p = _signed_post(server, body, service="lightsail",
                     headers={"Content-Type": "application/x-amz-json-1.1",
                              "X-Amz-Target": "Lightsail_20161128.GetDisks"})
    r = _send(p)
    assert r.status_code == 200, r.text
    assert "disks" in r.json()


def test_json_replay_with_changed_target_refused(server):
    hdrs = {"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "Lightsail_20161128.GetDisks"}
    p = _signed_post(server, "{}", service="lightsail", headers=hdrs)
    assert _send(p).status_code == 200
    h = dict(p.headers)
    h["X-Amz-Target"] = "Lightsail_20161128.GetInstances"
    r = _send(p, headers=h)
    assert r.status_code in (400, 401, 403), r.text
    assert r.json()["__type"] == "InvalidSignatureException", r.text
    # Changed body, same target: refused too.
    r = _send(p, body='{"pageToken":"x"}')
    assert r.status_code in (400, 401, 403), r.text


def test_json_signed_for_another_service_refused(server):
    # A KMS request signed in the lightsail scope: the scope names the service.
    p = _signed_post(server, "{}", service="lightsail",
                     headers={"Content-Type": "application/x-amz-json-1.1", "X-Amz-Target": "TrentService.ListKeys"})
    r = _send(p)
    assert r.status_code == 400, r.text
    assert r.json()["__type"] == "InvalidSignatureException", r.text


def _presigned_url(server, params: dict) -> str:
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    from urllib.parse import urlencode
    params = dict(params)
    params.setdefault("Version", "2016-11-15")
    req = AWSRequest(method="GET", url=server.endpoint + "?" + urlencode(params))
    botocore.auth.SigV4QueryAuth(Credentials(server.creds.access_key, server.creds.secret_key), "ec2",
                                 server.region, expires=300).add_auth(req)
    return req.prepare().url


def test_presigned_url_reused_for_another_action_refused(server, ec2, run_tag):
    import requests
    url = _presigned_url(server, {"Action": "DescribeVolumes"})
    assert requests.get(url, timeout=30).status_code == 200
    # A POST with a body naming another action: the body is not signed by a presigned URL.
    r = requests.post(url, data=_create_body(server, run_tag),
                      headers={"Content-Type": "application/x-www-form-urlencoded"}, timeout=30)
    assert r.status_code in (400, 401) and "<Code>IncompleteSignature</Code>" in r.text, r.text
    assert "presigned" in r.text
    # Another Action in the query string: the query is signed.
    r = requests.get(url.replace("Action=DescribeVolumes", "Action=DescribeRegions"), timeout=30)
    assert "<Code>AuthFailure</Code>" in r.text, r.text
    # Extra parameters appended to the query: signed too.
    r = requests.get(url + "&VolumeId.1=vol-0123456789abcdef0", timeout=30)
    assert "<Code>AuthFailure</Code>" in r.text, r.text
    assert _none_created(ec2, run_tag)


def test_parameters_in_query_and_body_refused(server, ec2, run_tag):
    # Header-signed, body hashed, but parameters in both places: which one wins must not be a question.
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import requests
    req = AWSRequest(method="POST", url=server.endpoint + "?Action=DescribeVolumes&Version=2016-11-15",
                     data=_create_body(server, run_tag),
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    botocore.auth.SigV4Auth(Credentials(server.creds.access_key, server.creds.secret_key), "ec2",
                            server.region).add_auth(req)
    p = req.prepare()
    r = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=30)
    assert r.status_code == 400 and "<Code>InvalidQueryParameter</Code>" in r.text, r.text
    assert _none_created(ec2, run_tag)
    # Each place alone works.
    assert server.raw({"Action": "DescribeVolumes"}, method="GET").status == 200
    assert server.raw({"Action": "DescribeVolumes"}).status == 200


def test_duplicate_parameter_refused(server):
    r = server.raw({"Action": "DescribeVolumes", "Version": "2016-11-15"}, version=False)
    assert r.status == 200, r.text
    import botocore.auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    import requests
    req = AWSRequest(method="POST", url=server.endpoint,
                     data="Action=DescribeVolumes&Version=2016-11-15&Action=DescribeRegions",
                     headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
    botocore.auth.SigV4Auth(Credentials(server.creds.access_key, server.creds.secret_key), "ec2",
                            server.region).add_auth(req)
    p = req.prepare()
    r = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=30)
    assert r.status_code == 400 and "<Code>InvalidQueryParameter</Code>" in r.text, r.text


def test_cli_and_boto3_still_work_for_all_protocols(server):
    # botocore signs the body hash of EC2 Query and JSON 1.1 requests; the AWS CLI is botocore.
    assert "Regions" in server.cli("describe-regions")
    assert "Regions" in server.client().describe_regions()
    kms = server.session().client("kms", endpoint_url=server.endpoint)
    assert "Keys" in kms.list_keys()
    ls = server.session().client("lightsail", endpoint_url=server.endpoint)
    assert "disks" in ls.get_disks()


# --- access keys: `blocksnap admin list-keys|create-key|rotate-key|delete-key`, root rotation ------

def _admin(server, *args, check=True):
    import subprocess
    from conftest import blocksnap_bin
    out = subprocess.run([str(blocksnap_bin()), "admin", *args, "--data-dir", str(server.data_dir)],
                         capture_output=True, text=True, timeout=60, cwd=server.workdir)
    if check:
        assert out.returncode == 0, f"admin {args} failed: {out.stderr}"
    return out


def _printed_creds(stdout: str) -> Creds:
    import re
    acct = re.search(r"^# account (\d{12})$", stdout, re.M)
    akid = re.search(r"^export AWS_ACCESS_KEY_ID=(\S+)$", stdout, re.M)
    secret = re.search(r"^export AWS_SECRET_ACCESS_KEY=(\S+)$", stdout, re.M)
    assert acct and akid and secret, stdout
    return Creds(akid.group(1), secret.group(1), acct.group(1))


def _works(server, creds) -> bool:
    try:
        server.client(creds).describe_regions()
        return True
    except ClientError as e:
        assert e.response["Error"]["Code"] == "AuthFailure", e
        return False


def test_admin_keys_list_rotate_delete_while_serving(fresh_server):
    srv = fresh_server
    assert _works(srv, srv.creds)  # serve answers once its catalog is migrated
    a = srv.create_account()
    assert _works(srv, a)
    listed = _admin(srv, "list-keys").stdout
    assert a.access_key in listed and a.account_id in listed
    assert srv.creds.access_key in listed and " root" in listed
    assert a.secret_key not in listed and srv.creds.secret_key not in listed, "list-keys shows no secrets"
    assert _admin(srv, "list-keys", "--account", a.account_id).stdout.split()[0] == a.access_key

    # A second key (two-step rotation), used by the real AWS CLI.
    b = _printed_creds(_admin(srv, "create-key", "--account", a.account_id).stdout)
    assert b.account_id == a.account_id and b.access_key != a.access_key
    assert "Regions" in srv.cli("describe-regions", creds=b)
    assert _works(srv, a)

    # Rotation replaces the key at once, in the running server.
    c = _printed_creds(_admin(srv, "rotate-key", a.access_key).stdout)
    assert c.account_id == a.account_id
    assert not _works(srv, a), "the rotated-out key must stop working"
    assert _works(srv, c)
    out = srv.cli("describe-regions", creds=a, check=False)
    assert out.returncode != 0 and "AuthFailure" in out.stderr, out.stderr
    # Resources are the account's, not the key's: the new key sees what the old one made.
    vid = srv.client(b).create_volume(AvailabilityZone=f"{srv.region}a", Size=1)["VolumeId"]
    assert srv.client(c).describe_volumes(VolumeIds=[vid])["Volumes"][0]["VolumeId"] == vid

    # Deletion, also while serving; the listing follows.
    assert "deleted" in _admin(srv, "delete-key", b.access_key).stdout
    assert not _works(srv, b)
    listed = _admin(srv, "list-keys").stdout
    assert b.access_key not in listed and a.access_key not in listed and c.access_key in listed

    # Unknown keys and accounts: a clear error, nothing changed.
    r = _admin(srv, "delete-key", "AKIANOSUCHKEY0000000", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    r = _admin(srv, "rotate-key", b.access_key, check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    r = _admin(srv, "create-key", "--account", "000000000000", check=False)
    assert r.returncode != 0 and "does not exist" in r.stderr, r.stderr
    assert _works(srv, c)


def test_changing_root_keys_revokes_the_old_one(fresh_server):
    import secrets
    srv = fresh_server
    old = srv.creds
    assert _works(srv, old)
    vid = srv.client().create_volume(AvailabilityZone=f"{srv.region}a", Size=1)["VolumeId"]
    srv.stop()
    new = Creds("AKIAE2EROTATED" + secrets.token_hex(3).upper(), "rotated-" + secrets.token_hex(16))
    srv.creds = new
    srv.start()
    assert _works(srv, new)
    assert not _works(srv, old), "the previous root key must be revoked"
    # Same root account: its volume is still there.
    assert srv.client(new).describe_volumes(VolumeIds=[vid])["Volumes"][0]["VolumeId"] == vid
    listed = _admin(srv, "list-keys").stdout
    assert new.access_key in listed and old.access_key not in listed
    # A root key id that belongs to another account is refused at start.
    a = srv.create_account()
    srv.stop()
    srv.creds = Creds(a.access_key, "whatever")
    try:
        srv.start()  # may return once the ports are bound, before the refusal
    except RuntimeError:
        pass
    assert srv.proc.wait(timeout=60) != 0
    assert "already a key of account" in srv.log()
    srv.proc = None
    srv.creds = new
    srv.start()
    assert _works(srv, new) and _works(srv, a)


def test_generated_root_key_revoked_when_env_key_set(tmp_path):
    """No BLOCKSNAP_ROOT_* at first start: a key is generated and saved; setting them later revokes it."""
    from conftest import Server
    srv = Server(kind="blocksnap", workdir=tmp_path)
    env_key = srv.creds
    try:
        srv.creds = Creds("", "")  # empty BLOCKSNAP_ROOT_*: a key is generated
        srv.start()
        cred_file = srv.data_dir / "root-credentials"
        poll(cred_file.exists, bool)  # written once the catalog is open, after the ports are bound
        generated = _printed_creds("# account 000000000000\n" + cred_file.read_text())
        assert _works(srv, generated)
        srv.stop()
        srv.creds = env_key
        srv.start()
        assert _works(srv, env_key)
        assert not _works(srv, generated), "the generated root key must be revoked"
        assert not cred_file.exists(), "the revoked key's file must be gone"
    finally:
        srv.stop()

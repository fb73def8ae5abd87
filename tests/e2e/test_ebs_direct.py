"""The EBS direct APIs (service `ebs`) through boto3's `ebs` client, the AWS CLI `aws ebs …` and raw
SigV4-signed HTTP: snapshots written block by block, read back, diffed, and used everywhere else
(DescribeSnapshots, restore over NBD, sharing, incremental EC2 snapshots)."""
from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import time

import botocore.auth
import pytest
import requests
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

import nbd
from conftest import (_make_server, attached_volume, make_instance, poll, wait_attached,
                      wait_volume_state)

pytestmark = pytest.mark.blocksnap_only

BLOCK = 524288


def ebs_client(server, creds=None):
    return server.session(creds).client("ebs", endpoint_url=server.endpoint,
                                        config=Config(retries={"max_attempts": 1, "mode": "standard"}))


def b64sha(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def linear(blocks: dict[int, bytes]) -> str:
    return base64.b64encode(hashlib.sha256(b"".join(hashlib.sha256(blocks[i]).digest()
                                                    for i in sorted(blocks))).digest()).decode()


def put(ebs, sid: str, index: int, data: bytes, **kw):
    return ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockData=data, DataLength=len(data),
                                  Checksum=b64sha(data), ChecksumAlgorithm="SHA256", **kw)


def block(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)


def error_of(excinfo) -> tuple[str, str | None, int]:
    r = excinfo.value.response
    return r["Error"]["Code"], r.get("Reason"), r["ResponseMetadata"]["HTTPStatusCode"]


def write_snapshot(ebs, blocks: dict[int, bytes], size: int = 1, **start) -> str:
    sid = ebs.start_snapshot(VolumeSize=size, **start)["SnapshotId"]
    for i, d in blocks.items():
        put(ebs, sid, i, d)
    r = ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks), Checksum=linear(blocks),
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert r["Status"] in ("completed", "pending")
    return sid


def wait_completed(ec2, sid: str) -> dict:
    return poll(lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0],
                lambda s: s["State"] != "pending", timeout=60)


def all_blocks(ebs, sid: str, **kw) -> dict[int, str]:
    out, token = {}, None
    while True:
        args = dict(SnapshotId=sid, **kw)
        if token:
            args["NextToken"] = token
        r = ebs.list_snapshot_blocks(**args)
        out.update({b["BlockIndex"]: b["BlockToken"] for b in r["Blocks"]})
        token = r.get("NextToken")
        if not token:
            return out


def read_block(ebs, sid: str, index: int, token: str) -> bytes:
    r = ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=index, BlockToken=token)
    data = r["BlockData"].read()
    assert r["DataLength"] == len(data) == BLOCK
    assert r["ChecksumAlgorithm"] == "SHA256" and r["Checksum"] == b64sha(data)
    return data


def changed(ebs, second: str, first: str | None = None, **kw) -> dict[int, tuple[bool, bool]]:
    out, token = {}, None
    while True:
        args = dict(SecondSnapshotId=second, **kw)
        if first:
            args["FirstSnapshotId"] = first
        if token:
            args["NextToken"] = token
        r = ebs.list_changed_blocks(**args)
        assert r["BlockSize"] == BLOCK
        for c in r["ChangedBlocks"]:
            out[c["BlockIndex"]] = ("FirstBlockToken" in c, "SecondBlockToken" in c)
        token = r.get("NextToken")
        if not token:
            return out


def test_write_with_parent_complete_restore_and_compare_over_nbd(server, ec2, az, run_tag, tmp_path):
    ebs = ebs_client(server)
    base = {0: block(1), 3: block(2), 5: block(3)}
    r = ebs.start_snapshot(VolumeSize=1, Description="direct base", Tags=[{"Key": "run", "Value": run_tag}],
                           Timeout=60)
    assert r["Status"] == "pending" and r["BlockSize"] == BLOCK and r["VolumeSize"] == 1
    assert r["OwnerId"] and r["SseType"] == "none" and r["Tags"] == [{"Key": "run", "Value": run_tag}]
    parent = r["SnapshotId"]
    pending = ec2.describe_snapshots(SnapshotIds=[parent])["Snapshots"][0]
    assert pending["State"] == "pending" and pending["VolumeId"] == "vol-ffffffff"
    for i, d in base.items():
        out = put(ebs, parent, i, d, Progress=50)
        assert out["Checksum"] == b64sha(d) and out["ChecksumAlgorithm"] == "SHA256"
    done = ebs.complete_snapshot(SnapshotId=parent, ChangedBlocksCount=3, Checksum=linear(base),
                                 ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert done["Status"] in ("completed", "pending")
    s = wait_completed(ec2, parent)
    assert s["State"] == "completed" and s["Progress"] == "100%" and s["Description"] == "direct base"

    # A child that overwrites block 3 and adds block 1500 of a larger volume.
    child_blocks = {3: block(4), 1500: block(5)}
    child = write_snapshot(ebs, child_blocks, size=2, ParentSnapshotId=parent)
    assert wait_completed(ec2, child)["State"] == "completed"
    expect = {0: base[0], 3: child_blocks[3], 5: base[5], 1500: child_blocks[1500]}
    listed = all_blocks(ebs, child)
    assert sorted(listed) == sorted(expect)
    for i, tok in listed.items():
        assert read_block(ebs, child, i, tok) == expect[i]
    assert changed(ebs, child, parent) == {3: (True, True), 1500: (False, True)}
    assert changed(ebs, child) == {i: (False, True) for i in expect}

    # Restored to a volume, the bytes over NBD are the snapshot's.
    vid = ec2.create_volume(AvailabilityZone=az, SnapshotId=child)["VolumeId"]
    wait_volume_state(ec2, vid, "available")
    inst = make_instance(ec2, "ami-0b5e4c3d2a1f00001", az, run_tag)["InstanceId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    wait_attached(ec2, vid)
    image = tmp_path / "vol.raw"
    nbd.to_file(server, vid, image)
    raw = image.read_bytes()
    assert len(raw) == 2 << 30
    for i in range(0, 2 * 2048):
        want = expect.get(i)
        got = raw[i * BLOCK:(i + 1) * BLOCK]
        if want is None:
            assert got.count(0) == BLOCK, f"block {i} should be zeros"
        else:
            assert got == want, f"block {i} differs"

    # An EC2 snapshot of that volume is incremental against the direct snapshot: only what the
    # guest changed is listed as changed.
    nbd.qemu_io(server, vid, f"write -P 0x5a {7 * BLOCK} {BLOCK}")
    ec2_snap = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert wait_completed(ec2, ec2_snap)["State"] == "completed"
    assert changed(ebs, ec2_snap, child) == {7: (False, True)}
    got = read_block(ebs, ec2_snap, 7, all_blocks(ebs, ec2_snap)[7])
    assert got == b"\x5a" * BLOCK


def test_changed_blocks_after_one_percent_change(server, ec2, az, run_tag):
    ebs = ebs_client(server)
    inst, vid = attached_volume(ec2, az, run_tag)
    # 1 GiB = 2048 blocks: write 200 spread blocks, snapshot, change 1 % (20 blocks), snapshot.
    first = list(range(0, 2048, 10))[:200]
    cmds = [f"write -P 0x11 {i * BLOCK} {BLOCK}" for i in first]
    nbd.qemu_io(server, vid, *cmds)
    s1 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert wait_completed(ec2, s1)["State"] == "completed"
    change = [3, 10, 20, 517, 1030, 1031, 2047] + list(range(1200, 1213))
    assert len(change) == 20
    nbd.qemu_io(server, vid, *[f"write -P 0x22 {i * BLOCK + 4096} 4096" for i in change])
    s2 = ec2.create_snapshot(VolumeId=vid)["SnapshotId"]
    assert wait_completed(ec2, s2)["State"] == "completed"
    diff = changed(ebs, s2, s1, MaxResults=100)
    assert sorted(diff) == sorted(change)
    for i in change:
        assert diff[i] == (i in first, True)
    # Without a first snapshot: every written block of the second.
    assert sorted(changed(ebs, s2)) == sorted(set(first) | set(change))
    # Paging from a block index.
    assert sorted(changed(ebs, s2, s1, StartingBlockIndex=1031)) == [i for i in sorted(change) if i >= 1031]
    # Unrelated snapshots are refused.
    other = write_snapshot(ebs, {0: block(9)})
    wait_completed(ec2, other)
    with pytest.raises(ClientError) as e:
        ebs.list_changed_blocks(FirstSnapshotId=other, SecondSnapshotId=s2)
    assert error_of(e) == ("ValidationException", "UNRELATED_SNAPSHOTS", 400)


def test_block_tokens_expired_and_foreign_are_refused(tmp_path):
    srv = _make_server(tmp_path, BLOCKSNAP_EBS_BLOCK_TOKEN_SECS="2")
    try:
        ebs = ebs_client(srv)
        ec2 = srv.client()
        a = write_snapshot(ebs, {0: block(1), 1: block(2)})
        b = write_snapshot(ebs, {0: block(1)})
        wait_completed(ec2, a)
        wait_completed(ec2, b)
        ta = all_blocks(ebs, a)
        assert read_block(ebs, a, 0, ta[0]) == block(1)
        # Another index, another snapshot, an altered token.
        for sid, idx, tok in [(a, 1, ta[0]), (b, 0, ta[0]), (a, 0, ta[0][:-4] + "AAA=")]:
            with pytest.raises(ClientError) as e:
                ebs.get_snapshot_block(SnapshotId=sid, BlockIndex=idx, BlockToken=tok)
            assert error_of(e) == ("ValidationException", "INVALID_BLOCK_TOKEN", 400)
        time.sleep(3)
        with pytest.raises(ClientError) as e:
            ebs.get_snapshot_block(SnapshotId=a, BlockIndex=0, BlockToken=ta[0])
        assert error_of(e) == ("ValidationException", "INVALID_BLOCK_TOKEN", 400)
        assert "expired" in e.value.response["Error"]["Message"]
        # A fresh listing works again; tokens survive a restart while valid.
        srv.restart()
        assert read_block(ebs_client(srv), a, 1, all_blocks(ebs_client(srv), a)[1]) == block(2)
    finally:
        srv.stop()


def test_wrong_checksum_is_refused_and_nothing_is_stored(server, ec2):
    ebs = ebs_client(server)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    data = block(7)
    with pytest.raises(ClientError) as e:
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=data, DataLength=BLOCK,
                               Checksum=b64sha(b"something else"), ChecksumAlgorithm="SHA256")
    assert error_of(e) == ("ValidationException", "INVALID_CHECKSUM", 400)
    # Nothing was recorded: a count of 1 is wrong, 0 is right, and the snapshot has no block.
    with pytest.raises(ClientError) as e:
        ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=1)
    assert error_of(e)[0] == "ValidationException"
    assert ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] == "pending"
    assert ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=0)["Status"] in ("completed", "pending")
    wait_completed(ec2, sid)
    assert all_blocks(ebs, sid) == {}


def test_wrong_aggregated_checksum_ends_in_error(server, ec2):
    ebs = ebs_client(server)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put(ebs, sid, 0, block(1))
    put(ebs, sid, 1, block(2))
    r = ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2, Checksum=linear({0: block(2), 1: block(1)}),
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert r["Status"] == "error"
    s = ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]
    assert s["State"] == "error" and "checksum" in s["StateMessage"]
    with pytest.raises(ClientError) as e:
        put(ebs, sid, 2, block(3))
    assert error_of(e)[0] == "ValidationException"


def test_start_snapshot_is_idempotent_with_client_token(server, ec2):
    ebs = ebs_client(server)
    token = "tok-" + os.urandom(6).hex()
    a = ebs.start_snapshot(VolumeSize=3, ClientToken=token, Description="same")
    b = ebs.start_snapshot(VolumeSize=3, ClientToken=token, Description="same")
    assert a["SnapshotId"] == b["SnapshotId"]
    with pytest.raises(ClientError) as e:
        ebs.start_snapshot(VolumeSize=4, ClientToken=token, Description="same")
    assert error_of(e)[0] == "ConflictException" and error_of(e)[2] == 409
    ids = [s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
    assert ids.count(a["SnapshotId"]) == 1


def test_timeout_moves_an_abandoned_snapshot_to_error(tmp_path):
    # A "minute" of 300 ms: Timeout=10 is three seconds.
    srv = _make_server(tmp_path, BLOCKSNAP_EBS_MINUTE_MS="300")
    try:
        ebs, ec2 = ebs_client(srv), srv.client()
        sid = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
        put(ebs, sid, 0, block(1))
        done = ebs.start_snapshot(VolumeSize=1, Timeout=10)["SnapshotId"]
        put(ebs, done, 0, block(1))
        ebs.complete_snapshot(SnapshotId=done, ChangedBlocksCount=1)
        s = poll(lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0],
                 lambda s: s["State"] != "pending", timeout=30)
        assert s["State"] == "error" and "timeout of 10 minutes" in s["StateMessage"]
        with pytest.raises(ClientError) as e:
            put(ebs, sid, 1, block(2))
        assert error_of(e)[0] == "ValidationException"
        assert ec2.describe_snapshots(SnapshotIds=[done])["Snapshots"][0]["State"] == "completed"
        # No block log is left behind. The expiry removes it only once the `error` row is durable
        # (a crash in between must still find the log of a pending row), so DescribeSnapshots can
        # show `error` a catalog sync and a directory fsync before the log is gone: wait for it.
        logs = srv.data_dir / "direct-writes"
        assert poll(lambda: sorted(p.name for p in logs.glob("*.blocks")), lambda left: not left, timeout=30) == []
    finally:
        srv.stop()


def test_pending_writes_survive_a_restart(fresh_server):
    ebs, ec2 = ebs_client(fresh_server), fresh_server.client()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    blocks = {2: block(1), 9: block(2)}
    put(ebs, sid, 2, blocks[2])
    fresh_server.proc.kill()
    fresh_server.proc.wait()
    fresh_server.proc = None
    fresh_server.start()
    ebs = ebs_client(fresh_server)
    put(ebs, sid, 9, blocks[9])
    r = ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2, Checksum=linear(blocks),
                              ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    assert r["Status"] in ("completed", "pending")
    assert wait_completed(ec2, sid)["State"] == "completed"
    got = all_blocks(ebs, sid)
    assert {i: read_block(ebs, sid, i, t) for i, t in got.items()} == blocks


def test_other_accounts_and_encryption(server, ec2):
    ebs = ebs_client(server)
    other = server.create_account()
    ebs_other = ebs_client(server, other)
    plain = write_snapshot(ebs, {0: block(1)})
    enc = ebs.start_snapshot(VolumeSize=1, Encrypted=True)
    assert enc["SseType"] == "sse-kms" and enc["KmsKeyArn"].startswith("arn:aws:kms:")
    put(ebs, enc["SnapshotId"], 4, block(4))
    ebs.complete_snapshot(SnapshotId=enc["SnapshotId"], ChangedBlocksCount=1)
    enc_id = enc["SnapshotId"]
    for sid in (plain, enc_id):
        assert wait_completed(ec2, sid)["State"] == "completed"
    assert ec2.describe_snapshots(SnapshotIds=[enc_id])["Snapshots"][0]["Encrypted"] is True
    assert read_block(ebs, enc_id, 4, all_blocks(ebs, enc_id)[4]) == block(4)
    # Not shared: denied.
    for call in (lambda: ebs_other.list_snapshot_blocks(SnapshotId=plain),
                 lambda: ebs_other.list_changed_blocks(SecondSnapshotId=plain),
                 lambda: ebs_other.get_snapshot_block(SnapshotId=plain, BlockIndex=0,
                                                      BlockToken=all_blocks(ebs, plain)[0]),
                 lambda: put(ebs_other, plain, 1, block(1)),
                 lambda: ebs_other.complete_snapshot(SnapshotId=plain, ChangedBlocksCount=0)):
        with pytest.raises(ClientError) as e:
            call()
        assert error_of(e) == ("AccessDeniedException", "UNAUTHORIZED_ACCOUNT", 403)
    # Shared: readable; an encrypted one still needs its key, which is the owner's.
    for sid in (plain, enc_id):
        ec2.modify_snapshot_attribute(SnapshotId=sid, Attribute="createVolumePermission",
                                      OperationType="add", UserIds=[other.account_id])
    toks = all_blocks(ebs_other, plain)
    assert read_block(ebs_other, plain, 0, toks[0]) == block(1)
    with pytest.raises(ClientError) as e:
        ebs_other.list_snapshot_blocks(SnapshotId=enc_id)
    assert error_of(e) == ("AccessDeniedException", "DEPENDENCY_ACCESS_DENIED", 403)
    with pytest.raises(ClientError) as e:
        put(ebs_other, plain, 1, block(1))
    assert error_of(e)[0] == "AccessDeniedException"
    # A child of the encrypted snapshot stays in its lineage and reads back.
    child = write_snapshot(ebs, {5: block(5)}, ParentSnapshotId=enc_id)
    assert wait_completed(ec2, child)["State"] == "completed"
    assert changed(ebs, child, enc_id) == {5: (False, True)}
    got = all_blocks(ebs, child)
    assert sorted(got) == [4, 5] and read_block(ebs, child, 4, got[4]) == block(4)
    # A child of the plain snapshot under a KMS key: the parent's blocks are re-encrypted.
    kms = server.session().client("kms", endpoint_url=server.endpoint)
    arn = kms.create_key(Description="ebs direct")["KeyMetadata"]["Arn"]
    moved = write_snapshot(ebs, {1: block(6)}, ParentSnapshotId=plain, KmsKeyArn=arn)
    assert wait_completed(ec2, moved)["State"] == "completed"
    got = all_blocks(ebs, moved)
    assert sorted(got) == [0, 1] and read_block(ebs, moved, 0, got[0]) == block(1)
    with pytest.raises(ClientError) as e:
        ebs.list_changed_blocks(FirstSnapshotId=plain, SecondSnapshotId=moved)
    assert error_of(e) == ("ValidationException", "UNRELATED_SNAPSHOTS", 400)


def test_bad_input_gets_the_documented_error(server, ec2):
    ebs = ebs_client(server)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    done = write_snapshot(ebs, {0: block(1)})
    wait_completed(ec2, done)
    cases = [
        (lambda: ebs.start_snapshot(VolumeSize=70000), "ValidationException", "INVALID_VOLUME_SIZE"),
        (lambda: ebs.start_snapshot(VolumeSize=1, Timeout=5000), "ValidationException", "INVALID_PARAMETER_VALUE"),
        (lambda: ebs.start_snapshot(VolumeSize=1, ParentSnapshotId=done, Encrypted=True),
         "ValidationException", "INVALID_PARAMETER_VALUE"),
        (lambda: ebs.start_snapshot(VolumeSize=1, ParentSnapshotId="snap-0123456789abcdef0"),
         "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND"),
        (lambda: ebs.start_snapshot(VolumeSize=1, Encrypted=True,
                                    KmsKeyArn="arn:aws:kms:us-east-1:000000000000:key/nope"),
         "ValidationException", "INVALID_CUSTOMER_KEY"),
        (lambda: ebs.start_snapshot(VolumeSize=1, Tags=[{"Key": "aws:x", "Value": "y"}]),
         "ValidationException", "INVALID_TAG"),
        (lambda: put(ebs, sid, 2048, block(1)), "ValidationException", "INVALID_BLOCK"),
        (lambda: put(ebs, done, 1, block(1)), "ValidationException", "INVALID_PARAMETER_VALUE"),
        (lambda: put(ebs, "snap-0123456789abcdef0", 0, block(1)), "ResourceNotFoundException",
         "SNAPSHOT_NOT_FOUND"),
        (lambda: ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=0, BlockData=b"x" * 4096, DataLength=4096,
                                        Checksum=b64sha(b"x" * 4096), ChecksumAlgorithm="SHA256"),
         "ValidationException", "INVALID_PARAMETER_VALUE"),
        (lambda: ebs.list_snapshot_blocks(SnapshotId=sid), "ValidationException", "INVALID_PARAMETER_VALUE"),
        (lambda: ebs.list_snapshot_blocks(SnapshotId=done, MaxResults=100000), "ValidationException",
         "INVALID_PARAMETER_VALUE"),
        (lambda: ebs.list_snapshot_blocks(SnapshotId=done, NextToken="bogus"), "ValidationException",
         "INVALID_PAGE_TOKEN"),
        (lambda: ebs.get_snapshot_block(SnapshotId=done, BlockIndex=0, BlockToken="AAAA"),
         "ValidationException", "INVALID_BLOCK_TOKEN"),
        (lambda: ebs.get_snapshot_block(SnapshotId=done, BlockIndex=5000, BlockToken="AAAA"),
         "ValidationException", "INVALID_BLOCK"),
        (lambda: ebs.complete_snapshot(SnapshotId="snap-0123456789abcdef0", ChangedBlocksCount=0),
         "ResourceNotFoundException", "SNAPSHOT_NOT_FOUND"),
    ]
    for call, code, reason in cases:
        with pytest.raises(ClientError) as e:
            call()
        got = error_of(e)
        assert got[:2] == (code, reason), got
        assert got[2] < 500
    # Malformed requests straight over HTTP: never a 5xx, always a code.
    c = server.creds
    raw_cases = [
        ("POST", "/snapshots", {}, b"{not json"),
        ("POST", "/snapshots", {}, b'{"VolumeSize": "big"}'),
        ("POST", "/snapshots", {}, b"[]"),
        ("PUT", f"/snapshots/{sid}/blocks/-1", {"x-amz-Data-Length": str(BLOCK)}, b"\0" * BLOCK),
        ("PUT", f"/snapshots/{sid}/blocks/0", {"x-amz-Data-Length": "12", "x-amz-Checksum": "x",
                                               "x-amz-Checksum-Algorithm": "SHA256"}, b"\0" * 12),
        ("PUT", f"/snapshots/{sid}/blocks/0", {"x-amz-Data-Length": str(BLOCK), "x-amz-Checksum": "!!",
                                               "x-amz-Checksum-Algorithm": "MD5"}, b"\0" * BLOCK),
        ("POST", f"/snapshots/completion/{sid}", {"x-amz-ChangedBlocksCount": "many"}, b""),
        ("POST", f"/snapshots/completion/{sid}", {}, b""),
        ("GET", f"/snapshots/{done}/blocks?maxResults=abc", {}, b""),
        ("GET", f"/snapshots/{done}/blocks/0", {}, b""),
        ("DELETE", f"/snapshots/{done}", {}, b""),
        ("GET", "/snapshots/not-a-snapshot/blocks", {}, b""),
    ]
    for method, path, headers, body in raw_cases:
        req = AWSRequest(method=method, url=server.endpoint.rstrip("/") + path, data=body, headers=headers)
        botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "ebs", server.region).add_auth(req)
        p = req.prepare()
        r = requests.request(p.method, p.url, headers=dict(p.headers), data=p.body, timeout=30)
        assert 400 <= r.status_code < 500, (method, path, r.status_code, r.text)
        assert r.headers.get("x-amzn-ErrorType"), (method, path, r.text)
        assert json.loads(r.text).get("message"), (method, path, r.text)
    # Signed for another service: refused.
    req = AWSRequest(method="GET", url=server.endpoint.rstrip("/") + f"/snapshots/{done}/blocks")
    botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "ec2", server.region).add_auth(req)
    p = req.prepare()
    r = requests.get(p.url, headers=dict(p.headers), timeout=30)
    assert r.status_code == 403 and "ebs" in r.text


def test_unsigned_payload_needs_a_signed_checksum(server):
    ebs = ebs_client(server)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    c, data = server.creds, block(3)
    url = server.endpoint.rstrip("/") + f"/snapshots/{sid}/blocks/0"
    base = {"x-amz-Data-Length": str(BLOCK), "x-amz-Checksum-Algorithm": "SHA256",
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
    # Signed checksum, unsigned body: accepted (the checksum authenticates the block) …
    req = AWSRequest(method="PUT", url=url, data=data, headers={**base, "x-amz-Checksum": b64sha(data)})
    botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "ebs", server.region).add_auth(req)
    p = req.prepare()
    r = requests.put(p.url, headers=dict(p.headers), data=p.body, timeout=30)
    assert r.status_code == 201, r.text
    # … a body swapped in transit does not match it …
    r = requests.put(p.url, headers=dict(p.headers), data=block(4), timeout=30)
    assert r.status_code == 400 and json.loads(r.text)["Reason"] == "INVALID_CHECKSUM"
    # … and without the checksum among the signed headers the request is refused.
    req = AWSRequest(method="PUT", url=url, data=data, headers=base)
    botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "ebs", server.region).add_auth(req)
    p = req.prepare()
    headers = dict(p.headers)
    headers["x-amz-Checksum"] = b64sha(data)
    r = requests.put(p.url, headers=headers, data=p.body, timeout=30)
    assert r.status_code == 403 and "x-amz-checksum" in r.text


def test_aws_cli_ebs_round_trip(server, tmp_path):
    data = block(11)
    src = tmp_path / "block.bin"
    src.write_bytes(data)
    out = tmp_path / "out.bin"

    def aws(*args):
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({"AWS_ACCESS_KEY_ID": server.creds.access_key, "AWS_SECRET_ACCESS_KEY": server.creds.secret_key,
                    "AWS_DEFAULT_REGION": server.region, "AWS_CONFIG_FILE": os.devnull,
                    "AWS_SHARED_CREDENTIALS_FILE": os.devnull, "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"})
        p = subprocess.run(["aws", "ebs", "--endpoint-url", server.endpoint, "--output", "json", *args],
                           capture_output=True, text=True, env=env, timeout=120)
        assert p.returncode == 0, f"aws ebs {args[0]} failed: {p.stderr}"
        return json.loads(p.stdout) if p.stdout.strip() else {}

    sid = aws("start-snapshot", "--volume-size", "1", "--description", "from the CLI")["SnapshotId"]
    r = aws("put-snapshot-block", "--snapshot-id", sid, "--block-index", "7", "--block-data", str(src),
            "--data-length", str(BLOCK), "--checksum", b64sha(data), "--checksum-algorithm", "SHA256")
    assert r["Checksum"] == b64sha(data)
    assert aws("complete-snapshot", "--snapshot-id", sid, "--changed-blocks-count", "1")["Status"] in (
        "completed", "pending")
    blocks = poll(lambda: aws("list-snapshot-blocks", "--snapshot-id", sid),
                  lambda r: bool(r.get("Blocks")), timeout=30)["Blocks"]
    assert [b["BlockIndex"] for b in blocks] == [7]
    r = aws("get-snapshot-block", "--snapshot-id", sid, "--block-index", "7", "--block-token",
            blocks[0]["BlockToken"], str(out))
    assert r["Checksum"] == b64sha(data) and out.read_bytes() == data
    assert aws("list-changed-blocks", "--second-snapshot-id", sid)["ChangedBlocks"][0]["BlockIndex"] == 7


def test_limits_throttling_and_concurrent_snapshots(tmp_path):
    import concurrent.futures
    srv = _make_server(tmp_path, BLOCKSNAP_EBS_MAX_INFLIGHT="1")
    try:
        ebs, ec2 = ebs_client(srv), srv.client()
        sid = write_snapshot(ebs, {i: block(i) for i in range(4)})
        wait_completed(ec2, sid)
        toks = all_blocks(ebs, sid)

        shared = ebs_client(srv)  # one client (thread-safe): no per-call set-up spacing the requests out

        def get(i):
            try:
                read_block(shared, sid, i % 4, toks[i % 4])
                return "ok"
            except ClientError as e:
                r = e.response
                return r["Error"]["Code"], r.get("Reason"), r["ResponseMetadata"]["HTTPStatusCode"]

        # Bursts of concurrent reads with one slot per account: some are throttled (a burst whose
        # requests happen not to overlap proves nothing, so try a few), none fails otherwise.
        results = []
        with concurrent.futures.ThreadPoolExecutor(32) as pool:
            for _ in range(40):
                results += list(pool.map(get, range(64)))
                if any(r != "ok" for r in results):
                    break
        assert "ok" in results
        throttled = [r for r in results if r != "ok"]
        assert throttled and all(r == ("RequestThrottledException", "ACCOUNT_THROTTLED", 400) for r in throttled)
        # At most 100 snapshots pending from StartSnapshot per account: the 101st is refused.
        for _ in range(100):
            ebs.start_snapshot(VolumeSize=1)
        with pytest.raises(ClientError) as e:
            ebs.start_snapshot(VolumeSize=1)
        assert error_of(e)[0] == "ConcurrentLimitExceededException"
        # Another account is not affected.
        other = ebs_client(srv, srv.create_account())
        assert other.start_snapshot(VolumeSize=1)["Status"] == "pending"
    finally:
        srv.stop()


def test_direct_snapshot_copies_to_another_region_and_reads_there(server, ec2):
    ebs = ebs_client(server)
    blocks = {2: block(21), 900: block(22)}
    sid = write_snapshot(ebs, blocks)
    wait_completed(ec2, sid)
    far = server.client(region="eu-west-1")
    copy = far.copy_snapshot(SourceSnapshotId=sid, SourceRegion=server.region)["SnapshotId"]
    assert wait_completed(far, copy)["State"] == "completed"
    ebs_far = server.session(region="eu-west-1").client("ebs", endpoint_url=server.endpoint)
    got = all_blocks(ebs_far, copy)
    assert sorted(got) == sorted(blocks)
    assert {i: read_block(ebs_far, copy, i, t) for i, t in got.items()} == blocks
    # The copy lives in its own region: the source region does not know it.
    with pytest.raises(ClientError) as e:
        ebs.list_snapshot_blocks(SnapshotId=copy)
    assert error_of(e)[0] == "ResourceNotFoundException"


def test_gc_keeps_blocks_of_a_snapshot_being_written(gc_server):
    # GC every second with no grace window: only the block log keeps the written blocks alive.
    ebs, ec2 = ebs_client(gc_server), gc_server.client()
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    blocks = {4: block(31), 5: block(32)}
    for i, d in blocks.items():
        put(ebs, sid, i, d)
    time.sleep(3)
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=2, Checksum=linear(blocks), ChecksumAlgorithm="SHA256",
                          ChecksumAggregationMethod="LINEAR")
    assert wait_completed(ec2, sid)["State"] == "completed"
    got = all_blocks(ebs, sid)
    assert {i: read_block(ebs, sid, i, t) for i, t in got.items()} == blocks
    # An abandoned one's blocks are garbage once it is in error.
    gone = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put(ebs, gone, 0, block(33))
    name = hashlib.sha256(block(33)).hexdigest()

    def found() -> list[str]:
        return [k for k in gc_server.store_objects(f"snapshots/{gc_server.region}/chunks") if k.endswith("/" + name)]
    time.sleep(2)
    assert found(), "the written block is kept while its snapshot is pending"
    ebs.complete_snapshot(SnapshotId=gone, ChangedBlocksCount=1, Checksum=linear({0: block(34)}),
                          ChecksumAlgorithm="SHA256", ChecksumAggregationMethod="LINEAR")
    poll(found, lambda f: not f, timeout=30)


def test_pages_are_bounded_on_sparse_volumes(server, ec2):
    # One block in each of 130 segments (512 MiB apart) of a 100 GiB volume: a page reads at most
    # 128 segments, so it may hold fewer blocks than MaxResults and says where to go on, as the API
    # reference allows; every page's work is bounded however sparse the blocks.
    ebs = ebs_client(server)
    spread = {i * 1024 + 5: b"\x07" * 16 + i.to_bytes(4, "little") + b"\0" * (BLOCK - 20) for i in range(130)}
    parent = write_snapshot(ebs, spread, size=100)
    wait_completed(ec2, parent)
    first = ebs.list_snapshot_blocks(SnapshotId=parent, MaxResults=10000)
    assert [b["BlockIndex"] for b in first["Blocks"]] == sorted(spread)[:128] and first["NextToken"]
    second = ebs.list_snapshot_blocks(SnapshotId=parent, NextToken=first["NextToken"])
    assert [b["BlockIndex"] for b in second["Blocks"]] == sorted(spread)[128:] and "NextToken" not in second
    # The same bound for a diff: every segment differs.
    moved = {i * 1024 + 6: d for i, d in enumerate(spread.values())}
    child = write_snapshot(ebs, moved, size=100, ParentSnapshotId=parent)
    wait_completed(ec2, child)
    page = ebs.list_changed_blocks(FirstSnapshotId=parent, SecondSnapshotId=child, MaxResults=10000)
    assert [c["BlockIndex"] for c in page["ChangedBlocks"]] == sorted(moved)[:128] and page["NextToken"]
    assert changed(ebs, child, parent) == {i: (False, True) for i in moved}

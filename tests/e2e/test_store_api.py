"""BlocksnapStore_20261130 (SigV4 service `blocksnap`): what AWS has no call for, for the operator CLI
and the web console. DescribeLineage (the caller's snapshots, parent -> child, copies across regions,
bytes added; paginated) and GetStoreStats (per region; store-wide for root, the caller's share for any
other account)."""
from __future__ import annotations

import hashlib
import json

import botocore.auth
import pytest
import requests
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from conftest import poll, tagspec

pytestmark = pytest.mark.blocksnap_only

TARGET = "BlocksnapStore_20261130"
BLOCK = 524288


def call(server, op: str, body: dict, creds=None, service: str = "blocksnap", region: str | None = None):
    c = creds or server.creds
    req = AWSRequest(method="POST", url=server.endpoint, data=json.dumps(body).encode(),
                     headers={"X-Amz-Target": f"{TARGET}.{op}", "Content-Type": "application/x-amz-json-1.1"})
    botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), service,
                            region or server.region).add_auth(req)
    p = req.prepare()
    r = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=60)
    return r.status_code, r.json()


def ok(server, op, body, **kw) -> dict:
    status, doc = call(server, op, body, **kw)
    assert status == 200, f"{op}: {status} {doc}"
    return doc


def put_blocks(server, sid: str, blocks: dict[int, bytes], creds=None):
    import base64
    ebs = server.session(creds).client("ebs", endpoint_url=server.endpoint)
    for i, d in blocks.items():
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=i, BlockData=d, DataLength=len(d),
                               Checksum=base64.b64encode(hashlib.sha256(d).digest()).decode(),
                               ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks))


def block(seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (BLOCK // 32)


def wait_done(ec2, sid):
    return poll(lambda: ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0],
                lambda s: s["State"] != "pending", timeout=60)


def test_lineage_chain_copies_pages_and_scoping(server, ec2, az, run_tag):
    vid = ec2.create_volume(Size=1, AvailabilityZone=az, TagSpecifications=tagspec("volume", run_tag))["VolumeId"]
    ec2.get_waiter("volume_available").wait(VolumeIds=[vid], WaiterConfig={"Delay": 1})
    s1 = ec2.create_snapshot(VolumeId=vid, Description="first")["SnapshotId"]
    assert wait_done(ec2, s1)["State"] == "completed"
    s2 = ec2.create_snapshot(VolumeId=vid, Description="second")["SnapshotId"]
    assert wait_done(ec2, s2)["State"] == "completed"
    west = server.client(region="us-west-2")
    c1 = west.copy_snapshot(SourceRegion=server.region, SourceSnapshotId=s2)["SnapshotId"]
    assert wait_done(west, c1)["State"] == "completed"

    got = ok(server, "DescribeLineage", {"VolumeId": vid})
    by_id = {s["SnapshotId"]: s for s in got["Snapshots"]}
    assert list(by_id) == [s1, s2, c1], "in start order, the copy (another region) included"
    assert "NextToken" not in got
    assert "ParentSnapshotId" not in by_id[s1]
    assert by_id[s2]["ParentSnapshotId"] == s1
    assert by_id[c1]["CopySource"] == {"Region": server.region, "SnapshotId": s2}
    assert by_id[c1]["Region"] == "us-west-2" and by_id[s1]["Region"] == server.region
    for s in by_id.values():
        assert s["State"] == "completed" and s["Progress"] == 100 and s["VolumeSize"] == 1
        assert isinstance(s["StoredBytesAdded"], int) and s["StartTime"] > 0 and s["Lightsail"] is False
    assert by_id[s1]["VolumeId"] == vid and by_id[s1]["Description"] == "first"

    # Pages of one, in the same order, ending without a token.
    seen, token = [], None
    while True:
        page = ok(server, "DescribeLineage", {"VolumeId": vid, "MaxResults": 1, **({"NextToken": token} if token else {})})
        assert len(page["Snapshots"]) <= 1
        seen += [s["SnapshotId"] for s in page["Snapshots"]]
        token = page.get("NextToken")
        if not token:
            break
    assert seen == [s1, s2, c1]

    # Everything of the caller holds the volume's lineage too.
    everything = [s["SnapshotId"] for s in ok(server, "DescribeLineage", {})["Snapshots"]]
    assert {s1, s2, c1} <= set(everything)

    # Another account sees none of it, not even with the volume id.
    other = server.create_account()
    assert ok(server, "DescribeLineage", {"VolumeId": vid}, creds=other)["Snapshots"] == []
    assert not {s1, s2, c1} & {s["SnapshotId"] for s in ok(server, "DescribeLineage", {}, creds=other)["Snapshots"]}


@pytest.mark.parametrize("body,code", [
    ({"MaxResults": 0}, "ValidationException"),
    ({"MaxResults": 1001}, "ValidationException"),
    ({"MaxResults": "ten"}, "SerializationException"),
    ({"NextToken": "not-a-token"}, "ValidationException"),
])
def test_lineage_bad_input(server, body, code):
    status, doc = call(server, "DescribeLineage", body)
    assert status == 400 and doc["__type"] == code, doc
    assert doc["message"]


def test_wrong_scope_and_unknown_operation_are_refused(server):
    status, doc = call(server, "DescribeLineage", {}, service="ec2")
    assert status == 400 and doc["__type"] == "InvalidSignatureException", doc
    status, doc = call(server, "DeleteEverything", {})
    assert status == 400 and doc["__type"] == "UnknownOperationException", doc
    status, doc = call(server, "GetStoreStats", {"Regions": ["xx-nowhere-1"]})
    assert status == 400 and doc["__type"] == "ValidationException" and "xx-nowhere-1" in doc["message"]


def test_store_stats_root_sees_the_store_others_their_share(fresh_server):
    srv = fresh_server
    ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
    blocks = {i: block(i) for i in range(4)}
    base = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_blocks(srv, base, blocks)
    # The same bytes again: deduplicated, nothing more stored.
    again = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_blocks(srv, again, blocks)
    ec2 = srv.client()
    for sid in (base, again):
        assert wait_done(ec2, sid)["State"] == "completed"

    doc = ok(srv, "GetStoreStats", {"Regions": [srv.region, "eu-west-1"]})
    assert doc["Scope"] == "store" and doc["ComputedAt"] > 0
    here, empty = doc["Regions"]
    assert here["Region"] == srv.region and empty["Region"] == "eu-west-1"
    assert here["Snapshots"] == 2 and here["Manifests"] == 2
    assert here["LogicalBytes"] == 2 * 4 * BLOCK, "logical bytes count every snapshot's blocks"
    assert 0 < here["StoredBytes"] < 2 * 4 * BLOCK, "the second copy is deduplicated"
    assert here["Chunks"] == 4
    assert here["ReductionRatio"] == pytest.approx(here["LogicalBytes"] / here["StoredBytes"])
    assert empty["Snapshots"] == 0 and empty["StoredBytes"] == 0 and empty["ReductionRatio"] == 1.0
    assert not srv.store_objects("snapshots/eu-west-1"), "an unused region's store is not created"

    # Every served region by default.
    assert len(ok(srv, "GetStoreStats", {})["Regions"]) > 2

    # An ordinary account: its own share, no store-wide figures, no GC.
    other = srv.create_account()
    mine = ok(srv, "GetStoreStats", {"Regions": [srv.region]}, creds=other)
    assert mine["Scope"] == "account"
    (r,) = mine["Regions"]
    assert r["Snapshots"] == 0 and r["SnapshotBytesAdded"] == 0
    assert not {"LogicalBytes", "StoredBytes", "Chunks", "Gc", "ReductionRatio"} & set(r)


def test_store_stats_reports_the_last_gc(gc_server):
    srv = gc_server
    ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
    sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_blocks(srv, sid, {0: block(100)})
    assert wait_done(srv.client(), sid)["State"] == "completed"
    # The GC runs every second on the stores opened: wait for one run to be reported.
    doc = poll(lambda: ok(srv, "GetStoreStats", {"Regions": [srv.region]})["Regions"][0],
               lambda r: "Gc" in r, timeout=30)
    gc = doc["Gc"]
    assert gc["Status"] == "completed" and "Error" not in gc and gc["LastRun"] > 0
    assert gc["DurationMs"] >= 0 and gc["ChunksRemoved"] >= 0 and gc["BytesRemoved"] >= 0


def test_store_stats_follow_snapshots_deletes_and_gc(gc_server):
    """The figures are running totals (no listing per call): a new snapshot's chunks and logical
    bytes show at once, a deleted snapshot's logical bytes go with its manifest, and its chunks go
    with the next GC sweep, which also moves AsOf (the last count from a listing) and adds a sample
    to History."""
    srv = gc_server
    ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
    ec2 = srv.client()

    def region():
        return ok(srv, "GetStoreStats", {"Regions": [srv.region]})["Regions"][0]

    keep = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_blocks(srv, keep, {0: block(1)})
    assert wait_done(ec2, keep)["State"] == "completed"
    before = poll(region, lambda r: r.get("Manifests") == 1, timeout=30)
    assert before["Chunks"] == 1 and before["LogicalBytes"] == BLOCK and before["StoredBytes"] > 0
    assert "Counting" not in before and before["AsOf"] > 0

    gone = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
    put_blocks(srv, gone, {0: block(1), 1: block(2), 2: block(3)})
    assert wait_done(ec2, gone)["State"] == "completed"
    # Counted at once, before any sweep: one chunk deduplicated, two new.
    both = region()
    assert both["Manifests"] == 2 and both["Chunks"] == 3, both
    assert both["LogicalBytes"] == 4 * BLOCK
    assert both["StoredBytes"] > before["StoredBytes"]
    # The sweeps (every second here) sample the figures into History.
    poll(region, lambda r: any(s["Chunks"] == 3 and s["Manifests"] == 2 for s in r["History"]), timeout=30)

    ec2.delete_snapshot(SnapshotId=gone)
    # The manifest goes with the row: its logical bytes at once; its two own chunks with a sweep.
    after = poll(region, lambda r: r["Manifests"] == 1 and r["Chunks"] == 1, timeout=30)
    assert after["LogicalBytes"] == BLOCK
    assert after["StoredBytes"] == before["StoredBytes"], "back to the one chunk the kept snapshot holds"
    assert after["AsOf"] > both["AsOf"], "a sweep recounted"
    assert after["Gc"]["ChunksRemoved"] >= 0
    hist = after["History"]
    assert hist and all(set(s) == {"Time", "Manifests", "LogicalBytes", "StoredBytes", "Chunks"} for s in hist)
    assert [s["Time"] for s in hist] == sorted(s["Time"] for s in hist)
    assert any(s["Chunks"] == 3 for s in hist) and hist[-1]["Chunks"] <= 3

    # A restart recounts from the store: the same figures.
    srv.restart()
    again = poll(region, lambda r: "Counting" not in r, timeout=30)
    assert {k: again[k] for k in ("Manifests", "Chunks", "LogicalBytes", "StoredBytes")} == \
        {k: after[k] for k in ("Manifests", "Chunks", "LogicalBytes", "StoredBytes")}


def test_store_stats_stay_exact_under_concurrent_writers(fresh_server):
    """Stress: EBS direct snapshots written by several clients at once (a block shared by all of
    them, deduplicated, and blocks of their own), half deleted, while GetStoreStats is called in a
    loop (its first call counts the store with the writers running). No GC runs here (10 min
    interval), so the running totals alone must end equal to what is on disk."""
    import threading
    srv = fresh_server
    stop, errors, answers = threading.Event(), [], []

    def writer(w: int):
        try:
            ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
            ec2 = srv.client()
            for i in range(5):
                sid = ebs.start_snapshot(VolumeSize=1)["SnapshotId"]
                put_blocks(srv, sid, {0: block(0), 1: block(1000 + 10 * w + i), 2: block(5000 + 10 * w + i)})
                if i % 2:
                    wait_done(ec2, sid)
                    ec2.delete_snapshot(SnapshotId=sid)
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    def reader():
        while not stop.is_set():
            answers.append(ok(srv, "GetStoreStats", {"Regions": [srv.region]})["Regions"][0])

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    r = threading.Thread(target=reader)
    for t in [r, *threads]:
        t.start()
    for t in threads:
        t.join(timeout=300)
    stop.set()
    r.join(timeout=60)
    assert not errors, errors
    assert answers, "GetStoreStats answered while the writers ran"

    root = f"snapshots/{srv.region}"
    ec2 = srv.client()
    kept = [s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]]
    assert len(kept) == 4 * 3 and all(s["State"] == "completed" for s in kept)

    def on_disk():
        chunks = srv.store_objects(f"{root}/chunks")
        manifests = [k for k in srv.store_objects(f"{root}/snaps") if k.endswith(".manifest")]
        return {"Manifests": len(manifests), "Chunks": len(chunks),
                "StoredBytes": sum(chunks.values()), "LogicalBytes": len(kept) * 3 * BLOCK}

    # Deleted snapshots' manifests go just after their rows: wait for the disk to settle.
    disk = poll(on_disk, lambda d: d["Manifests"] == len(kept), timeout=30)
    assert disk["Chunks"] == 1 + 4 * 5 * 2, "the shared block once, two of their own per snapshot (no GC yet)"
    got = ok(srv, "GetStoreStats", {"Regions": [srv.region]})["Regions"][0]
    assert {k: got[k] for k in disk} == disk

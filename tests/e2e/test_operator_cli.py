"""The operator CLI (`blocksnap snapshot|volume|stats|doctor`), the real binary against the real server:
images in and out through the EBS direct APIs (raw and qcow2, compared byte for byte), snapshots
created and copied with --wait, the lineage tree, diffs, store stats, doctor's checks, exit codes and
--output json."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import blocksnap_bin, free_port, tagspec
from nbd import MiB, qemu_io

pytestmark = pytest.mark.blocksnap_only

BLOCK = 512 * 1024
GiB = 1 << 30
WEST = "us-west-2"


def env_for(server, creds=None, **extra) -> dict:
    c = creds or server.creds
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": c.access_key, "AWS_SECRET_ACCESS_KEY": c.secret_key,
                "AWS_REGION": server.region, "AWS_ENDPOINT_URL": server.endpoint.rstrip("/"),
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})
    env.update(extra)
    return env


def bs(server, *args, creds=None, env=None, expect: int = 0) -> subprocess.CompletedProcess:
    p = subprocess.run([str(blocksnap_bin()), *args], capture_output=True, text=True, timeout=120,
                       env=env or env_for(server, creds))
    assert p.returncode == expect, f"blocksnap {' '.join(args)}: exit {p.returncode} (expected {expect})\n" \
                                   f"stdout: {p.stdout}\nstderr: {p.stderr}"
    return p


def bs_json(server, *args, **kw) -> dict:
    return json.loads(bs(server, *args, "--output", "json", **kw).stdout)


def make_raw(path: Path, size: int, seed: int) -> bytes:
    """A raw image of `size` bytes (not a multiple of the block size): random data in a few places,
    zeros elsewhere (holes)."""
    rnd = random.Random(seed)
    with open(path, "wb") as f:
        f.truncate(size)
        for off, n in ((0, 3 * BLOCK + 4096), (7 * MiB + 12345, 2 * MiB), (size - 1000, 1000)):
            f.seek(off)
            f.write(rnd.randbytes(n))
    return path.read_bytes()


def assert_export_matches(path: Path, expect: bytes, size_gib: int) -> None:
    """The exported file is the volume's size, starts with `expect` and holds nothing but zeros after."""
    assert path.stat().st_size == size_gib * GiB
    with open(path, "rb") as f:
        got = f.read(len(expect))
        assert hashlib.sha256(got).hexdigest() == hashlib.sha256(expect).hexdigest(), "exported bytes differ"
        end_of_block = -(-len(expect) // BLOCK) * BLOCK
        assert f.read(end_of_block - len(expect)).count(0) == end_of_block - len(expect)
        try:
            data = os.lseek(f.fileno(), end_of_block, os.SEEK_DATA)
        except OSError:
            data = None
        assert data is None, f"data after the image at {data}: the export is not sparse or not zero there"


def test_import_raw_export_volume_and_snapshot(server, ec2, tmp_path):
    img = tmp_path / "disk.raw"
    content = make_raw(img, 24 * MiB + 1000, seed=1)
    r = bs_json(server, "volume", "import", str(img))
    vid, sid = r["VolumeId"], r["SnapshotId"]
    assert r["Size"] == 1 and r["Format"] == "raw" and r["ImageBytes"] == len(content)
    # 4 + 5 (2 MiB starting mid-block) + 1 blocks hold data; everything else is skipped.
    assert r["BlocksWritten"] == 10 and r["BlocksWritten"] + r["ZeroBlocksSkipped"] == -(-len(content) // BLOCK)
    assert r["MiBPerSecond"] > 0
    v = ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]
    assert v["Size"] == 1 and v["SnapshotId"] == sid and v["AvailabilityZone"] == f"{server.region}a"

    snap_file = tmp_path / "snap.raw"
    e = bs_json(server, "volume", "export", sid, str(snap_file))
    assert e["BlocksRead"] == 10 and e["TemporarySnapshot"] is False and e["Bytes"] == GiB
    assert_export_matches(snap_file, content, 1)

    vol_file = tmp_path / "vol.raw"
    out = bs(server, "volume", "export", vid, str(vol_file)).stdout
    assert "MiB/s" in out and "temporary snapshot" in out
    assert_export_matches(vol_file, content, 1)
    temp = [s for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]
            if s["Description"] == f"blocksnap volume export of {vid} (temporary)"]
    assert temp == [], "the temporary snapshot of a volume export is deleted"
    assert not list(tmp_path.glob("*.partial"))

    # An existing file is not replaced without --force.
    p = bs(server, "volume", "export", sid, str(snap_file), expect=5)
    assert "--force" in p.stderr
    bs(server, "volume", "export", sid, str(snap_file), "--force")


def test_import_qcow2_through_qemu_img(server, tmp_path):
    q = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(q), "20M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 1M 3M", "-c", "write -P 0xa5 9437184 4096",
                    "-c", "write -P 0x01 20475904 4096", str(q)], check=True, capture_output=True)
    ref = tmp_path / "ref.raw"
    subprocess.run(["qemu-img", "convert", "-f", "qcow2", "-O", "raw", str(q), str(ref)], check=True)
    r = bs_json(server, "volume", "import", str(q), "--size", "2", "--az", f"{server.region}b")
    assert r["Format"] == "qcow2" and r["Size"] == 2 and r["AvailabilityZone"] == f"{server.region}b"
    assert r["BlocksWritten"] == 6 + 1 + 1
    out = tmp_path / "back.raw"
    bs(server, "volume", "export", r["SnapshotId"], str(out))
    assert_export_matches(out, ref.read_bytes(), 2)
    assert not list(tmp_path.glob(".blocksnap-import-*")), "the converted temp file is removed"

    # Without qemu-img a qcow2 image is refused with what to do (exit 5); --size too small also.
    env = env_for(server, PATH="/nonexistent")
    p = bs(server, "volume", "import", str(q), env=env, expect=5)
    assert "qemu-img" in p.stderr and "install" in p.stderr
    p = bs(server, "volume", "import", str(ref), "--size", "0", expect=5)
    assert "--size 1" in p.stderr


def test_snapshot_create_copy_tree_and_diff(server, ec2, tmp_path, run_tag):
    img = tmp_path / "base.raw"
    make_raw(img, 16 * MiB, seed=2)
    r = bs_json(server, "volume", "import", str(img))
    vid, base = r["VolumeId"], r["SnapshotId"]
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": f"{server.region}a"},
                             TagSpecifications=tagspec("instance", run_tag))["Instances"][0]["InstanceId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf")
    # Three blocks changed: one rewritten inside the image, two beyond it.
    qemu_io(server, vid, f"write -P 0x33 {BLOCK} {BLOCK}", f"write -P 0x44 {100 * MiB} {2 * BLOCK}", "flush")

    s1 = bs_json(server, "snapshot", "create", "--volume", vid, "--description", "after", "--wait")
    assert s1["State"] == "completed" and s1["Progress"] == 100 and s1["VolumeId"] == vid
    d = bs_json(server, "snapshot", "diff", base, s1["SnapshotId"])
    assert d["ChangedBlocks"] == 3 and d["ChangedBytes"] == 3 * BLOCK
    assert d["BlockIndexes"] == [1, 200, 201] and d["WrittenInBoth"] == 1 and d["OnlyInSecond"] == 2
    text = bs(server, "snapshot", "diff", base, s1["SnapshotId"], "--blocks").stdout
    assert text.startswith("3 changed block(s)") and "1.5 MiB" in text and "1 200 201" in text

    c = bs_json(server, "snapshot", "copy", s1["SnapshotId"], "--to", WEST, "--wait")
    assert c["State"] == "completed" and c["Region"] == WEST and c["SourceSnapshotId"] == s1["SnapshotId"]
    assert server.client(region=WEST).describe_snapshots(SnapshotIds=[c["SnapshotId"]])["Snapshots"][0]["State"] \
        == "completed"

    tree = bs_json(server, "snapshot", "ls", "--volume", vid, "--tree")
    (vol,) = tree["Volumes"]
    assert vol["VolumeId"] == vid
    (top,) = vol["Snapshots"]
    assert top["SnapshotId"] == s1["SnapshotId"] and top["ParentSnapshotId"] == base
    assert [k["SnapshotId"] for k in top["Children"]] == [c["SnapshotId"]]
    assert top["Children"][0]["CopySource"] == {"Region": server.region, "SnapshotId": s1["SnapshotId"]}

    # The whole lineage as text: the imported snapshot, its child one level down, the copy below that.
    lines = bs(server, "snapshot", "ls", "--tree").stdout.splitlines()
    depth = {}
    for line in lines:
        found = [(line.index(sid), sid) for sid in (base, s1["SnapshotId"], c["SnapshotId"]) if sid in line]
        if found:
            pos, sid = min(found)  # the line's own snapshot (a copy's line also names its source)
            depth[sid] = pos
    assert depth[base] < depth[s1["SnapshotId"]] < depth[c["SnapshotId"]], "\n".join(lines)
    assert any(c["SnapshotId"] in l and f"copy of {server.region}/{s1['SnapshotId']} into {WEST}" in l for l in lines)
    flat = bs_json(server, "snapshot", "ls")["Snapshots"]
    assert {base, s1["SnapshotId"], c["SnapshotId"]} <= {s["SnapshotId"] for s in flat}

    # A snapshot that does not exist: the service's refusal, exit 1.
    p = bs(server, "snapshot", "copy", "snap-0123456789abcdef0", "--to", WEST, expect=1)
    assert "InvalidSnapshot.NotFound" in p.stderr


def test_stats_add_up_and_doctor(fresh_server, tmp_path):
    srv = fresh_server
    img = tmp_path / "a.raw"
    make_raw(img, 12 * MiB, seed=3)
    first = bs_json(srv, "volume", "import", str(img))
    bs_json(srv, "volume", "import", str(img))  # the same blocks again: deduplicated

    stats = bs_json(srv, "stats")
    assert stats["Scope"] == "store"
    (r,) = stats["Regions"]  # only the region that holds something
    assert r["Region"] == srv.region and r["Snapshots"] == 2 and r["Manifests"] == 2
    assert r["LogicalBytes"] == 2 * first["BlocksWritten"] * BLOCK
    assert r["Chunks"] == first["BlocksWritten"], "the second import stored nothing new"
    assert 0 < r["StoredBytes"] <= first["BlocksWritten"] * BLOCK
    assert r["ReductionRatio"] == pytest.approx(r["LogicalBytes"] / r["StoredBytes"])
    lineage = bs_json(srv, "snapshot", "ls")["Snapshots"]
    assert r["SnapshotBytesAdded"] == sum(s["StoredBytesAdded"] for s in lineage)
    text = bs(srv, "stats").stdout
    assert srv.region in text and "x" in text and "not run yet" in text

    # Another account sees its own share only.
    other = srv.create_account()
    mine = bs_json(srv, "stats", "--regions", srv.region, creds=other)
    assert mine["Scope"] == "account" and mine["Regions"][0]["Snapshots"] == 0
    assert "LogicalBytes" not in mine["Regions"][0]

    # doctor: a good setup passes.
    nbd = f"127.0.0.1:{srv.nbd_port}"
    d = bs_json(srv, "doctor", "--data-dir", str(srv.data_dir), "--nbd-endpoint", nbd)
    assert d["Ok"] is True
    checks = {c["Name"]: c for c in d["Checks"]}
    for name in ("endpoint", "credentials", "store", "nbd", "data dir permissions", "owner lock", "stores"):
        assert checks[name]["Status"] == "ok", checks[name]
    assert "held by the running server" in checks["owner lock"]["Detail"]

    # A bad endpoint: exit 3, saying what to do.
    env = env_for(srv, AWS_ENDPOINT_URL=f"http://127.0.0.1:{free_port()}")
    p = bs(srv, "doctor", "--nbd-endpoint", nbd, env=env, expect=3)
    assert "FAIL] endpoint" in p.stdout and "blocksnap serve" in p.stdout
    p = bs(srv, "stats", env=env, expect=3)
    assert "cannot reach" in p.stderr
    # Wrong credentials: exit 4.
    env = env_for(srv, AWS_SECRET_ACCESS_KEY="wrong-secret")
    p = bs(srv, "doctor", "--nbd-endpoint", nbd, env=env, expect=4)
    assert "FAIL] credentials" in p.stdout and "AWS_SECRET_ACCESS_KEY" in p.stdout
    bs(srv, "snapshot", "ls", env=env, expect=4)
    # No credentials at all: exit 4 too.
    env = {k: v for k, v in env_for(srv).items() if k not in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")}
    p = bs(srv, "stats", env=env, expect=4)
    assert "AWS_ACCESS_KEY_ID" in p.stderr
    # A data dir others may read: exit 5 with the fix.
    os.chmod(srv.data_dir, 0o755)
    try:
        p = bs(srv, "doctor", "--data-dir", str(srv.data_dir), "--nbd-endpoint", nbd, expect=5)
        assert f"chmod 700 {srv.data_dir}" in p.stdout
    finally:
        os.chmod(srv.data_dir, 0o700)
    # The NBD listener absent: exit 3.
    p = bs(srv, "doctor", "--nbd-endpoint", f"127.0.0.1:{free_port()}", expect=3)
    assert "FAIL] nbd" in p.stdout

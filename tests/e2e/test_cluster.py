"""Several nodes (ARCHITECTURE.md, "Several nodes"): three `blocksnap serve --node-id N` on 127.0.0.1-3,
one PostgreSQL catalog, one S3 server for every region's snapshots. One node leads, the others
forward; kill -9 of the leader loses no acknowledged call and another node takes over (its
pending copies too: the copy is then restored and read back over NBD where DescribeNbdEndpoints says).

Needs BLOCKSNAP_TEST_PG (tests/run starts a throwaway cluster) and moto_server (its S3 mode, started
here: the copy test freezes it). Runs in both e2e passes (the tests choose their catalog themselves);
they fail, never skip, when either is missing."""
from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from conftest import (IS_MOTO, ROOT_ACCESS_KEY, ROOT_SECRET_KEY, Creds, _tail, blocksnap_bin, free_port,
                      pg_database, stop_process, wait_port)
from nbd import credentials
from test_nbd_endpoints import with_identity
from test_nbd_security import nbd_api

pytestmark = pytest.mark.skipif(IS_MOTO, reason="blocksnap's own clustering")

SRC, DST = "us-east-1", "us-west-2"


@pytest.fixture(scope="module")
def s3_server():
    """This module's own S3 server (not tests/run's shared one: a test freezes it)."""
    port = free_port()
    moto = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_port("127.0.0.1", port, moto, Path(os.devnull), timeout=30)
        yield moto, f"http://127.0.0.1:{port}"
    finally:
        os.killpg(moto.pid, signal.SIGCONT)
        os.killpg(moto.pid, signal.SIGKILL)
        moto.wait(timeout=10)


@pytest.fixture
def s3_endpoint(s3_server):
    return s3_server[1]


class Node:
    def __init__(self, n: int, workdir: Path, url: str, config: Path, env: dict):
        self.n, self.host = n, f"127.0.0.{n}"
        self.port, self.nbd_port = free_port(), free_port()
        self.workdir = workdir / f"node{n}"
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.url, self.config, self.env = url, config, env
        self.proc: subprocess.Popen | None = None
        self.starts = 0
        self.creds, self.region = Creds(ROOT_ACCESS_KEY, ROOT_SECRET_KEY), SRC

    @property
    def endpoint(self) -> str:
        return f"http://{self.host}:{self.port}/"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"node-{self.starts}.log"

    def start(self, wait_for: str = "cluster node up", extra: tuple = ()) -> None:
        self.starts += 1
        cmd = [str(blocksnap_bin()), "serve", "--node-id", str(self.n), "--data-dir", str(self.workdir / "data"),
               "--catalog", self.url, "--config", str(self.config), "--listen", f"{self.host}:{self.port}",
               "--nbd-listen", f"{self.host}:{self.nbd_port}", "--metrics-listen", "off", *extra]
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=ROOT_ACCESS_KEY,
                   BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=ROOT_SECRET_KEY, RUST_LOG="info", **self.env)
        env.pop("BLOCKSNAP_CATALOG", None)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                         start_new_session=True)
        self.wait_log(wait_for)

    def wait_log(self, text: str, timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while text not in _tail(self.log_path, 1 << 20):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"node {self.n}: no {text!r}; log:\n" + _tail(self.log_path))
            time.sleep(0.02)

    def leads(self) -> bool:
        return "leading the cluster" in _tail(self.log_path, 1 << 20)

    def kill(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)
        self.proc = None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def client(self, service: str = "ec2", region: str = SRC):
        return boto3.client(service, endpoint_url=self.endpoint, region_name=region,
                            aws_access_key_id=ROOT_ACCESS_KEY, aws_secret_access_key=ROOT_SECRET_KEY,
                            config=Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=2,
                                          read_timeout=30))


def store_config(path: Path, s3: str, bucket: str) -> Path:
    boto3.client("s3", endpoint_url=s3, region_name=SRC, aws_access_key_id="k",
                 aws_secret_access_key="s").create_bucket(Bucket=bucket)
    text = f'regions = ["{SRC}", "{DST}"]\n'
    for kind in ("stores", "archives"):
        for region in (SRC, DST):
            text += (f'[{kind}.{region}]\nbucket = "{bucket}"\nprefix = "{kind}/{region}"\nendpoint = "{s3}"\n'
                     f'region = "{SRC}"\naccess_key_id = "k"\nsecret_access_key = "s"\nallow_http = true\n')
    path.write_text(text)
    return path


@pytest.fixture
def cluster(tmp_path, s3_endpoint):
    url = pg_database()
    config = store_config(tmp_path / "cluster.toml", s3_endpoint, "cluster-" + secrets.token_hex(6))
    nodes = [Node(n, tmp_path, url, config, {}) for n in (1, 2, 3)]
    try:
        nodes[0].start(wait_for="blocksnap serving")
        for node in nodes[1:]:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def leader_of(nodes: list[Node]) -> Node:
    leaders = [n for n in nodes if n.proc is not None and n.leads()]
    assert len(leaders) == 1, [n.n for n in leaders]
    return leaders[0]


def wait_new_leader(nodes: list[Node], timeout: float = 30) -> Node:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [n for n in nodes if n.proc is not None]
        leaders = [n for n in alive if n.leads()]
        if leaders:
            return leaders[0]
        time.sleep(0.05)
    raise AssertionError("no node took over; logs:\n" + "\n".join(_tail(n.log_path, 2000) for n in nodes if n.proc))


def test_refuses_what_several_nodes_cannot_share(tmp_path, s3_endpoint):
    def serve(*args) -> subprocess.CompletedProcess:
        cmd = [str(blocksnap_bin()), "serve", "--node-id", "1", "--data-dir", str(tmp_path / "d"),
               "--listen", f"127.0.0.1:{free_port()}", "--nbd-listen", f"127.0.0.1:{free_port()}",
               "--metrics-listen", "off", *args]
        env = {k: v for k, v in os.environ.items() if k != "BLOCKSNAP_CATALOG"}
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)

    # Local snapshot stores (the default) cannot be read by the other nodes.
    local = tmp_path / "local.toml"
    local.write_text(f'regions = ["{SRC}"]\n')
    r = serve("--catalog", pg_database(), "--config", str(local))
    assert r.returncode != 0 and "need shared snapshot storage" in r.stderr and SRC in r.stderr, r.stderr
    # A SQLite catalog belongs to one machine.
    shared = store_config(tmp_path / "shared.toml", s3_endpoint, "refuse-" + secrets.token_hex(6))
    r = serve("--catalog", "sqlite", "--config", str(shared))
    assert r.returncode != 0 and "needs a PostgreSQL catalog" in r.stderr, r.stderr
    assert not (tmp_path / "d" / "catalog.db").exists()


def test_any_node_answers_and_a_killed_leader_loses_no_acknowledged_call(cluster):
    n1, n2, n3 = cluster
    assert leader_of(cluster) is n1
    # Every node answers, with boto3 and the AWS CLI: followers forward to the leader unchanged.
    vid = n2.client().create_volume(AvailabilityZone=f"{SRC}a", Size=1)["VolumeId"]
    for node in cluster:
        vols = node.client().describe_volumes(VolumeIds=[vid])["Volumes"]
        assert [v["VolumeId"] for v in vols] == [vid]
    cli = subprocess.run(["aws", "ec2", "describe-volumes", "--volume-ids", vid, "--endpoint-url", n3.endpoint,
                          "--region", SRC, "--output", "json"], capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, AWS_ACCESS_KEY_ID=ROOT_ACCESS_KEY,
                                  AWS_SECRET_ACCESS_KEY=ROOT_SECRET_KEY))
    assert cli.returncode == 0 and vid in cli.stdout, cli.stderr
    # `admin create-account` on a follower's data dir: the account's key works through any node.
    out = subprocess.run([str(blocksnap_bin()), "admin", "create-account", "--data-dir", str(n3.workdir / "data")],
                         capture_output=True, text=True, timeout=60,
                         env={k: v for k, v in os.environ.items() if k != "BLOCKSNAP_CATALOG"})
    assert out.returncode == 0, out.stderr
    keys = dict(l.removeprefix("export ").split("=", 1) for l in out.stdout.splitlines() if l.startswith("export"))
    other = boto3.client("ec2", endpoint_url=n2.endpoint, region_name=SRC, aws_access_key_id=keys["AWS_ACCESS_KEY_ID"],
                         aws_secret_access_key=keys["AWS_SECRET_ACCESS_KEY"], config=Config(retries={"max_attempts": 1}))
    assert other.describe_volumes()["Volumes"] == []  # isolated from the root account's volumes
    # The JSON protocols too (KMS, Lightsail).
    assert "Keys" in n2.client("kms").list_keys()
    assert "disks" in n3.client("lightsail").get_disks()
    # A bad signature is refused by the leader, through the follower.
    bad = boto3.client("ec2", endpoint_url=n3.endpoint, region_name=SRC, aws_access_key_id=ROOT_ACCESS_KEY,
                       aws_secret_access_key="wrong", config=Config(retries={"max_attempts": 1}))
    with pytest.raises(ClientError) as e:
        bad.describe_volumes()
    assert e.value.response["Error"]["Code"] == "AuthFailure"

    # A stream of CreateVolume calls through both followers; kill -9 the leader in the middle.
    acked: list[str] = []
    errors: list[str] = []
    stop = threading.Event()
    killed_at: list[float] = []
    back_after: list[float] = []

    def stream(node: Node) -> None:
        ec2 = node.client()
        while not stop.is_set():
            started = time.monotonic()
            try:
                v = ec2.create_volume(AvailabilityZone=f"{SRC}a", Size=1)["VolumeId"]
                acked.append(v)
                # Service is back when a call sent after the kill is answered.
                if killed_at and started > killed_at[0] and not back_after:
                    back_after.append(time.monotonic() - killed_at[0])
            except (ClientError, BotoCoreError) as exc:
                errors.append(str(exc))

    threads = [threading.Thread(target=stream, args=(n,)) for n in (n2, n3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        before = len(acked)
        killed_at.append(time.monotonic())
        n1.kill()
        deadline = time.monotonic() + 20
        while not back_after and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=60)
    assert before > 0, errors[:5]
    assert back_after, f"service did not come back; errors: {errors[-5:]}"
    print(f"\ntakeover: CreateVolume answered again {back_after[0]:.2f} s after kill -9 of the leader "
          f"({len(acked)} acknowledged, {len(errors)} refused during the takeover)")
    # While nobody led, calls were refused as unavailable (nothing else).
    assert all("ServiceUnavailable" in e or "could not be" in e or "Connection" in e for e in errors), errors[:5]
    new = leader_of(cluster)
    assert new in (n2, n3)
    listed = set()
    for page in new.client().get_paginator("describe_volumes").paginate():
        listed.update(v["VolumeId"] for v in page["Volumes"])
    missing = set(acked + [vid]) - listed
    assert not missing, f"acknowledged but lost: {sorted(missing)}"

    # The old leader comes back as a follower and answers through the new leader.
    n1.start()
    assert not n1.leads()
    assert vid in {v["VolumeId"] for v in n1.client().describe_volumes(VolumeIds=[vid])["Volumes"]}

    # Placement (v1): volumes live on the node that led when they were made. Node 1's volumes are
    # unavailable while another node leads, as an EBS volume on an impaired server: impaired status,
    # clear refusals naming the node; new volumes live on the new leader and are fine.
    ec2 = n1.client()
    status = ec2.describe_volume_status(VolumeIds=[vid])["VolumeStatuses"][0]["VolumeStatus"]
    assert status["Status"] == "impaired", status
    assert {"Name": "io-enabled", "Status": "failed"} in status["Details"], status
    inst = ec2.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                             Placement={"AvailabilityZone": f"{SRC}a"})["Instances"][0]["InstanceId"]
    for call in (lambda: ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device="/dev/sdf"),
                 lambda: ec2.create_snapshot(VolumeId=vid)):
        with pytest.raises(ClientError) as e:
            call()
        assert e.value.response["Error"]["Code"] == "IncorrectState"
        assert "lives on node 1" in e.value.response["Error"]["Message"], e.value.response
    here = ec2.create_volume(AvailabilityZone=f"{SRC}a", Size=1)["VolumeId"]
    status = ec2.describe_volume_status(VolumeIds=[here])["VolumeStatuses"][0]["VolumeStatus"]
    assert status["Status"] == "ok", status
    ec2.get_waiter("volume_available").wait(VolumeIds=[here], WaiterConfig={"Delay": 0.2, "MaxAttempts": 50})
    ec2.attach_volume(VolumeId=here, InstanceId=inst, Device="/dev/sdf")
    # DescribeNbdEndpoints names each volume's node and why node 1's cannot be opened now.
    status, doc = nbd_api(n1, "DescribeNbdEndpoints", {"VolumeIds": [vid, here]})
    assert status == 200, doc
    far, near = doc["Exports"]
    assert far["Node"] == "1" and far["Available"] is False and "lives on node 1" in far["Reason"], far
    assert near["Node"] == str(new.n) and near["Available"] is True, near
    # Deleting an unavailable volume is allowed (its node drops the orphan bytes when it next starts).
    ec2.delete_volume(VolumeId=acked[0])


def test_a_copy_in_flight_when_the_leader_dies_is_finished_by_another_node(cluster, s3_server):
    n1, n2, n3 = cluster
    ebs = n2.client("ebs")
    blocks = {i: secrets.token_bytes(512 * 1024) for i in (0, 3, 7)}
    sid = ebs.start_snapshot(VolumeSize=1, Description="cluster copy source")["SnapshotId"]
    for i, data in blocks.items():
        ebs.put_snapshot_block(SnapshotId=sid, BlockIndex=i, BlockData=data, DataLength=len(data),
                               Checksum=base64.b64encode(hashlib.sha256(data).digest()).decode(),
                               ChecksumAlgorithm="SHA256")
    ebs.complete_snapshot(SnapshotId=sid, ChangedBlocksCount=len(blocks))
    ec2 = n3.client()
    deadline = time.monotonic() + 30
    while ec2.describe_snapshots(SnapshotIds=[sid])["Snapshots"][0]["State"] != "completed":
        assert time.monotonic() < deadline, "the source snapshot did not complete"
        time.sleep(0.1)
    # Hold the copy in flight: the S3 server is frozen while the copy starts and the leader dies.
    moto = s3_server[0]
    os.killpg(moto.pid, signal.SIGSTOP)
    try:
        copy = n3.client(region=DST).copy_snapshot(SourceRegion=SRC, SourceSnapshotId=sid)["SnapshotId"]
        state = n3.client(region=DST).describe_snapshots(SnapshotIds=[copy])["Snapshots"][0]["State"]
        assert state == "pending"
        n1.kill()
    finally:
        os.killpg(moto.pid, signal.SIGCONT)
    new = wait_new_leader(cluster)
    dst = new.client(region=DST)
    deadline = time.monotonic() + 30
    while (s := dst.describe_snapshots(SnapshotIds=[copy])["Snapshots"][0])["State"] != "completed":
        assert s["State"] == "pending" and time.monotonic() < deadline, s
        time.sleep(0.1)
    # The copy's bytes are the source's, read back from any node.
    out = n3.client("ebs", region=DST)
    listed = out.list_snapshot_blocks(SnapshotId=copy)["Blocks"]
    assert sorted(b["BlockIndex"] for b in listed) == sorted(blocks)
    for b in listed:
        got = out.get_snapshot_block(SnapshotId=copy, BlockIndex=b["BlockIndex"], BlockToken=b["BlockToken"])
        assert got["BlockData"].read() == blocks[b["BlockIndex"]]
    # Restored on the new leader through a follower, read back over NBD at the endpoint
    # DescribeNbdEndpoints names: the bytes are the source's.
    dst3 = n3.client(region=DST)
    vol = dst3.create_volume(SnapshotId=copy, AvailabilityZone=f"{DST}a")["VolumeId"]
    dst3.get_waiter("volume_available").wait(VolumeIds=[vol], WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    inst = dst3.run_instances(ImageId="ami-0b5e4c3d2a1f00001", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                              Placement={"AvailabilityZone": f"{DST}a"})["Instances"][0]["InstanceId"]
    dst3.attach_volume(VolumeId=vol, InstanceId=inst, Device="/dev/sdf")
    dst3.get_waiter("volume_in_use").wait(VolumeIds=[vol], WaiterConfig={"Delay": 0.2, "MaxAttempts": 100})
    at_dst = SimpleNamespace(endpoint=n2.endpoint, creds=n2.creds, region=DST, workdir=n2.workdir)
    k = credentials(at_dst)
    status, doc = nbd_api(at_dst, "DescribeNbdEndpoints", {"VolumeIds": [vol]})
    assert status == 200, doc
    x = doc["Exports"][0]
    assert x["Available"] and x["Node"] == str(new.n) and x["Endpoint"]["Host"] == new.host, x
    image = n2.workdir / "restored.raw"
    subprocess.run(["nbdcopy", with_identity(x["Uri"], k), str(image)], check=True, timeout=120)
    with open(image, "rb") as f:
        for i, data in blocks.items():
            f.seek(i * 512 * 1024)
            assert f.read(len(data)) == data, f"block {i} differs after the restore"
    image.unlink()
    # A leader stopped with SIGTERM hands over: the last node leads and has it all.
    new.stop()
    last = wait_new_leader(cluster)
    assert last is not new and last is not n1
    assert last.client(region=DST).describe_snapshots(SnapshotIds=[copy])["Snapshots"][0]["State"] == "completed"


def test_a_single_node_becomes_node_1_with_its_volumes(tmp_path, s3_endpoint):
    url = pg_database()
    config = store_config(tmp_path / "c.toml", s3_endpoint, "single-" + secrets.token_hex(6))
    node = Node(1, tmp_path, url, config, {})
    # First alone (no --node-id): a volume whose bytes are in this data dir.
    env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=ROOT_ACCESS_KEY, BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=ROOT_SECRET_KEY)
    env.pop("BLOCKSNAP_CATALOG", None)
    cmd = [str(blocksnap_bin()), "serve", "--data-dir", str(node.workdir / "data"), "--catalog", url,
           "--config", str(config), "--listen", f"{node.host}:{node.port}", "--nbd-listen",
           f"{node.host}:{node.nbd_port}", "--metrics-listen", "off"]
    with open(node.workdir / "single.log", "wb") as log:
        single = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while "blocksnap serving" not in _tail(node.workdir / "single.log"):
            assert single.poll() is None and time.monotonic() < deadline, _tail(node.workdir / "single.log")
            time.sleep(0.05)
        vid = node.client().create_volume(AvailabilityZone=f"{SRC}a", Size=1)["VolumeId"]
    finally:
        single.send_signal(signal.SIGTERM)
        single.wait(timeout=20)
    # Then as node 1 of a cluster: it adopts the volume, which stays available.
    try:
        node.start(wait_for="blocksnap serving")
        assert "volumes=1" in _tail(node.log_path), _tail(node.log_path)
        status = node.client().describe_volume_status(VolumeIds=[vid])["VolumeStatuses"][0]["VolumeStatus"]
        assert status["Status"] == "ok", status
    finally:
        node.stop()
    assert "node=1" in (node.workdir / "data" / "catalog").read_text()
    # Its dir is node 1's from now on: alone again is refused.
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
    assert r.returncode != 0 and "is node 1 of a cluster" in r.stderr, r.stderr


def test_a_second_process_with_the_same_node_id_is_refused(tmp_path, s3_endpoint):
    """Two processes given one --node-id and two data dirs: the second is refused (the node's row names
    the first's data dir, whose heartbeat is fresh), leaves its data dir unbound, and the first keeps
    serving its volume. --replace-node does not take over a node that is alive."""
    url = pg_database()
    config = store_config(tmp_path / "c.toml", s3_endpoint, "dup-" + secrets.token_hex(6))
    node = Node(1, tmp_path, url, config, {})
    try:
        node.start(wait_for="blocksnap serving")
        vid = node.client().create_volume(AvailabilityZone=f"{SRC}a", Size=1)["VolumeId"]
        first_dir_id = next(line[4:] for line in (node.workdir / "data" / "catalog").read_text().splitlines()
                            if line.startswith("dir="))
        other = tmp_path / "other" / "data"
        env = dict(os.environ, BLOCKSNAP_ROOT_ACCESS_KEY_ID=ROOT_ACCESS_KEY,
                   BLOCKSNAP_ROOT_SECRET_ACCESS_KEY=ROOT_SECRET_KEY)
        env.pop("BLOCKSNAP_CATALOG", None)
        for extra, says in (([], "give every process its own --node-id"),
                            (["--replace-node"], "--replace-node only takes over a node silent for")):
            cmd = [str(blocksnap_bin()), "serve", "--node-id", "1", "--data-dir", str(other), "--catalog", url,
                   "--config", str(config), "--listen", f"127.0.0.1:{free_port()}", "--nbd-listen",
                   f"127.0.0.1:{free_port()}", "--metrics-listen", "off", *extra]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env)
            out = r.stdout + r.stderr
            assert r.returncode != 0, out
            assert "node 1 is running in another process" in out and says in out and first_dir_id in out, out
            assert not (other / "catalog").exists(), "a refused node left its data dir bound to node 1"
        assert node.proc.poll() is None
        status = node.client().describe_volume_status(VolumeIds=[vid])["VolumeStatuses"][0]["VolumeStatus"]
        assert status["Status"] == "ok", status

        # Node 1's disk is lost: it starts again on a new data dir with --replace-node once its heartbeat
        # is stale (shortened for the test). Its volume's bytes were on the lost disk: impaired, not
        # snapshotted, deletable; the new dir's own volumes are fine.
        node.kill()
        shutil.rmtree(node.workdir / "data")
        node.env = {"BLOCKSNAP_NODE_STALE_MS": "1000"}
        time.sleep(1.5)
        node.start(wait_for="blocksnap serving", extra=("--replace-node",))
        ec2 = node.client()
        status = ec2.describe_volume_status(VolumeIds=[vid])["VolumeStatuses"][0]["VolumeStatus"]
        assert status["Status"] == "impaired", status
        assert {"Name": "io-enabled", "Status": "failed"} in status["Details"], status
        with pytest.raises(ClientError) as e:
            ec2.create_snapshot(VolumeId=vid)
        assert e.value.response["Error"]["Code"] == "IncorrectState", e.value.response
        assert f"The volume '{vid}' is lost" in e.value.response["Error"]["Message"], e.value.response
        fresh = ec2.create_volume(AvailabilityZone=f"{SRC}a", Size=1)["VolumeId"]
        ec2.get_waiter("volume_available").wait(VolumeIds=[fresh], WaiterConfig={"Delay": 1})
        status = ec2.describe_volume_status(VolumeIds=[fresh])["VolumeStatuses"][0]["VolumeStatus"]
        assert status["Status"] == "ok", status
        ec2.delete_volume(VolumeId=vid)
    finally:
        node.stop()

"""End-to-end fixtures: start the real `blocksnap` binary (or `moto_server`) and drive it with boto3,
raw SigV4-signed HTTP and the real `aws` CLI.

Environment:
  BLOCKSNAP_BIN          path of the binary (default: target/debug/blocksnap, relative to the repo root)
  BLOCKSNAP_E2E_TARGET   "blocksnap" (default) or "moto" (runs the suite against `moto_server` to check
                         the tests themselves; tests marked blocksnap_only / moto_deviates are skipped)
  BLOCKSNAP_E2E_REGION   region used by the tests (default us-east-1)
  BLOCKSNAP_E2E_RUN_DEVIATING=1  with the moto target, run the moto_deviates tests too (to list where
                         moto differs from AWS)
  BLOCKSNAP_E2E_CATALOG  "sqlite" (default) or "postgres": every server the fixtures start gets its own
                         new database on the PostgreSQL server BLOCKSNAP_TEST_PG names (tests/run starts a
                         throwaway one); its data dir records it, so admin commands and restarts find it.
                         Tests that start `blocksnap serve` by hand on a new dir use SQLite.
  BLOCKSNAP_E2E_STORE    "local" (default: snapshot stores and archive tiers under the data dir) or "s3":
                         every server the fixtures start keeps every region's snapshot store and archive
                         tier in a new bucket of its own on the S3 server BLOCKSNAP_S3_ENDPOINT names
                         (tests/run starts moto_server), keys laid out as the data dir's
                         (`snapshots/<region>/…`, `archive/<region>/…`). Tests look into stores through
                         `Server.store_objects` / `read_store_object` / `write_store_object`, which read either.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from unittest import mock
from urllib.parse import urlencode

import boto3
import botocore.auth
import pytest
import requests
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials

# Never let a developer's ~/.aws leak into the tests.
os.environ["AWS_CONFIG_FILE"] = os.devnull
os.environ["AWS_SHARED_CREDENTIALS_FILE"] = os.devnull
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"
for _k in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
           "AWS_ENDPOINT_URL_EC2"):
    os.environ.pop(_k, None)

REPO_ROOT = Path(__file__).resolve().parents[2]
TARGET = os.environ.get("BLOCKSNAP_E2E_TARGET", "blocksnap").lower()
REGION = os.environ.get("BLOCKSNAP_E2E_REGION", "us-east-1")
IS_MOTO = TARGET == "moto"
CATALOG = os.environ.get("BLOCKSNAP_E2E_CATALOG", "sqlite").lower()
if CATALOG not in ("sqlite", "postgres"):
    raise RuntimeError(f"BLOCKSNAP_E2E_CATALOG={CATALOG!r}: expected sqlite or postgres")
STORE = os.environ.get("BLOCKSNAP_E2E_STORE", "local").lower()
if STORE not in ("local", "s3"):
    raise RuntimeError(f"BLOCKSNAP_E2E_STORE={STORE!r}: expected local or s3")
EC2_VERSION = "2016-11-15"

ROOT_ACCESS_KEY = "AKIAE2ETESTROOT00001"
ROOT_SECRET_KEY = "e2e-root-secret-" + secrets.token_hex(12)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(host: str, port: int, proc: subprocess.Popen, log: Path, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before listening; log:\n"
                               + _tail(log))
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not listen on {host}:{port} within {timeout}s; log:\n" + _tail(log))


def _tail(path: Path, n: int = 4000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return "<no log>"


def pg_database() -> str:
    """The URL of a new, empty database on the server BLOCKSNAP_TEST_PG names (same user and host)."""
    base = os.environ.get("BLOCKSNAP_TEST_PG")
    if not base:
        raise RuntimeError("BLOCKSNAP_E2E_CATALOG=postgres needs BLOCKSNAP_TEST_PG, a PostgreSQL URL whose user "
                           "may create databases (tests/run starts a throwaway cluster: see tests/pg.sh)")
    name = "e2e_" + secrets.token_hex(8)
    psql(base, f"CREATE DATABASE {name}")
    head, sep, query = base.partition("?")
    return head[:head.rindex("/")] + "/" + name + sep + query


def psql(url: str, sql: str) -> str:
    out = subprocess.run(["psql", url, "-XAtqc", sql], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, f"psql {sql!r}: {out.stderr}"
    return out.stdout


S3_KEY, S3_SECRET = "e2e-s3", "e2e-s3-secret"


def s3_client():
    """A boto3 S3 client of the S3 server BLOCKSNAP_S3_ENDPOINT names (BLOCKSNAP_E2E_STORE=s3)."""
    endpoint = os.environ.get("BLOCKSNAP_S3_ENDPOINT")
    if not endpoint:
        raise RuntimeError("BLOCKSNAP_E2E_STORE=s3 needs BLOCKSNAP_S3_ENDPOINT, the URL of an S3 server "
                           "(tests/run starts moto_server)")
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id=S3_KEY,
                        aws_secret_access_key=S3_SECRET, config=Config(retries={"max_attempts": 3}))


def served_regions() -> list[str]:
    """Every region blocksnap serves by default (its one list: crates/engine/src/regions.rs)."""
    text = (REPO_ROOT / "crates/engine/src/regions.rs").read_text()
    body = text.split("pub const COMMERCIAL_REGIONS", 1)[1].split("];", 1)[0]
    regions = re.findall(r'"([a-z0-9-]+)"', body)
    assert "us-east-1" in regions, "crates/engine/src/regions.rs: COMMERCIAL_REGIONS not found"
    return regions


def s3_store_config(bucket: str) -> str:
    """A config file putting every region's snapshot store and archive tier in `bucket`."""
    common = (f'bucket = "{bucket}"\nendpoint = "{os.environ["BLOCKSNAP_S3_ENDPOINT"]}"\nregion = "us-east-1"\n'
              f'access_key_id = "{S3_KEY}"\nsecret_access_key = "{S3_SECRET}"\nallow_http = true\n')
    return "".join(f'[stores.{r}]\nprefix = "snapshots/{r}"\n{common}\n[archives.{r}]\nprefix = "archive/{r}"\n'
                   f'{common}\n' for r in served_regions())


def blocksnap_bin() -> Path:
    p = Path(os.environ.get("BLOCKSNAP_BIN", "target/debug/blocksnap"))
    if not p.is_absolute():
        p = REPO_ROOT / p
    return p


@dataclass
class Creds:
    access_key: str
    secret_key: str
    account_id: str | None = None


def stop_process(proc: subprocess.Popen) -> None:
    """SIGTERM (blocksnap's clean stop), then SIGKILL after 20 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Server:
    """One running target. `restart()` keeps the data dir (blocksnap only)."""
    kind: str
    workdir: Path
    port: int = 0
    nbd_port: int = 0
    metrics_port: int = 0
    proc: subprocess.Popen | None = None
    creds: Creds = field(default_factory=lambda: Creds(ROOT_ACCESS_KEY, ROOT_SECRET_KEY))
    region: str = REGION
    starts: int = 0
    extra_env: dict = field(default_factory=dict)
    extra_args: list = field(default_factory=list)
    # The bucket of its stores (BLOCKSNAP_E2E_STORE=s3), else None: they are under the data dir.
    bucket: str | None = None
    # Keep the stores under the data dir whatever BLOCKSNAP_E2E_STORE says (tests of the data dir itself).
    local_store: bool = False

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    @property
    def catalog_url(self) -> str | None:
        """The PostgreSQL catalog's URL (BLOCKSNAP_E2E_CATALOG=postgres), else None (SQLite)."""
        url = self.extra_env.get("BLOCKSNAP_CATALOG")
        return url if url and url != "sqlite" else None

    @property
    def log_path(self) -> Path:
        return self.workdir / f"server-{self.starts}.log"

    def start(self) -> None:
        self.starts += 1
        if not self.port:
            self.port = free_port()
            self.nbd_port = free_port()
            self.metrics_port = free_port()
        log = open(self.log_path, "wb")
        if self.kind == "moto":
            cmd = ["moto_server", "-H", "127.0.0.1", "-p", str(self.port)]
            env = dict(os.environ)
        else:
            binary = blocksnap_bin()
            if not binary.exists():
                raise RuntimeError(f"{binary} does not exist: build it first (cargo build) or set "
                                   "BLOCKSNAP_BIN, or run with BLOCKSNAP_E2E_TARGET=moto")
            self.data_dir.mkdir(parents=True, exist_ok=True)
            if CATALOG == "postgres" and "BLOCKSNAP_CATALOG" not in self.extra_env:
                self.extra_env["BLOCKSNAP_CATALOG"] = pg_database()
            if (STORE == "s3" and not self.local_store and "BLOCKSNAP_CONFIG" not in self.extra_env
                    and "--config" not in self.extra_args):
                self.bucket = "e2e-" + secrets.token_hex(8)
                s3_client().create_bucket(Bucket=self.bucket)
                _S3_SERVERS.append(self)
                cfg = self.workdir / "s3-stores.toml"
                cfg.write_text(s3_store_config(self.bucket))
                self.extra_env["BLOCKSNAP_CONFIG"] = str(cfg)
            cmd = [str(binary), "serve", "--data-dir", str(self.data_dir),
                   "--listen", f"127.0.0.1:{self.port}", "--nbd-listen", f"127.0.0.1:{self.nbd_port}",
                   "--metrics-listen", f"127.0.0.1:{self.metrics_port}",
                   *self.extra_args]
            env = dict(os.environ)
            env["BLOCKSNAP_ROOT_ACCESS_KEY_ID"] = self.creds.access_key
            env["BLOCKSNAP_ROOT_SECRET_ACCESS_KEY"] = self.creds.secret_key
            env.setdefault("RUST_LOG", "info")
            env.update(self.extra_env)
        self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     cwd=self.workdir, start_new_session=True)
        log.close()
        wait_port("127.0.0.1", self.port, self.proc, self.log_path)
        if self.kind != "moto":
            # blocksnap binds its ports before start-up work (so a port clash touches nothing): wait
            # until it serves, so a test never races its recovery.
            deadline = time.monotonic() + 60
            while "blocksnap serving" not in _tail(self.log_path, 1 << 20):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("server did not start; log:\n" + _tail(self.log_path))
                time.sleep(0.02)

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
        self.proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return _tail(self.log_path, 20000)

    # --- its stores ---------------------------------------------------------------------------
    def store_objects(self, prefix: str) -> dict[str, int]:
        """The objects of this server's snapshot stores and archive tiers under `prefix` (a data-dir
        relative path such as `snapshots/us-east-1/chunks` or `archive/us-east-1/snap-…`), by key
        (the same relative path) with their sizes: files under the data dir, or the bucket's objects."""
        prefix = prefix.strip("/")
        if self.bucket:
            out = {}
            for page in s3_client().get_paginator("list_objects_v2").paginate(Bucket=self.bucket,
                                                                               Prefix=prefix + "/"):
                out.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
            return out
        out = {}
        # The store removes empty directories and staging files while we walk: what vanished is gone.
        for root, _dirs, names in os.walk(self.data_dir / prefix):
            for n in names:
                try:
                    out[str((Path(root) / n).relative_to(self.data_dir))] = (Path(root) / n).stat().st_size
                except FileNotFoundError:
                    pass
        return out

    def read_store_object(self, key: str) -> bytes:
        if self.bucket:
            return s3_client().get_object(Bucket=self.bucket, Key=key)["Body"].read()
        return (self.data_dir / key).read_bytes()

    def write_store_object(self, key: str, data: bytes) -> None:
        if self.bucket:
            s3_client().put_object(Bucket=self.bucket, Key=key, Body=data)
        else:
            (self.data_dir / key).write_bytes(data)

    def drop_bucket(self) -> None:
        """Delete this stopped server's bucket and everything in it."""
        s3 = s3_client()
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys, "Quiet": True})
        s3.delete_bucket(Bucket=self.bucket)
        self.bucket = None

    def admin(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        """`blocksnap admin <args> --data-dir DATA` with this server's environment (its catalog and
        its stores' configuration)."""
        env = dict(os.environ)
        env.update(self.extra_env)
        return subprocess.run([str(blocksnap_bin()), "admin", *args, "--data-dir", str(self.data_dir)],
                              capture_output=True, text=True, timeout=timeout, cwd=self.workdir, env=env)

    # --- accounts -----------------------------------------------------------------------------
    def create_account(self) -> Creds:
        """A new isolated account via `blocksnap admin create-account` (blocksnap only)."""
        assert self.kind == "blocksnap"
        out = subprocess.run([str(blocksnap_bin()), "admin", "create-account", "--data-dir",
                              str(self.data_dir)], capture_output=True, text=True, timeout=60,
                             cwd=self.workdir)
        assert out.returncode == 0, f"create-account failed: {out.stderr}"
        lines = [l for l in out.stdout.splitlines() if l.strip()]
        assert len(lines) == 3, f"expected exactly three lines, got {out.stdout!r}"
        m0 = re.fullmatch(r"# account (\d{12})", lines[0].strip())
        m1 = re.fullmatch(r"export AWS_ACCESS_KEY_ID=(\S+)", lines[1].strip())
        m2 = re.fullmatch(r"export AWS_SECRET_ACCESS_KEY=(\S+)", lines[2].strip())
        assert m0 and m1 and m2, f"unexpected create-account output {out.stdout!r}"
        return Creds(m1.group(1), m2.group(1), m0.group(1))

    # --- clients ------------------------------------------------------------------------------
    def session(self, creds: Creds | None = None, region: str | None = None) -> boto3.session.Session:
        c = creds or self.creds
        return boto3.session.Session(aws_access_key_id=c.access_key, aws_secret_access_key=c.secret_key,
                                     region_name=region or self.region)

    def client(self, creds: Creds | None = None, region: str | None = None, **cfg):
        cfg.setdefault("retries", {"max_attempts": 1, "mode": "standard"})
        return self.session(creds, region).client("ec2", endpoint_url=self.endpoint,
                                                  config=Config(**cfg))

    def resource(self, creds: Creds | None = None, region: str | None = None):
        return self.session(creds, region).resource(
            "ec2", endpoint_url=self.endpoint,
            config=Config(retries={"max_attempts": 1, "mode": "standard"}))

    # --- raw signed HTTP ----------------------------------------------------------------------
    def raw(self, params: dict, *, method: str = "POST", creds: Creds | None = None, sign: bool = True,
            when: datetime.datetime | None = None, region: str | None = None,
            version: bool = True) -> "RawResponse":
        """Send an EC2 Query request signed with botocore's SigV4Auth (optionally at time `when`)."""
        c = creds or self.creds
        params = dict(params)
        if version:
            params.setdefault("Version", EC2_VERSION)
        body = urlencode(params)
        if method == "GET":
            req = AWSRequest(method="GET", url=self.endpoint + "?" + body)
        else:
            req = AWSRequest(method="POST", url=self.endpoint, data=body,
                             headers={"Content-Type": "application/x-www-form-urlencoded; charset=utf-8"})
        if sign:
            signer = botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "ec2",
                                             region or self.region)
            if when is not None:
                with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
                    signer.add_auth(req)
            else:
                signer.add_auth(req)
        prepared = req.prepare()
        r = requests.request(prepared.method, prepared.url, headers=dict(prepared.headers),
                             data=prepared.body, timeout=30)
        return RawResponse(r.status_code, r.text)

    def presigned_get(self, params: dict, *, creds: Creds | None = None, expires: int = 300,
                      when: datetime.datetime | None = None) -> "RawResponse":
        c = creds or self.creds
        params = dict(params)
        params.setdefault("Version", EC2_VERSION)
        req = AWSRequest(method="GET", url=self.endpoint + "?" + urlencode(params))
        signer = botocore.auth.SigV4QueryAuth(Credentials(c.access_key, c.secret_key), "ec2",
                                              self.region, expires=expires)
        if when is not None:
            with mock.patch.object(botocore.auth, "get_current_datetime", return_value=when):
                signer.add_auth(req)
        else:
            signer.add_auth(req)
        prepared = req.prepare()
        r = requests.get(prepared.url, headers=dict(prepared.headers), timeout=30)
        return RawResponse(r.status_code, r.text)

    # --- aws CLI ------------------------------------------------------------------------------
    def cli(self, *args: str, creds: Creds | None = None, check: bool = True, region: str | None = None):
        """Run the real `aws ec2 …` CLI against the target. Returns parsed JSON (or {} on empty output)
        when check=True, else the CompletedProcess."""
        c = creds or self.creds
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env.update({
            "AWS_ACCESS_KEY_ID": c.access_key,
            "AWS_SECRET_ACCESS_KEY": c.secret_key,
            "AWS_DEFAULT_REGION": region or self.region,
            "AWS_CONFIG_FILE": str(self.workdir / "no-aws-config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(self.workdir / "no-aws-credentials"),
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_PAGER": "",
            "AWS_MAX_ATTEMPTS": "1",
        })
        cmd = ["aws", "ec2", "--endpoint-url", self.endpoint, "--output", "json", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
        if not check:
            return out
        assert out.returncode == 0, f"{' '.join(cmd)} failed ({out.returncode}): {out.stderr}"
        return json.loads(out.stdout) if out.stdout.strip() else {}

    def advance_clock(self, seconds: int) -> float:
        """Move the server's clock forward by `seconds` (a server started with BLOCKSNAP_TEST_CLOCK=1,
        e.g. the `clock_server` fixture; root only). Answers the server's new time (epoch seconds)."""
        c = self.creds
        req = AWSRequest(method="POST", url=self.endpoint, data=json.dumps({"Seconds": seconds}).encode(),
                         headers={"X-Amz-Target": "BlocksnapTest_20261130.AdvanceClock",
                                  "Content-Type": "application/x-amz-json-1.1"})
        botocore.auth.SigV4Auth(Credentials(c.access_key, c.secret_key), "blocksnap", self.region).add_auth(req)
        p = req.prepare()
        r = requests.post(p.url, headers=dict(p.headers), data=p.body, timeout=30)
        assert r.status_code == 200, f"AdvanceClock: {r.status_code} {r.text}"
        return r.json()["Now"]


@dataclass
class RawResponse:
    status: int
    text: str

    @property
    def code(self) -> str | None:
        m = re.search(r"<Code>(.*?)</Code>", self.text, re.S)
        return m.group(1).strip() if m else None


# Servers with a bucket of their own (BLOCKSNAP_E2E_STORE=s3).
_S3_SERVERS: list[Server] = []


@pytest.fixture(autouse=True)
def _drop_stopped_buckets():
    """After each test (and its fixtures), the buckets of servers stopped for good go: the S3 server
    (in memory) holds only the live servers' snapshots."""
    yield
    for srv in [s for s in _S3_SERVERS if s.proc is None]:
        _S3_SERVERS.remove(srv)
        srv.drop_bucket()


def _make_server(tmp: Path, **env) -> Server:
    srv = Server(kind="moto" if IS_MOTO else "blocksnap", workdir=tmp, extra_env=env)
    srv.start()
    return srv


@pytest.fixture(scope="session")
def server(tmp_path_factory) -> Server:
    srv = _make_server(tmp_path_factory.mktemp("server"))
    yield srv
    srv.stop()


@pytest.fixture
def fresh_server(tmp_path) -> Server:
    """A server of its own with its own data dir (for restart and account tests)."""
    srv = _make_server(tmp_path)
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def clock_server(tmp_path_factory) -> Server:
    """A server of its own (one per test module) whose clock tests move forward with
    `clock_server.advance_clock(seconds)`: retention, expiry and schedules without waiting."""
    srv = _make_server(tmp_path_factory.mktemp("clock"), BLOCKSNAP_TEST_CLOCK="1")
    yield srv
    srv.stop()


@pytest.fixture
def gc_server(tmp_path) -> Server:
    """A server of its own that garbage-collects every second with no grace window."""
    srv = _make_server(tmp_path, BLOCKSNAP_GC_INTERVAL_SECS="1", BLOCKSNAP_GC_GRACE_SECS="0")
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def ec2(server):
    return server.client()


@pytest.fixture(scope="session")
def ec2r(server):
    return server.resource()


@pytest.fixture(scope="session")
def az(server) -> str:
    return f"{server.region}a"


@pytest.fixture(scope="session")
def az_b(server) -> str:
    return f"{server.region}b"


@pytest.fixture(scope="session")
def image(ec2) -> dict:
    images = ec2.describe_images()["Images"]
    assert images, "DescribeImages returned no built-in image"
    return images[0]


@pytest.fixture(scope="session")
def image_id(image) -> str:
    return image["ImageId"]


@pytest.fixture
def run_tag() -> str:
    """A value unique to one test; tag every resource with e2e-run=<value> and filter on it so tests
    sharing one server do not see each other's resources."""
    return "t-" + uuid.uuid4().hex[:12]


def tagspec(resource_type: str, run_tag: str, **extra) -> list[dict]:
    tags = [{"Key": "e2e-run", "Value": run_tag}] + [{"Key": k, "Value": v} for k, v in extra.items()]
    return [{"ResourceType": resource_type, "Tags": tags}]


def run_filter(run_tag: str) -> dict:
    return {"Name": "tag:e2e-run", "Values": [run_tag]}


def client_error_code(excinfo) -> str:
    return excinfo.value.response["Error"]["Code"]


def http_status(excinfo) -> int:
    return excinfo.value.response["ResponseMetadata"]["HTTPStatusCode"]


def wait_cfg(delay: float = 0.5, attempts: int = 120) -> dict:
    # botocore waiters accept an integer delay only; 1 s is the floor.
    return {"Delay": max(1, int(delay)), "MaxAttempts": attempts}


def poll(fn, pred, timeout: float = 30.0, interval: float = 0.2):
    """Call fn() until pred(result) is true; return the result (or fail with the last one)."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = fn()
        if pred(last):
            return last
        time.sleep(interval)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


def describe_volume(ec2, vid: str) -> dict:
    vols = ec2.describe_volumes(VolumeIds=[vid])["Volumes"]
    assert len(vols) == 1 and vols[0]["VolumeId"] == vid
    return vols[0]


def wait_volume_state(ec2, vid: str, state: str, timeout: float = 30.0) -> dict:
    return poll(lambda: describe_volume(ec2, vid), lambda v: v["State"] == state, timeout)


def wait_attached(ec2, vid: str, timeout: float = 30.0) -> dict:
    return poll(lambda: describe_volume(ec2, vid),
                lambda v: v["State"] == "in-use" and v["Attachments"]
                and v["Attachments"][0]["State"] == "attached", timeout)


def make_volume(ec2, az: str, run_tag: str, wait: bool = True, **kw) -> dict:
    kw.setdefault("Size", 1)
    specs = kw.pop("TagSpecifications", None) or tagspec("volume", run_tag)
    v = ec2.create_volume(AvailabilityZone=az, TagSpecifications=specs, **kw)
    if wait:
        return wait_volume_state(ec2, v["VolumeId"], "available")
    return v


def make_instance(ec2, image_id: str, az: str, run_tag: str, wait: bool = True, **kw) -> dict:
    kw.setdefault("MinCount", 1)
    kw.setdefault("MaxCount", 1)
    kw.setdefault("InstanceType", "t3.micro")
    r = ec2.run_instances(ImageId=image_id, Placement={"AvailabilityZone": az},
                          TagSpecifications=tagspec("instance", run_tag), **kw)
    inst = r["Instances"][0]
    if wait:
        ec2.get_waiter("instance_running").wait(InstanceIds=[inst["InstanceId"]], WaiterConfig=wait_cfg())
    return inst


def attached_volume(ec2, az: str, run_tag: str, image_id: str = "ami-0b5e4c3d2a1f00001",
                    device: str = "/dev/sdf") -> tuple[str, str]:
    """A running instance with a new 1 GiB volume attached: (instance id, volume id)."""
    inst = make_instance(ec2, image_id, az, run_tag)["InstanceId"]
    vid = make_volume(ec2, az, run_tag)["VolumeId"]
    ec2.attach_volume(VolumeId=vid, InstanceId=inst, Device=device)
    wait_attached(ec2, vid)
    return inst, vid


def pytest_collection_modifyitems(config, items):
    if not IS_MOTO:
        return
    skip_b = pytest.mark.skip(reason="needs blocksnap (moto does not implement this)")
    skip_m = pytest.mark.skip(reason="moto deviates from AWS here; the test follows AWS")
    for item in items:
        if "blocksnap_only" in item.keywords:
            item.add_marker(skip_b)
        elif "moto_deviates" in item.keywords and not os.environ.get("BLOCKSNAP_E2E_RUN_DEVIATING"):
            item.add_marker(skip_m)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failure, attach the tail of the server's log to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.when == "call" and rep.failed:
        for name in ("fresh_server", "server"):
            srv = item.funcargs.get(name)
            if isinstance(srv, Server):
                rep.sections.append((f"{srv.kind} log ({srv.log_path})", _tail(srv.log_path, 3000)))
                break

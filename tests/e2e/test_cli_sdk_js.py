"""The AWS SDK for JavaScript v3 (interop/js/scenario.mjs) against the service: its own Query and JSON
serialisers, SigV4 signer, CopySnapshot presigner, paginators and waiters. `tests/run` installs the
SDK from interop/js/package-lock.json (`npm ci`); this test does so itself when it is missing."""
from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from conftest import REPO_ROOT

pytestmark = pytest.mark.blocksnap_only

JS = REPO_ROOT / "interop" / "js"
STEPS = 9


def npm_ci() -> None:
    out = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=JS,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, f"npm ci failed: {out.stderr}"


def test_js_sdk_v3_scenario(server):
    assert shutil.which("node") and shutil.which("npm"), "node and npm are needed (tests/run installs them)"
    if not (JS / "node_modules" / "@aws-sdk" / "client-ec2").is_dir():
        npm_ci()
    server.client().describe_regions()  # serving before `admin create-account` opens the catalog
    creds = server.create_account()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"BLOCKSNAP_ENDPOINT": server.endpoint.rstrip("/"), "AWS_ACCESS_KEY_ID": creds.access_key,
                "AWS_SECRET_ACCESS_KEY": creds.secret_key, "AWS_REGION": server.region,
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true"})
    out = subprocess.run(["node", "--no-warnings", "scenario.mjs"], cwd=JS, env=env, capture_output=True,
                         text=True, timeout=600)
    lines = out.stdout.splitlines()
    assert out.returncode == 0, f"scenario failed:\n{out.stdout}\n{out.stderr}"
    ok = [line for line in lines if line.startswith("ok   ")]
    assert len(ok) == STEPS and not [line for line in lines if line.startswith("FAIL")], out.stdout
    assert any("CopySnapshot" in line for line in ok)

"""The README's shell examples run against a live server: a README that drifts from the binary fails.

Every fenced `sh` block is read; `export` lines set the environment (`…` stands for the root
credentials), and every `aws … --endpoint-url http://127.0.0.1:4566 …` line runs through the real AWS CLI
(the first with the `aws` executable, the rest in-process: cli_inproc) against the test server, in
order, with `vol-…`, `i-…` and `snap-…` replaced by the first such id an earlier command printed."""
from __future__ import annotations

import os
import re
import shlex
import subprocess

import pytest

import cli_inproc
from conftest import REPO_ROOT, poll, wait_cfg

pytestmark = pytest.mark.blocksnap_only

README_ENDPOINT = "http://127.0.0.1:4566"
PLACEHOLDERS = {"vol-…": r"(?<![\w-])vol-[0-9a-f]{17}", "i-…": r"(?<![\w-])i-[0-9a-f]{17}",
                "snap-…": r"(?<![\w-])snap-[0-9a-f]{17}"}


def readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text()
    lines = []
    for block in re.findall(r"^```(?:sh|bash|shell)\n(.*?)^```", text, re.S | re.M):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            line = line.split("  #")[0].strip()
            if line.startswith(("aws ", "export ")):
                lines.append(line)
    return lines


def test_readme_has_runnable_examples():
    cmds = [c for c in readme_commands() if c.startswith("aws ")]
    assert len(cmds) >= 8, cmds
    for c in cmds:
        assert f"--endpoint-url {README_ENDPOINT}" in c, f"README command without the endpoint: {c}"
    services = {shlex.split(c)[1] for c in cmds}
    assert {"ec2", "lightsail", "kms"} <= services, services


def test_readme_commands_run(server):
    server.client().describe_regions()  # serving before `admin create-account` opens the catalog
    creds = server.create_account()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
                "AWS_EC2_METADATA_DISABLED": "true", "AWS_PAGER": "", "AWS_MAX_ATTEMPTS": "1"})
    secrets = {"AWS_ACCESS_KEY_ID": creds.access_key, "AWS_SECRET_ACCESS_KEY": creds.secret_key}
    seen: dict[str, str] = {}
    ran = 0
    for line in readme_commands():
        argv = shlex.split(line)
        if argv[0] == "export":
            for assignment in argv[1:]:
                k, v = assignment.split("=", 1)
                env[k] = secrets[k] if v == "…" else v
            continue
        for i, arg in enumerate(argv):
            if arg == README_ENDPOINT:
                argv[i] = server.endpoint
            elif arg in PLACEHOLDERS:
                assert arg in seen, f"{line}: no earlier command printed a {arg}"
                argv[i] = seen[arg]
        assert not any("…" in a for a in argv), f"unresolved placeholder in {line}"
        if argv[1] == "ec2" and "wait" in argv:
            # The CLI's waiters sleep 15 s between polls: reach the state with a 1 s boto3 waiter first,
            # so the README's command answers on its first poll (and still has to succeed).
            w = argv[argv.index("wait") + 1]
            ids_flag = argv[argv.index("wait") + 2]
            ids = argv[argv.index(ids_flag) + 1:]
            ec2 = server.client(creds, region=env.get("AWS_DEFAULT_REGION"))
            param = ids_flag[2:].replace("-", "_").title().replace("_", "")  # --snapshot-ids: SnapshotIds
            ec2.get_waiter(w.replace("-", "_")).wait(**{param: ids}, WaiterConfig=wait_cfg())
        if argv[1] == "ec2" and "restore-snapshot-tier" in argv:
            # Archiving and restoring take a moment: the README restores once the previous step is done.
            ec2 = server.client(creds, region=env.get("AWS_DEFAULT_REGION"))
            sid = argv[argv.index("--snapshot-id") + 1]
            poll(lambda: ec2.describe_snapshot_tier_status(
                Filters=[{"Name": "snapshot-id", "Values": [sid]}])["SnapshotTierStatuses"][0],
                lambda t: not t.get("LastTieringOperationStatus", "").endswith("-in-progress"))
        if ran == 0:  # the first with the `aws` executable itself, the rest in-process (same code)
            p = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
            rc, stdout, stderr = p.returncode, p.stdout, p.stderr
        else:
            rc, stdout, stderr = cli_inproc.run(argv[1:], {k: v for k, v in env.items() if k.startswith("AWS_")})
        assert rc == 0, f"README command failed: {line}\n{stderr}"
        if " wait " not in f" {line} ":
            assert stdout.strip(), f"README command printed nothing: {line}"
        for ph, pattern in PLACEHOLDERS.items():
            found = re.findall(pattern, stdout)
            if found:
                seen.setdefault(ph, found[0])
        ran += 1
    assert ran >= 8

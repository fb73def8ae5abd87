"""Helpers that drive blocksnap's NBD exports with the real qemu tools."""
from __future__ import annotations

import subprocess

MiB = 1 << 20


def url(server, export: str) -> str:
    return f"nbd://127.0.0.1:{server.nbd_port}/{export}"


def qemu_io(server, export: str, *commands: str, check: bool = True) -> subprocess.CompletedProcess:
    args = ["qemu-io", "-f", "raw"]
    for c in commands:
        args += ["-c", c]
    args.append(url(server, export))
    p = subprocess.run(args, capture_output=True, text=True, timeout=120)
    # qemu-io reports pattern mismatches on stdout and may still exit 0.
    failed = p.returncode != 0 or "Pattern verification failed" in p.stdout or "failed" in p.stderr.lower()
    if check and failed:
        raise AssertionError(f"qemu-io {commands} on {export} failed:\n{p.stdout}\n{p.stderr}")
    return p


def pattern_ok(server, export: str, offset: int, length: int, pattern: int) -> bool:
    p = qemu_io(server, export, f"read -P {pattern:#x} {offset} {length}", check=False)
    return p.returncode == 0 and "Pattern verification failed" not in p.stdout


def compare(server, a: str, b: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", "compare", "-f", "raw", "-F", "raw", url(server, a), url(server, b)],
                          capture_output=True, text=True, timeout=300)

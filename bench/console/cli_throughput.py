#!/usr/bin/env python3
"""The operator CLI's `blocksnap volume import` / `volume export` throughput (issue 15's CLI half).

A real server (the release binary if built, else debug; BLOCKSNAP_BENCH_BIN overrides) on free ports;
an image of random data (incompressible, no zero blocks: every 512 KiB block is sent); then, R times:
`blocksnap volume import IMAGE --az us-east-1a --output json` (EBS direct: StartSnapshot,
PutSnapshotBlock, CompleteSnapshot, then CreateVolume) and `blocksnap volume export SNAP FILE --output
json` (ListSnapshotBlocks + GetSnapshotBlock into a sparse file), each checked byte for byte by
SHA-256. Prints the CLI's own MiB/s (import: the upload; export: the whole command) with the median,
next to a peer on the same disk: `cp` of the image (a local copy, the ceiling for a file-to-file move).

Usage: python3 bench/console/cli_throughput.py [--mib 256] [--runs 3]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from run import AKID, REGION, SECRET, binary, start  # noqa: E402


def sha256(path: Path, length: int) -> str:
    """The SHA-256 of the first `length` bytes; anything after them must be zeros (the volume is
    whole GiB, the image need not be)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        left = length
        while left and (chunk := f.read(min(1 << 20, left))):
            h.update(chunk)
            left -= len(chunk)
        while chunk := f.read(1 << 20):
            assert not chunk.strip(b"\0"), f"{path}: non-zero bytes after the image's {length}"
    return h.hexdigest()


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="cli-bench-") as tmp:
        work = Path(tmp)
        proc, endpoint = start(work)
        try:
            image = work / "image.raw"
            with open(image, "wb") as f:
                for _ in range(args.mib):
                    f.write(os.urandom(1 << 20))
            size = args.mib << 20
            want = sha256(image, size)
            env = dict(os.environ, AWS_ACCESS_KEY_ID=AKID, AWS_SECRET_ACCESS_KEY=SECRET, AWS_REGION=REGION,
                       AWS_ENDPOINT_URL=endpoint, AWS_CONFIG_FILE=os.devnull, AWS_SHARED_CREDENTIALS_FILE=os.devnull)
            env.pop("AWS_PROFILE", None)

            def cli(*a) -> dict:
                r = subprocess.run([str(binary()), *a, "--output", "json"], env=env, capture_output=True, text=True,
                                   timeout=900)
                if r.returncode != 0:
                    raise RuntimeError(f"blocksnap {' '.join(a)} exited {r.returncode}: {r.stderr}")
                return json.loads(r.stdout)

            imports, exports, copies = [], [], []
            for i in range(args.runs):
                imp = cli("volume", "import", str(image), "--az", f"{REGION}a")
                imports.append(imp["MiBPerSecond"])
                out = work / f"export-{i}.raw"
                exp = cli("volume", "export", imp["SnapshotId"], str(out))
                exports.append(exp["MiBPerSecond"])
                assert sha256(out, size) == want, "the export differs from the image"
                out.unlink()
                t = time.monotonic()
                subprocess.run(["cp", str(image), str(work / "copy.raw")], check=True)
                os.sync()
                copies.append(args.mib / (time.monotonic() - t))
                (work / "copy.raw").unlink()
                print(f"run {i + 1}: import {imports[-1]:.1f} MiB/s, export {exports[-1]:.1f} MiB/s, "
                      f"cp {copies[-1]:.1f} MiB/s", flush=True)
            print(f"binary: {binary()}; {args.mib} MiB of random data, median of {args.runs}")
            for name, xs in (("volume import", imports), ("volume export", exports)):
                m = statistics.median(xs)
                print(f"{name:<16}{m:8.1f} MiB/s   {m / statistics.median(copies):.2f}x cp")
            print(f"{'cp (peer)':<16}{statistics.median(copies):8.1f} MiB/s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())

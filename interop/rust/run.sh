#!/usr/bin/env bash
# The scenario through the AWS SDK for Rust against a fresh blocksnap (not part of tests/run: the SDK
# takes ~20 minutes to compile on a small machine). Usage: interop/rust/run.sh
# Builds target/debug/blocksnap and the scenario, starts `blocksnap serve` on free ports with a temporary
# data dir, runs the scenario, stops the server; exits with the scenario's status.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
cargo build -p blocksnap
cargo build --manifest-path interop/rust/Cargo.toml
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
nbd=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
metrics=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
data=$(mktemp -d)
export BLOCKSNAP_ROOT_ACCESS_KEY_ID=AKIAINTEROPRUST00001
export BLOCKSNAP_ROOT_SECRET_ACCESS_KEY="interop-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')"
target/debug/blocksnap serve --data-dir "$data/data" --listen "127.0.0.1:$port" --nbd-listen "127.0.0.1:$nbd" \
  --metrics-listen "127.0.0.1:$metrics" >"$data/server.log" 2>&1 &
server=$!
trap 'kill "$server" 2>/dev/null; wait "$server" 2>/dev/null; rm -rf "$data"' EXIT
for _ in $(seq 100); do
  curl -s -o /dev/null "http://127.0.0.1:$port/" && break
  kill -0 "$server" || { cat "$data/server.log"; exit 1; }
  sleep 0.1
done
BLOCKSNAP_ENDPOINT="http://127.0.0.1:$port" AWS_ACCESS_KEY_ID="$BLOCKSNAP_ROOT_ACCESS_KEY_ID" \
  AWS_SECRET_ACCESS_KEY="$BLOCKSNAP_ROOT_SECRET_ACCESS_KEY" AWS_REGION=us-east-1 \
  AWS_CONFIG_FILE=/dev/null AWS_SHARED_CREDENTIALS_FILE=/dev/null AWS_EC2_METADATA_DISABLED=true \
  interop/rust/target/debug/blocksnap-interop-rust

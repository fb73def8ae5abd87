//! NBD request metrics through the `metrics` facade (no-ops until the binary
//! installs a recorder).
//!
//! Series are labelled by export *kind* (`volume`, `snapshot`, `other`) and
//! operation, never by export name: names are resource ids (what an
//! unauthenticated scraper must not learn), and one series per export would
//! grow without bound.

use std::time::Duration;

use metrics::{Counter, Histogram};

use crate::proto::Command;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Read = 0,
    Write,
    Flush,
    Trim,
    WriteZeroes,
    BlockStatus,
    Cache,
    Other,
}

const OPS: [(Op, &str); 8] = [
    (Op::Read, "read"),
    (Op::Write, "write"),
    (Op::Flush, "flush"),
    (Op::Trim, "trim"),
    (Op::WriteZeroes, "write_zeroes"),
    (Op::BlockStatus, "block_status"),
    (Op::Cache, "cache"),
    (Op::Other, "other"),
];

struct OpMetrics {
    ops: Counter,
    bytes: Counter,
    errors: Counter,
    latency: Histogram,
}

/// Handles registered once per connection so the request path does not
/// allocate label sets.
pub(crate) struct ConnMetrics {
    ops: Vec<OpMetrics>,
    connections: metrics::Gauge,
}

/// The bounded label for an export name.
pub(crate) fn export_kind(export: &str) -> &'static str {
    if export.starts_with("vol-") {
        "volume"
    } else if export.starts_with("snap-") {
        "snapshot"
    } else {
        "other"
    }
}

impl ConnMetrics {
    pub(crate) fn new(export: &str) -> ConnMetrics {
        let kind = export_kind(export);
        let ops = OPS
            .iter()
            .map(|(_, name)| OpMetrics {
                ops: metrics::counter!("blocksnap_nbd_requests_total", "kind" => kind, "op" => *name),
                bytes: metrics::counter!("blocksnap_nbd_bytes_total", "kind" => kind, "op" => *name),
                errors: metrics::counter!("blocksnap_nbd_errors_total", "kind" => kind, "op" => *name),
                latency: metrics::histogram!("blocksnap_nbd_request_duration_seconds", "kind" => kind, "op" => *name),
            })
            .collect();
        let connections = metrics::gauge!("blocksnap_nbd_connections", "kind" => kind);
        connections.increment(1.0);
        ConnMetrics { ops, connections }
    }

    fn get(&self, op: Op) -> Option<&OpMetrics> {
        self.ops.get(op as usize)
    }

    pub(crate) fn error(&self, op: Op) {
        if let Some(m) = self.get(op) {
            m.errors.increment(1);
        }
    }

    pub(crate) fn record(&self, cmd: Command, res: Result<u64, u32>, took: Duration) {
        let op = match cmd {
            Command::Read { .. } => Op::Read,
            Command::Write { .. } => Op::Write,
            Command::Flush => Op::Flush,
            Command::Trim { .. } => Op::Trim,
            Command::WriteZeroes { .. } => Op::WriteZeroes,
            Command::BlockStatus { .. } => Op::BlockStatus,
            Command::Cache { .. } => Op::Cache,
            Command::Disc => Op::Other,
        };
        let Some(m) = self.get(op) else { return };
        m.ops.increment(1);
        m.latency.record(took.as_secs_f64());
        match res {
            Ok(bytes) => m.bytes.increment(bytes),
            Err(_) => m.errors.increment(1),
        }
    }
}

impl Drop for ConnMetrics {
    fn drop(&mut self) {
        self.connections.decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::export_kind;

    #[test]
    fn labels_are_bounded_and_carry_no_ids() {
        assert_eq!(export_kind("vol-0123456789abcdef0"), "volume");
        assert_eq!(export_kind("snap-0123456789abcdef0"), "snapshot");
        assert_eq!(export_kind("anything else"), "other");
        assert_eq!(export_kind(""), "other");
    }
}

//! Per-export request metrics through the `metrics` facade (no-ops until the
//! binary installs a recorder).

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

impl ConnMetrics {
    pub(crate) fn new(export: &str) -> ConnMetrics {
        let ops = OPS
            .iter()
            .map(|(_, name)| OpMetrics {
                ops: metrics::counter!("blocksnap_nbd_requests_total", "export" => export.to_string(), "op" => *name),
                bytes: metrics::counter!("blocksnap_nbd_bytes_total", "export" => export.to_string(), "op" => *name),
                errors: metrics::counter!("blocksnap_nbd_errors_total", "export" => export.to_string(), "op" => *name),
                latency: metrics::histogram!("blocksnap_nbd_request_duration_seconds", "export" => export.to_string(), "op" => *name),
            })
            .collect();
        let connections = metrics::gauge!("blocksnap_nbd_connections", "export" => export.to_string());
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

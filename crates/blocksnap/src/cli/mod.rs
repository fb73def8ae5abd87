//! The operator CLI: `blocksnap snapshot …`, `volume …`, `stats`, `doctor`. A client of a running
//! `blocksnap serve`, over the same APIs as any AWS client (EC2 Query, the EBS direct APIs) plus
//! blocksnap's own `BlocksnapStore_20261130` calls, with the standard AWS credential chain,
//! profiles, `AWS_ENDPOINT_URL`/`--endpoint-url` and region settings (`api_client`).
//!
//! One file per command group; `ec2.rs` and `ebs.rs` are the small protocol clients. Long work
//! shows an `indicatif` progress bar on stderr (when it is a terminal); `--output json` prints one
//! JSON document on stdout for scripts. Exit codes ([`Exit`], README "Exit codes"): 0 done,
//! 1 refused or failed, 2 bad command line, 3 endpoint unreachable, 4 credentials, 5 local
//! problem (file, qemu-img), 6 timed out waiting.

mod doctor;
mod ebs;
mod ec2;
mod snapshot;
mod stats;
mod volume;

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::api_client::{ApiArgs, ClientError, Conn};

/// The operator commands, flattened into the binary's own.
#[derive(clap::Subcommand)]
pub enum Command {
    /// Snapshots: create (and wait), copy to a region, list with their lineage, diff two.
    Snapshot {
        #[command(subcommand)]
        command: snapshot::Cmd,
    },
    /// Volumes: import a raw or qcow2 image, export a volume or snapshot to a file.
    Volume {
        #[command(subcommand)]
        command: volume::Cmd,
    },
    /// Store usage per region: logical and stored bytes, dedup+compression ratio, chunks, GC.
    Stats(stats::Args),
    /// Check a setup: the endpoint, the credentials, the NBD listener and (with --data-dir) the
    /// data dir's permissions, free space, owner lock and stores.
    Doctor(doctor::Args),
}

/// What every operator command takes.
#[derive(clap::Args, Clone)]
pub struct Common {
    #[command(flatten)]
    pub api: ApiArgs,
    /// `text` (default) for people, `json` for scripts (one document on stdout).
    #[arg(long, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// No progress bars (they are never drawn when stderr is not a terminal, nor with --output json).
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Output {
    Text,
    Json,
}

/// The exit codes (documented in the README).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// The service refused the request, or the operation ended in an error state.
    Failed = 1,
    /// The endpoint (HTTP or NBD) could not be reached.
    Unreachable = 3,
    /// No credentials, or the service refused them.
    Credentials = 4,
    /// A local problem: a file that cannot be read or written, qemu-img missing, the data dir.
    Local = 5,
    /// `--wait` gave up after `--timeout`.
    Timeout = 6,
}

/// An error with its exit code and a message that says what to do.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct CliError {
    pub exit: Exit,
    pub message: String,
}

pub fn fail(exit: Exit, message: impl Into<String>) -> anyhow::Error {
    CliError { exit, message: message.into() }.into()
}

fn exit_of(e: &anyhow::Error) -> Exit {
    for cause in e.chain() {
        if let Some(c) = cause.downcast_ref::<CliError>() {
            return c.exit;
        }
        if let Some(c) = cause.downcast_ref::<ClientError>() {
            return match c {
                ClientError::Credentials(_) => Exit::Credentials,
                ClientError::Unreachable(_) => Exit::Unreachable,
                ClientError::Refused(_) => Exit::Failed,
            };
        }
        if cause.downcast_ref::<std::io::Error>().is_some() {
            return Exit::Local;
        }
    }
    Exit::Failed
}

/// Run an operator command; answers the process's exit code.
pub fn run(cmd: Command) -> i32 {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blocksnap: cannot start the async runtime: {e}");
            return Exit::Local as i32;
        }
    };
    let r = runtime.block_on(async {
        match cmd {
            Command::Snapshot { command } => snapshot::run(command).await,
            Command::Volume { command } => volume::run(command).await,
            Command::Stats(a) => stats::run(a).await,
            Command::Doctor(a) => doctor::run(a).await,
        }
    });
    match r {
        Ok(code) => code,
        Err(e) => {
            eprintln!("blocksnap: error: {e:#}");
            let exit = exit_of(&e);
            if exit == Exit::Credentials {
                eprintln!(
                    "blocksnap: hint: check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY or --profile (as for the AWS \
                     CLI), and that the key is one of this server's (`blocksnap admin list-keys` on the server)"
                );
            }
            exit as i32
        }
    }
}

impl Common {
    pub async fn connect(&self) -> anyhow::Result<Conn> {
        Conn::connect(&self.api).await
    }

    fn bars(&self) -> bool {
        !self.no_progress && self.output == Output::Text
    }

    /// A byte progress bar (hidden when bars are off or stderr is no terminal).
    pub fn bytes_bar(&self, total: u64, what: &str) -> ProgressBar {
        let pb = self.bar(total);
        pb.set_style(
            ProgressStyle::with_template(
                "{msg} [{bar:32}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta} ({elapsed})",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// A percent progress bar.
    pub fn percent_bar(&self, what: &str) -> ProgressBar {
        let pb = self.bar(100);
        pb.set_style(
            ProgressStyle::with_template("{msg} [{bar:32}] {pos}% ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        pb.set_message(what.to_string());
        pb
    }

    /// A spinner for work whose length is unknown (a qemu-img conversion).
    pub fn spinner(&self, what: &str) -> ProgressBar {
        let pb = if self.bars() {
            ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr())
        } else {
            ProgressBar::hidden()
        };
        pb.set_style(
            ProgressStyle::with_template("{spinner} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        pb.set_message(what.to_string());
        pb.enable_steady_tick(Duration::from_millis(120));
        pb
    }

    fn bar(&self, total: u64) -> ProgressBar {
        if self.bars() {
            let pb = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
            pb.enable_steady_tick(Duration::from_millis(200));
            pb
        } else {
            ProgressBar::hidden()
        }
    }

    /// Print a result: the JSON document, or the text.
    pub fn print(&self, json: &serde_json::Value, text: impl FnOnce() -> String) {
        match self.output {
            Output::Json => println!("{}", serde_json::to_string_pretty(json).unwrap_or_else(|_| json.to_string())),
            Output::Text => {
                let t = text();
                if !t.is_empty() {
                    println!("{}", t.trim_end());
                }
            }
        }
    }
}

/// `1.5 GiB`, `512 KiB`, `0 B`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[u]) }
}

/// MiB per second over `elapsed`.
pub fn mib_per_s(bytes: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s <= 0.0 { 0.0 } else { bytes as f64 / (1024.0 * 1024.0) / s }
}

/// Epoch seconds as `2026-11-30 03:04:05Z`.
pub fn format_epoch(secs: f64) -> String {
    let fmt = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]Z");
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .ok()
        .and_then(|t| t.format(&fmt).ok())
        .unwrap_or_else(|| format!("{secs}"))
}

/// Poll until `done` says so, at most `timeout`; between polls 200 ms growing to 2 s.
pub async fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut poll: impl AsyncFnMut() -> anyhow::Result<(bool, T)>,
) -> anyhow::Result<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut pause = Duration::from_millis(200);
    loop {
        let (done, v) = poll().await?;
        if done {
            return Ok(v);
        }
        if tokio::time::Instant::now() + pause > deadline {
            return Err(fail(
                Exit::Timeout,
                format!(
                    "{what} did not finish within {} s; it goes on in the service: check it later, or wait longer \
                     with --timeout",
                    timeout.as_secs()
                ),
            ));
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 3 / 2).min(Duration::from_secs(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(512 * 1024), "512.0 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024 * 1024 / 2), "1.5 GiB");
    }

    #[test]
    fn errors_map_to_exit_codes() {
        let e = anyhow::Error::from(ClientError::Unreachable("x".into())).context("calling");
        assert_eq!(exit_of(&e), Exit::Unreachable);
        assert_eq!(exit_of(&ClientError::Credentials("x".into()).into()), Exit::Credentials);
        assert_eq!(exit_of(&fail(Exit::Timeout, "t")), Exit::Timeout);
        assert_eq!(exit_of(&std::io::Error::other("disk").into()), Exit::Local);
        assert_eq!(exit_of(&anyhow::anyhow!("other")), Exit::Failed);
    }
}

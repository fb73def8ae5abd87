//! `blocksnap volume import|export`: images in and out through the EBS direct APIs.
//!
//! Import writes the image's non-zero 512 KiB blocks into a new snapshot (StartSnapshot,
//! PutSnapshotBlock, CompleteSnapshot; holes are skipped with SEEK_DATA, zero blocks are not sent),
//! then creates the volume from it. A qcow2 image is first converted to a sparse raw temp file by
//! `qemu-img convert`. Export reads a snapshot's blocks (ListSnapshotBlocks, GetSnapshotBlock) into
//! a sparse file, written beside the target as `FILE.partial` and renamed once complete; a volume
//! is exported through a temporary snapshot (its point in time), deleted afterwards.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;
use tokio::task::JoinSet;

use super::{Common, Exit, ebs, ec2, fail, human_bytes, mib_per_s, snapshot::wait_snapshot, wait_until};
use crate::api_client::Conn;

const GIB: u64 = 1 << 30;

#[derive(clap::ValueEnum, Clone, Copy, PartialEq, Eq, Debug)]
pub enum Format {
    Raw,
    Qcow2,
}

#[derive(clap::Subcommand)]
pub enum Cmd {
    /// Import a raw or qcow2 image as a new volume (through a new snapshot, which is kept: the
    /// volume's base).
    Import {
        /// The image file.
        image: PathBuf,
        /// The volume's size in GiB (default: the image's size, rounded up).
        #[arg(long)]
        size: Option<u64>,
        /// The volume's availability zone (default: the region's first, `<region>a`).
        #[arg(long)]
        az: Option<String>,
        /// The image's format (default: qcow2 when it starts with qcow2's magic, raw otherwise).
        #[arg(long, value_enum)]
        format: Option<Format>,
        /// Blocks sent at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        /// How long to wait for the snapshot and the volume, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        common: Common,
    },
    /// Export a volume (through a temporary snapshot: its point in time) or a snapshot into a raw,
    /// sparse file.
    Export {
        /// vol-… or snap-…
        source: String,
        /// The file to write (refused if it exists, unless --force).
        file: PathBuf,
        /// Replace FILE if it exists.
        #[arg(long)]
        force: bool,
        /// Blocks read at once.
        #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
        parallel: u16,
        /// How long to wait for the temporary snapshot of a volume, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout: u64,
        #[command(flatten)]
        common: Common,
    },
}

pub async fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::Import { image, size, az, format, parallel, timeout, common } => {
            import(&common, &image, size, az, format, parallel as usize, Duration::from_secs(timeout)).await
        }
        Cmd::Export { source, file, force, parallel, timeout, common } => {
            export(&common, &source, &file, force, parallel as usize, Duration::from_secs(timeout)).await
        }
    }
}

fn local(e: impl std::fmt::Display, what: String) -> anyhow::Error {
    fail(Exit::Local, format!("{what}: {e}"))
}

fn detect(path: &Path) -> anyhow::Result<Format> {
    let mut f = File::open(path).map_err(|e| local(e, format!("cannot read the image {}", path.display())))?;
    let mut magic = [0u8; 4];
    let n = f.read(&mut magic).map_err(|e| local(e, format!("cannot read the image {}", path.display())))?;
    Ok(if n == 4 && magic == *b"QFI\xfb" { Format::Qcow2 } else { Format::Raw })
}

/// A qcow2 image as a sparse raw temp file (removed when dropped).
fn qcow2_to_raw(common: &Common, image: &Path) -> anyhow::Result<tempfile::NamedTempFile> {
    let missing = |e: std::io::Error| {
        fail(
            Exit::Local,
            format!(
                "{} is qcow2 and qemu-img is needed to read it, but it could not be run ({e}): install it \
                 (Debian/Ubuntu: apt-get install qemu-utils) or convert the image to raw first",
                image.display()
            ),
        )
    };
    std::process::Command::new("qemu-img").arg("--version").output().map_err(missing)?;
    let dir = image.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new()
        .prefix(".blocksnap-import-")
        .suffix(".raw")
        .tempfile_in(dir)
        .or_else(|_| tempfile::Builder::new().prefix("blocksnap-import-").suffix(".raw").tempfile())
        .map_err(|e| local(e, "cannot create a temporary file for the converted image".to_string()))?;
    let pb = common.spinner(&format!("converting {} to raw with qemu-img", image.display()));
    let out = std::process::Command::new("qemu-img")
        .args(["convert", "-q", "-f", "qcow2", "-O", "raw"])
        .arg(image)
        .arg(tmp.path())
        .output()
        .map_err(missing)?;
    pb.finish_and_clear();
    if !out.status.success() {
        return Err(fail(
            Exit::Local,
            format!("qemu-img could not convert {}: {}", image.display(), String::from_utf8_lossy(&out.stderr).trim()),
        ));
    }
    Ok(tmp)
}

/// The next offset at or after `off` that holds data (SEEK_DATA); `None` past the last.
fn next_data(f: &File, off: u64) -> Option<u64> {
    match rustix::fs::seek(f, rustix::fs::SeekFrom::Data(off)) {
        Ok(p) => Some(p),
        Err(rustix::io::Errno::NXIO) => None,
        // A filesystem without SEEK_DATA: read everything.
        Err(_) => Some(off),
    }
}

async fn import(
    common: &Common,
    image: &Path,
    size: Option<u64>,
    az: Option<String>,
    format: Option<Format>,
    parallel: usize,
    timeout: Duration,
) -> anyhow::Result<i32> {
    let format = match format {
        Some(f) => f,
        None => detect(image)?,
    };
    let conn = common.connect().await?;
    let converted = if format == Format::Qcow2 { Some(qcow2_to_raw(common, image)?) } else { None };
    let raw_path = converted.as_ref().map(|t| t.path().to_path_buf()).unwrap_or_else(|| image.to_path_buf());
    let file = File::open(&raw_path).map_err(|e| local(e, format!("cannot read {}", raw_path.display())))?;
    let len = file.metadata().map_err(|e| local(e, format!("cannot stat {}", raw_path.display())))?.len();
    if len == 0 {
        return Err(fail(Exit::Local, format!("{} is empty: nothing to import", image.display())));
    }
    let size_gib = size.unwrap_or(len.div_ceil(GIB));
    if size_gib == 0 || size_gib * GIB < len {
        return Err(fail(
            Exit::Local,
            format!(
                "the image holds {} but --size {size_gib} GiB is smaller: give at least --size {}",
                human_bytes(len),
                len.div_ceil(GIB)
            ),
        ));
    }
    let az = az.unwrap_or_else(|| format!("{}a", conn.region));
    let name = image.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let started = Instant::now();
    let sid = ebs::start_snapshot(&conn, size_gib, &format!("blocksnap volume import of {name}")).await?;
    let file = Arc::new(file);
    let pb = common.bytes_bar(len, &format!("importing {name}"));
    let sent = upload_blocks(&conn, &sid, &file, len, parallel, &pb).await;
    pb.finish_and_clear();
    let (written, zero) = sent.map_err(|e| {
        e.context(format!(
            "the import stopped; the unfinished snapshot {sid} is abandoned (it expires by itself): run the import \
             again"
        ))
    })?;
    let upload_elapsed = started.elapsed();
    ebs::complete_snapshot(&conn, &sid, written).await?;
    wait_snapshot(common, &conn, &sid, timeout, &format!("snapshot {sid}")).await?;
    let vid = ec2::create_volume(&conn, &sid, &az, size_gib).await?;
    let vol = wait_until(timeout, &format!("volume {vid}"), async || {
        let v = ec2::describe_volume(&conn, &vid).await?;
        Ok((v.state != "creating", v))
    })
    .await?;
    if vol.state == "error" {
        return Err(fail(Exit::Failed, format!("the volume {vid} ended in error; delete it and import again")));
    }
    drop(converted);
    let elapsed = started.elapsed();
    let rate = mib_per_s(len, upload_elapsed);
    let doc = json!({
        "VolumeId": vid,
        "SnapshotId": sid,
        "AvailabilityZone": vol.availability_zone,
        "Size": size_gib,
        "State": vol.state,
        "ImageBytes": len,
        "Format": if format == Format::Qcow2 { "qcow2" } else { "raw" },
        "BlocksWritten": written,
        "ZeroBlocksSkipped": zero,
        "UploadSeconds": upload_elapsed.as_secs_f64(),
        "Seconds": elapsed.as_secs_f64(),
        "MiBPerSecond": rate,
    });
    common.print(&doc, || {
        format!(
            "{vid}\t{size_gib} GiB\t{}\tfrom {sid}\nimported {} in {:.1} s ({rate:.1} MiB/s): {written} block(s) written, \
             {zero} zero block(s) skipped",
            vol.availability_zone,
            human_bytes(len),
            upload_elapsed.as_secs_f64(),
        )
    });
    Ok(0)
}

/// Send every non-zero block of `file` (up to `len`), `parallel` at once. Answers (written, zero).
async fn upload_blocks(
    conn: &Conn,
    sid: &str,
    file: &Arc<File>,
    len: u64,
    parallel: usize,
    pb: &indicatif::ProgressBar,
) -> anyhow::Result<(u64, u64)> {
    let blocks = len.div_ceil(ebs::BLOCK);
    let (mut written, mut zero) = (0u64, 0u64);
    let mut tasks: JoinSet<anyhow::Result<u64>> = JoinSet::new();
    let mut index = 0u64;
    while index < blocks {
        // Skip holes without reading them.
        let off = index * ebs::BLOCK;
        let data_at = next_data(file, off);
        let next = match data_at {
            Some(d) => d / ebs::BLOCK,
            None => blocks,
        };
        if next > index {
            zero += next - index;
            pb.inc((next.min(blocks) * ebs::BLOCK).min(len) - off);
            index = next;
            continue;
        }
        let mut buf = vec![0u8; ebs::BLOCK as usize];
        let want = (len - off).min(ebs::BLOCK) as usize;
        let f = file.clone();
        let buf = tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            f.read_exact_at(&mut buf[..want], off)?;
            Ok(buf)
        })
        .await
        .context("reading the image")?
        .map_err(|e| local(e, format!("cannot read the image at offset {off}")))?;
        index += 1;
        if buf.iter().all(|b| *b == 0) {
            zero += 1;
            pb.inc(want as u64);
            continue;
        }
        while tasks.len() >= parallel {
            if let Some(r) = tasks.join_next().await {
                pb.inc(r.context("a block upload task failed")??);
                written += 1;
            }
        }
        let (conn, sid) = (conn.clone(), sid.to_string());
        let i = index - 1;
        tasks.spawn(async move {
            ebs::put_block(&conn, &sid, i, buf).await?;
            Ok(want as u64)
        });
    }
    while let Some(r) = tasks.join_next().await {
        pb.inc(r.context("a block upload task failed")??);
        written += 1;
    }
    Ok((written, zero))
}

async fn export(
    common: &Common,
    source: &str,
    path: &Path,
    force: bool,
    parallel: usize,
    timeout: Duration,
) -> anyhow::Result<i32> {
    if path.exists() && !force {
        return Err(fail(
            Exit::Local,
            format!("{} exists: choose another file or give --force to replace it", path.display()),
        ));
    }
    let conn = common.connect().await?;
    let started = Instant::now();
    let (sid, temporary) = if source.starts_with("vol-") {
        let sid =
            ec2::create_snapshot(&conn, source, Some(&format!("blocksnap volume export of {source} (temporary)")))
                .await?;
        (sid, true)
    } else if source.starts_with("snap-") {
        (source.to_string(), false)
    } else {
        return Err(fail(Exit::Failed, format!("'{source}' is neither a volume (vol-…) nor a snapshot (snap-…)")));
    };
    let r = async {
        if temporary {
            wait_snapshot(common, &conn, &sid, timeout, &format!("snapshot {sid} of {source}")).await?;
        }
        export_snapshot(common, &conn, &sid, path, parallel).await
    }
    .await;
    let mut cleanup_error = None;
    if temporary && let Err(e) = ec2::delete_snapshot(&conn, &sid).await {
        cleanup_error = Some(format!("the temporary snapshot {sid} could not be deleted ({e}): delete it yourself"));
    }
    let (size, read, blocks) = r?;
    let elapsed = started.elapsed();
    let rate = mib_per_s(read, elapsed);
    let doc = json!({
        "Source": source,
        "SnapshotId": sid,
        "TemporarySnapshot": temporary,
        "File": path.display().to_string(),
        "Bytes": size,
        "BlocksRead": blocks,
        "BytesRead": read,
        "Seconds": elapsed.as_secs_f64(),
        "MiBPerSecond": rate,
        "Warning": cleanup_error,
    });
    common.print(&doc, || {
        format!(
            "{}\t{}\nexported {source} in {:.1} s ({rate:.1} MiB/s): {blocks} block(s), {} read{}",
            path.display(),
            human_bytes(size),
            elapsed.as_secs_f64(),
            human_bytes(read),
            if temporary { format!(" (through the temporary snapshot {sid}, deleted)") } else { String::new() }
        )
    });
    if let Some(w) = &cleanup_error {
        eprintln!("blocksnap: warning: {w}");
    }
    Ok(0)
}

/// Write snapshot `sid` into `path` (via `path.partial`). Answers (size, bytes read, blocks).
async fn export_snapshot(
    common: &Common,
    conn: &Conn,
    sid: &str,
    path: &Path,
    parallel: usize,
) -> anyhow::Result<(u64, u64, u64)> {
    let (blocks, mut size_gib) = ebs::list_all(conn, sid, None).await?;
    if size_gib == 0 {
        size_gib = ec2::describe_snapshot(conn, sid).await?.volume_size_gib;
    }
    let size = size_gib * GIB;
    let mut partial = path.as_os_str().to_owned();
    partial.push(".partial");
    let partial = PathBuf::from(partial);
    let file = File::create(&partial).map_err(|e| local(e, format!("cannot create {}", partial.display())))?;
    file.set_len(size).map_err(|e| local(e, format!("cannot size {} to {}", partial.display(), human_bytes(size))))?;
    let file = Arc::new(file);
    let pb = common.bytes_bar(blocks.len() as u64 * ebs::BLOCK, &format!("exporting {sid}"));
    let r = async {
        let mut tasks: JoinSet<anyhow::Result<u64>> = JoinSet::new();
        let mut read = 0u64;
        for b in &blocks {
            let Some(token) = b.token.clone() else { continue };
            while tasks.len() >= parallel {
                if let Some(r) = tasks.join_next().await {
                    let n = r.context("a block download task failed")??;
                    read += n;
                    pb.inc(n);
                }
            }
            let (conn, sid, f, index) = (conn.clone(), sid.to_string(), file.clone(), b.index);
            tasks.spawn(async move {
                let data = ebs::get_block(&conn, &sid, index, &token).await?;
                let n = data.len() as u64;
                if data.iter().any(|x| *x != 0) {
                    tokio::task::spawn_blocking(move || f.write_all_at(&data, index * ebs::BLOCK))
                        .await
                        .context("writing the file")?
                        .map_err(|e| local(e, format!("cannot write block {index}")))?;
                }
                Ok(n)
            });
        }
        while let Some(r) = tasks.join_next().await {
            let n = r.context("a block download task failed")??;
            read += n;
            pb.inc(n);
        }
        let f = file.clone();
        tokio::task::spawn_blocking(move || f.sync_all())
            .await
            .context("syncing the file")?
            .map_err(|e| local(e, format!("cannot sync {}", partial.display())))?;
        std::fs::rename(&partial, path).map_err(|e| local(e, format!("cannot rename to {}", path.display())))?;
        anyhow::Ok(read)
    }
    .await;
    pb.finish_and_clear();
    match r {
        Ok(read) => Ok((size, read, blocks.len() as u64)),
        Err(e) => {
            let mut p = path.as_os_str().to_owned();
            p.push(".partial");
            let _ = std::fs::remove_file(PathBuf::from(p));
            Err(e)
        }
    }
}

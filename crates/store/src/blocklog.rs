//! Block logs (format 1): the blocks written so far into a snapshot that is being built block by
//! block (the EBS direct APIs' `PutSnapshotBlock`), before its manifest exists.
//!
//! A block log is an append-only local file. Each record names a block index, the id the block
//! was stored under and the SHA-256 of its plaintext (the checksum the client sent, kept for the
//! aggregated checksum at completion). A record is appended and `fdatasync`ed only after its
//! chunk is in the store, so every record a restart finds points at a stored block; a later
//! record for the same index replaces an earlier one.
//!
//! ```text
//! header  "BSBL" | version u16 = 1 | reserved u16 = 0                        8 bytes
//! record  index u32 | block id [32] | sha256 [32] | crc32c u32 of the 68 bytes before it
//! ```
//! All integers little-endian. A torn or damaged tail (a crash mid-append) ends the log: the
//! records before it are kept and the file is cut back to them by [`BlockLog::open`].

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Result, StoreError};
use crate::id::BlockId;

const MAGIC: &[u8; 4] = b"BSBL";
const VERSION: u16 = 1;
const HEADER_LEN: usize = 8;
/// Bytes per record.
pub const RECORD_LEN: usize = 72;

/// One block written into a snapshot under construction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogRecord {
    pub index: u32,
    pub id: BlockId,
    /// SHA-256 of the block's plaintext.
    pub sha256: [u8; 32],
}

impl LogRecord {
    fn encode(&self) -> [u8; RECORD_LEN] {
        let mut b = [0u8; RECORD_LEN];
        b[0..4].copy_from_slice(&self.index.to_le_bytes());
        b[4..36].copy_from_slice(self.id.as_bytes());
        b[36..68].copy_from_slice(&self.sha256);
        let crc = crc32c::crc32c(&b[..68]);
        b[68..72].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Option<LogRecord> {
        if b.len() != RECORD_LEN {
            return None;
        }
        let crc = u32::from_le_bytes([b[68], b[69], b[70], b[71]]);
        if crc != crc32c::crc32c(&b[..68]) {
            return None;
        }
        let mut id = [0u8; 32];
        id.copy_from_slice(&b[4..36]);
        let mut sha256 = [0u8; 32];
        sha256.copy_from_slice(&b[36..68]);
        Some(LogRecord { index: u32::from_le_bytes([b[0], b[1], b[2], b[3]]), id: BlockId(id), sha256 })
    }
}

/// Parse a whole log: its valid records and the length of the valid prefix. A bad header is an
/// error (the file is not a block log, or of a newer format); a damaged record ends the log.
pub fn decode(bytes: &[u8]) -> Result<(Vec<LogRecord>, usize)> {
    let bad = |reason: String| StoreError::corrupt("block log", "", reason);
    if bytes.len() < HEADER_LEN || &bytes[0..4] != MAGIC {
        return Err(bad("not a block log (bad magic)".into()));
    }
    let version = u16::from_le_bytes([bytes[4], bytes[5]]);
    if version != VERSION {
        return Err(StoreError::Incompatible(format!("block log format {version}; this build reads format {VERSION}")));
    }
    let mut records = Vec::with_capacity((bytes.len() - HEADER_LEN) / RECORD_LEN);
    let mut valid = HEADER_LEN;
    for chunk in bytes[HEADER_LEN..].chunks(RECORD_LEN) {
        match LogRecord::decode(chunk) {
            Some(r) => {
                records.push(r);
                valid += RECORD_LEN;
            }
            None => break,
        }
    }
    Ok((records, valid))
}

/// An open block log, appended to by concurrent writers (each append is one `write` on an
/// `O_APPEND` file, then `fdatasync`; no lock is taken).
#[derive(Debug)]
pub struct BlockLog {
    file: File,
    path: PathBuf,
}

fn sync_dir(path: &Path) -> Result<()> {
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

impl BlockLog {
    /// Create a new, empty log (fails if `path` exists); durable (file and directory entry)
    /// when this returns.
    pub fn create(path: &Path) -> Result<BlockLog> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let mut file = OpenOptions::new().append(true).create_new(true).mode(0o600).open(path)?;
        let mut header = [0u8; HEADER_LEN];
        header[0..4].copy_from_slice(MAGIC);
        header[4..6].copy_from_slice(&VERSION.to_le_bytes());
        file.write_all(&header)?;
        file.sync_all()?;
        sync_dir(path)?;
        Ok(BlockLog { file, path: path.to_path_buf() })
    }

    /// Open an existing log for appending: its records, with a damaged tail cut off.
    pub fn open(path: &Path) -> Result<(BlockLog, Vec<LogRecord>)> {
        let bytes = std::fs::read(path)?;
        let (records, valid) = decode(&bytes)?;
        let file = OpenOptions::new().append(true).open(path)?;
        if valid < bytes.len() {
            tracing::info!(path = %path.display(), kept = records.len(), "cutting a torn block log tail");
            file.set_len(valid as u64)?;
            file.sync_all()?;
        }
        Ok((BlockLog { file, path: path.to_path_buf() }, records))
    }

    /// Append one record and make it durable.
    pub fn append(&self, record: &LogRecord) -> Result<()> {
        (&self.file).write_all(&record.encode())?;
        self.file.sync_data()?;
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Remove a log (idempotent), durably.
    pub fn remove(path: &Path) -> Result<()> {
        match std::fs::remove_file(path) {
            Ok(()) => sync_dir(path),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(i: u32) -> LogRecord {
        LogRecord { index: i, id: BlockId([i as u8 + 7; 32]), sha256: [i as u8; 32] }
    }

    #[test]
    fn round_trip_and_torn_tail() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("snap-1.blocks");
        let log = BlockLog::create(&path)?;
        for i in 0..5 {
            log.append(&rec(i))?;
        }
        drop(log);
        // A crash mid-append leaves part of a record.
        let mut f = OpenOptions::new().append(true).open(&path)?;
        f.write_all(&rec(9).encode()[..30])?;
        drop(f);
        let (log, records) = BlockLog::open(&path)?;
        assert_eq!(records, (0..5).map(rec).collect::<Vec<_>>());
        assert_eq!(std::fs::metadata(&path)?.len() as usize, HEADER_LEN + 5 * RECORD_LEN);
        log.append(&rec(5))?;
        let (_, records) = BlockLog::open(&path)?;
        assert_eq!(records.len(), 6);
        // A flipped bit ends the log at the damaged record.
        let mut bytes = std::fs::read(&path)?;
        bytes[HEADER_LEN + 2 * RECORD_LEN + 10] ^= 1;
        assert_eq!(decode(&bytes)?.0.len(), 2);
        BlockLog::remove(&path)?;
        BlockLog::remove(&path)?;
        assert!(!path.exists());
        Ok(())
    }

    #[test]
    fn refuses_other_files() {
        assert!(decode(b"BSNS\x01\x00\x00\x00").is_err());
        assert!(matches!(decode(b"BSBL\x02\x00\x00\x00"), Err(StoreError::Incompatible(_))));
        assert!(decode(b"BS").is_err());
    }
}

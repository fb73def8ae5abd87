//! The decoders of the store's objects (manifests, segments, chunks) as one public surface: for
//! tools that inspect a bucket and for the fuzzers (`fuzz/`). A damaged or hostile object gives an
//! error, never a panic, a loop or an allocation beyond what the format bounds (a chunk's raw length
//! is at most the caller's `max_len`, a segment holds at most [`crate::SEGMENT_BLOCKS`] ids).

use crate::archive::{self, ArchiveIndex};
use crate::error::Result;
use crate::id::{BlockId, SegmentId};
use crate::manifest::ManifestHeader;
use crate::{Codec, chunk, manifest, segment};

/// Parses and validates manifest object bytes stored under the snapshot id `name`.
pub fn manifest(name: &str, bytes: &[u8]) -> Result<ManifestHeader> {
    manifest::from_bytes(name, bytes)
}

/// Wraps `body` in a well-formed manifest envelope (format, kind and the body's true SHA-256, as a
/// hostile writer would) and decodes it: reaches the body's checks past the checksum.
pub fn manifest_body(name: &str, body: &[u8]) -> Result<ManifestHeader> {
    let sha = hex::encode(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref());
    let mut obj =
        format!(r#"{{"format":{},"kind":"blocksnap.manifest","sha256":"{sha}","body":"#, manifest::MANIFEST_FORMAT)
            .into_bytes();
    obj.extend_from_slice(body);
    obj.push(b'}');
    manifest::from_bytes(name, &obj)
}

/// Decodes a segment object stored under `id` (its SHA-256 must be `id`).
pub fn segment(id: &SegmentId, obj: &[u8]) -> Result<Vec<BlockId>> {
    segment::decode(id, obj)
}

/// The id a segment object would be stored under (its SHA-256).
pub fn segment_id(obj: &[u8]) -> SegmentId {
    segment::segment_id_of(obj)
}

/// Key-less structural check of a chunk object stored under `id` (magic, version, lengths, CRC32C).
pub fn chunk_check(id: &BlockId, obj: &[u8]) -> Result<()> {
    chunk::check(id, obj).map(|_| ())
}

/// Full decode of a chunk object: check, decrypt, decompress (to at most `max_len` bytes) and
/// re-derive its id.
pub fn chunk(codec: &Codec, id: &BlockId, obj: &[u8], max_len: usize) -> Result<Vec<u8>> {
    chunk::decode(codec, id, obj, max_len)
}

/// Sets a chunk object's CRC32C field to the CRC of its other bytes, as a hostile writer could;
/// objects shorter than the header are left alone.
pub fn fix_chunk_crc(obj: &mut [u8]) {
    chunk::set_crc(obj);
}

/// Parses and validates an archive index stored for the snapshot `name`.
pub fn archive_index(name: &str, bytes: &[u8]) -> Result<ArchiveIndex> {
    archive::decode_index(name, bytes)
}

/// Re-seals `body` with its true SHA-256 (as a hostile writer would) and decodes it as an archive
/// index: reaches the structural checks past the checksum.
pub fn archive_index_resealed(name: &str, body: &[u8]) -> Result<ArchiveIndex> {
    let mut obj = body.to_vec();
    obj.extend_from_slice(aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, body).as_ref());
    archive::decode_index(name, &obj)
}

/// The bytes of an archive index (for building fuzz seeds).
pub fn encode_archive_index(ix: &ArchiveIndex) -> Result<Vec<u8>> {
    archive::encode_index(ix)
}

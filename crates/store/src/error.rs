use crate::id::BlockId;

/// Result alias for the store.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Everything the snapshot store can fail with.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The backend (filesystem or S3) failed.
    #[error("object store: {0}")]
    Backend(#[from] object_store::Error),

    /// A referenced block has no chunk object.
    #[error("block {0} not found in the store")]
    BlockNotFound(BlockId),

    /// No manifest for this snapshot id.
    #[error("snapshot manifest {0} not found")]
    ManifestNotFound(String),

    /// No committed archive for this snapshot id in the archive store.
    #[error("archive of snapshot {0} not found")]
    ArchiveNotFound(String),

    /// A different manifest already exists under this snapshot id.
    #[error("a different manifest for snapshot {0} already exists")]
    ManifestExists(String),

    /// An object failed an integrity check (magic, version, CRC, hash, length, parse).
    #[error("corrupt {kind} {name}: {reason}")]
    Corrupt { kind: &'static str, name: String, reason: String },

    /// AES-GCM authentication failed: wrong key or tampered ciphertext.
    #[error("block {0} failed authentication: wrong data key or tampered chunk")]
    Decrypt(BlockId),

    /// The codec does not match the chunk (plain codec on an encrypted chunk, or the reverse).
    #[error("block {id}: {reason}")]
    CodecMismatch { id: BlockId, reason: &'static str },

    /// `store.json` describes a store this build cannot use.
    #[error("incompatible store: {0}")]
    Incompatible(String),

    /// The caller passed something invalid (wrong block length, bad snapshot id, ...).
    #[error("invalid argument: {0}")]
    Invalid(String),

    /// A wrapped key could not be unwrapped (wrong master key, wrong AAD or damaged bytes).
    #[error("cannot unwrap data key: {0}")]
    Unwrap(&'static str),

    /// The crypto library refused an operation (should not happen with valid keys).
    #[error("crypto failure: {0}")]
    Crypto(&'static str),

    /// Local filesystem I/O outside object_store (creating the root, syncfs).
    #[error("io: {0}")]
    Io(#[from] std::io::Error),

    /// A blocking CPU task panicked or was cancelled.
    #[error("worker task failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

impl StoreError {
    pub(crate) fn corrupt(kind: &'static str, name: impl Into<String>, reason: impl Into<String>) -> Self {
        StoreError::Corrupt { kind, name: name.into(), reason: reason.into() }
    }
}

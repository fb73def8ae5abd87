//! Bounded retries with backoff, and a deadline on every backend call.
//!
//! Every store sits on a [`Retrying`] backend: a call that fails with a transient error (an I/O or
//! HTTP failure the backend reports as `Generic`, after its own retries if it has any) or that
//! does not answer within [`RetryPolicy::attempt_timeout`] is tried again after an exponential
//! backoff with jitter, at most [`RetryPolicy::attempts`] times; then the error goes up, so an
//! upload or copy ends in `error` with a message instead of waiting forever on a store that hangs
//! or has gone. Answers are never retried (not found, already exists, precondition, permission).
//!
//! Create-only puts are safe to retry: a put that reached the store but whose answer was lost
//! comes back as `AlreadyExists`, which callers treat as present (objects are content-addressed;
//! a manifest is compared with what is there).
//!
//! Listing streams pass through: GC (their only user) runs again later.
//!
//! ## Large objects: multipart uploads
//! [`Retrying::put_large`] writes an object of [`MultipartPolicy::threshold`] bytes or more in parts
//! where the backend has S3's multipart calls (a [`MultipartStore`] given to
//! [`Retrying::with_multipart`]): create the upload, put its parts ([`MultipartPolicy::part_size`]
//! each, the last one shorter, a few at once), complete it. Every one of those calls is retried and
//! bounded like any other, a part on its own: a failed part costs one part, not the object. When a
//! call still fails, the upload is aborted (itself retried) so its parts do not stay billed in the
//! bucket; a process killed mid-upload leaves them to the bucket's `AbortIncompleteMultipartUpload`
//! lifecycle rule (README). Smaller objects, and backends without multipart (local directories),
//! take one retried PUT.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt, stream};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};
use tracing::{info, warn};

/// How hard a store call is retried. The worst case a call can take is about
/// `attempts × attempt_timeout + (attempts − 1) × max_backoff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Tries per call, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second try; doubled for each later one, up to `max_backoff`, with jitter.
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// A try that has not answered by then counts as failed (a hung store).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(60),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, retry: u32) -> Duration {
        let base = self.initial_backoff.saturating_mul(1u32 << retry.min(16)).min(self.max_backoff);
        // Full jitter in [base/2, base]: concurrent uploads do not retry in lockstep.
        let half = base / 2;
        half + half.mul_f64(rand::random::<f64>())
    }
}

/// When [`Retrying::put_large`] uploads in parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MultipartPolicy {
    /// Objects of at least this many bytes go in parts.
    pub threshold: usize,
    /// Bytes per part (the last one may be shorter). S3 wants at least 5 MiB for every part but the last.
    pub part_size: usize,
    /// Parts in flight at once.
    pub concurrency: usize,
}

/// S3's smallest part (every part but the last).
pub const MIN_PART_SIZE: usize = 5 << 20;

impl Default for MultipartPolicy {
    /// 8 MiB parts from 8 MiB on, four at once: a 32 MiB archive pack is four parts (so one lost
    /// connection costs 8 MiB, not 32), and at most 32 MiB of one upload is in flight.
    fn default() -> Self {
        MultipartPolicy { threshold: 8 << 20, part_size: 8 << 20, concurrency: 4 }
    }
}

/// Is this failure worth another try?
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. } | object_store::Error::JoinError { .. })
}

/// An object store whose calls retry transient failures and time out (see the module docs).
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
    /// The same backend's multipart calls, when it has them (S3).
    multipart: Option<Arc<dyn MultipartStore>>,
    policy: RetryPolicy,
    parts: MultipartPolicy,
}

impl fmt::Debug for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Retrying")
            .field("inner", &self.inner.to_string())
            .field("multipart", &self.multipart.is_some())
            .field("policy", &self.policy)
            .field("parts", &self.parts)
            .finish()
    }
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Retrying {
            inner,
            multipart: None,
            policy: RetryPolicy { attempts: policy.attempts.max(1), ..policy },
            parts: MultipartPolicy::default(),
        }
    }

    /// A backend with S3's multipart calls: [`Retrying::put_large`] uploads large objects in parts.
    /// `parts.part_size` is raised to S3's minimum, `parts.threshold` to at least one part.
    pub fn with_multipart<T: ObjectStore + MultipartStore>(
        backend: Arc<T>,
        policy: RetryPolicy,
        parts: MultipartPolicy,
    ) -> Self {
        let part_size = parts.part_size.max(MIN_PART_SIZE);
        let parts = MultipartPolicy {
            part_size,
            threshold: parts.threshold.max(part_size),
            concurrency: parts.concurrency.max(1),
        };
        let multipart: Arc<dyn MultipartStore> = backend.clone();
        Retrying { multipart: Some(multipart), parts, ..Retrying::new(backend, policy) }
    }

    /// Would [`Retrying::put_large`] upload an object of `len` bytes in parts?
    pub fn uses_parts(&self, len: usize) -> bool {
        self.multipart.is_some() && len >= self.parts.threshold
    }

    /// Write `bytes` to `location` (replacing what is there): in parts when the object is large
    /// and the backend has multipart uploads, else with one PUT. Every call is retried; a failed
    /// multipart upload is aborted. See the module docs.
    pub async fn put_large(&self, location: &Path, bytes: Bytes) -> object_store::Result<PutResult> {
        let Some(mp) = self.multipart.as_ref().filter(|_| self.uses_parts(bytes.len())) else {
            return self.put_opts(location, PutPayload::from(bytes), PutMode::Overwrite.into()).await;
        };
        let id = self.call("create multipart upload", location, || mp.create_multipart(location)).await?;
        match self.upload_parts(mp.as_ref(), location, &id, &bytes).await {
            Ok(r) => Ok(r),
            Err(e) => {
                // No parts left behind: abort (retried too); if even that fails, the bucket's
                // lifecycle rule is the last resort.
                match self.call("abort multipart upload", location, || mp.abort_multipart(location, &id)).await {
                    Ok(()) => info!(%location, upload_id = %id, "multipart upload aborted"),
                    Err(abort) => {
                        warn!(%location, upload_id = %id, error = %abort, "aborting a failed multipart upload failed");
                    }
                }
                Err(e)
            }
        }
    }

    async fn upload_parts(
        &self,
        mp: &dyn MultipartStore,
        location: &Path,
        id: &str,
        bytes: &Bytes,
    ) -> object_store::Result<PutResult> {
        let size = self.parts.part_size;
        let id = id.to_string();
        let parts: Vec<PartId> = stream::iter(0..bytes.len().div_ceil(size))
            .map(|n| {
                let part = PutPayload::from(bytes.slice(n * size..((n + 1) * size).min(bytes.len())));
                let id = &id;
                async move { self.call("put part", location, || mp.put_part(location, id, n, part.clone())).await }
            })
            .buffered(self.parts.concurrency)
            .try_collect()
            .await?;
        let n = parts.len();
        match self.call("complete multipart upload", location, || mp.complete_multipart(location, &id, parts.clone())).await
        {
            Ok(r) => Ok(r),
            // A completion whose answer was lost is retried against an upload that no longer
            // exists: the object is there, whole, if it has the length we wrote.
            Err(e) => match self.inner.head(location).await {
                Ok(meta) if meta.size == bytes.len() as u64 => {
                    warn!(%location, error = %e, "completing the multipart upload answered an error, but the object is whole");
                    Ok(PutResult { e_tag: meta.e_tag, version: meta.version, extensions: Default::default() })
                }
                _ => Err(e),
            },
        }
        .inspect(|_| tracing::debug!(%location, parts = n, bytes = bytes.len(), "multipart upload completed"))
    }

    async fn call<T, F, Fut>(&self, what: &'static str, location: &Path, mut f: F) -> object_store::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = object_store::Result<T>>,
    {
        let mut retry = 0;
        loop {
            let err = match tokio::time::timeout(self.policy.attempt_timeout, f()).await {
                Ok(Ok(v)) => return Ok(v),
                Ok(Err(e)) if !is_transient(&e) => return Err(e),
                Ok(Err(e)) => e,
                Err(_) => object_store::Error::Generic {
                    store: "retry",
                    source: format!("{what} {location}: no answer within {:?}", self.policy.attempt_timeout).into(),
                },
            };
            retry += 1;
            if retry >= self.policy.attempts {
                warn!(what, %location, attempts = retry, error = %err, "object store call failed; giving up");
                return Err(err);
            }
            let wait = self.policy.backoff(retry - 1);
            warn!(what, %location, attempt = retry, ?wait, error = %err, "object store call failed; retrying");
            tokio::time::sleep(wait).await;
        }
    }
}

impl fmt::Display for Retrying {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Retrying({})", self.inner)
    }
}

#[async_trait]
impl ObjectStore for Retrying {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.call("put", location, || self.inner.put_opts(location, payload.clone(), opts.clone())).await
    }

    /// Passes through unretried: large objects go through [`Retrying::put_large`].
    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.call("get", location, || self.inner.get_opts(location, options.clone())).await
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let at = prefix.cloned().unwrap_or_default();
        self.call("list", &at, || self.inner.list_with_delimiter(prefix)).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.call("copy", to, || self.inner.copy_opts(from, to, options.clone())).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_the_cap_with_jitter() {
        let p = RetryPolicy {
            attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            attempt_timeout: Duration::from_secs(1),
        };
        for retry in 0..10 {
            let b = p.backoff(retry);
            let base = Duration::from_millis(100 * (1 << retry)).min(Duration::from_secs(1));
            assert!(b >= base / 2 && b <= base, "retry {retry}: {b:?} vs {base:?}");
        }
    }

    #[test]
    fn only_transient_errors_are_retried() {
        let generic = object_store::Error::Generic { store: "t", source: "io".into() };
        let missing = object_store::Error::NotFound { path: "x".into(), source: "gone".into() };
        assert!(is_transient(&generic));
        assert!(!is_transient(&missing));
    }
}

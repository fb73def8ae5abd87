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
//! Listing streams and multipart uploads pass through: GC (their only user) runs again later.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};
use tracing::warn;

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

/// Is this failure worth another try?
pub(crate) fn is_transient(e: &object_store::Error) -> bool {
    matches!(e, object_store::Error::Generic { .. } | object_store::Error::JoinError { .. })
}

/// An object store whose calls retry transient failures and time out (see the module docs).
#[derive(Debug)]
pub struct Retrying {
    inner: Arc<dyn ObjectStore>,
    policy: RetryPolicy,
}

impl Retrying {
    pub fn new(inner: Arc<dyn ObjectStore>, policy: RetryPolicy) -> Self {
        Retrying { inner, policy: RetryPolicy { attempts: policy.attempts.max(1), ..policy } }
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

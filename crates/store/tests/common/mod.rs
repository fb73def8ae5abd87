//! The fault-injecting object store shared by the store's fault tests (`faults.rs`, in front of an
//! in-memory store) and S3 tests (`s3.rs`, in front of the real S3 server): injected errors, slow and
//! hung puts, a store that goes away, and a count of every call it forwards, multipart calls included.
#![allow(dead_code)] // each test file uses its own part of it

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use futures::stream::BoxStream;
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartId, MultipartUpload, ObjectMeta, ObjectStore,
    PutMultipartOptions, PutOptions, PutPayload, PutResult,
};

/// What to inject, and what happened.
#[derive(Debug, Default)]
pub struct Faults {
    /// The next N object puts fail with a transient error before reaching the backend.
    pub fail_puts: AtomicU32,
    /// The next N part uploads fail likewise.
    pub fail_parts: AtomicU32,
    /// Every put sleeps this long first (ms).
    pub put_delay_ms: AtomicU64,
    /// Puts never answer while set.
    pub hang_puts: AtomicBool,
    /// Every call fails (the store has gone) while set.
    pub gone: AtomicBool,
    /// After this many more successful puts, the store goes (0: never).
    pub gone_after_puts: AtomicU32,
    pub puts_ok: AtomicU32,
    pub puts_failed: AtomicU32,
    pub creates: AtomicU32,
    pub parts_ok: AtomicU32,
    pub parts_failed: AtomicU32,
    pub completes: AtomicU32,
    pub aborts: AtomicU32,
}

/// `inner` behind [`Faults`].
#[derive(Debug)]
pub struct FaultStore<S> {
    pub inner: S,
    pub f: Arc<Faults>,
}

impl<S: fmt::Display> fmt::Display for FaultStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FaultStore({})", self.inner)
    }
}

pub fn injected(what: &str) -> object_store::Error {
    object_store::Error::Generic { store: "faults", source: format!("injected: {what}").into() }
}

/// Takes one from a countdown; false once it is at zero.
pub fn take(n: &AtomicU32) -> bool {
    n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok()
}

impl<S> FaultStore<S> {
    pub fn new(inner: S) -> (Arc<Self>, Arc<Faults>) {
        let f = Arc::new(Faults::default());
        (Arc::new(FaultStore { inner, f: f.clone() }), f)
    }

    fn check_gone(&self) -> object_store::Result<()> {
        if self.f.gone.load(Ordering::SeqCst) { Err(injected("connection refused")) } else { Ok(()) }
    }
}

#[async_trait]
impl<S: ObjectStore> ObjectStore for FaultStore<S> {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.check_gone()?;
        let delay = self.f.put_delay_ms.load(Ordering::SeqCst);
        if delay > 0 {
            tokio::time::sleep(Duration::from_millis(delay)).await;
        }
        while self.f.hang_puts.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        if take(&self.f.fail_puts) {
            self.f.puts_failed.fetch_add(1, Ordering::SeqCst);
            return Err(injected("put failed"));
        }
        let r = self.inner.put_opts(location, payload, opts).await?;
        self.f.puts_ok.fetch_add(1, Ordering::SeqCst);
        if self.f.gone_after_puts.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) == Ok(1) {
            self.f.gone.store(true, Ordering::SeqCst);
        }
        Ok(r)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.check_gone()?;
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.check_gone()?;
        self.inner.get_opts(location, options).await
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
        self.check_gone()?;
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.check_gone()?;
        self.inner.copy_opts(from, to, options).await
    }
}

#[async_trait]
impl<S: MultipartStore> MultipartStore for FaultStore<S> {
    async fn create_multipart(&self, path: &Path) -> object_store::Result<MultipartId> {
        self.check_gone()?;
        self.f.creates.fetch_add(1, Ordering::SeqCst);
        self.inner.create_multipart(path).await
    }

    async fn put_part(
        &self,
        path: &Path,
        id: &MultipartId,
        part_idx: usize,
        data: PutPayload,
    ) -> object_store::Result<PartId> {
        self.check_gone()?;
        if take(&self.f.fail_parts) {
            self.f.parts_failed.fetch_add(1, Ordering::SeqCst);
            return Err(injected("part upload failed"));
        }
        let r = self.inner.put_part(path, id, part_idx, data).await?;
        self.f.parts_ok.fetch_add(1, Ordering::SeqCst);
        Ok(r)
    }

    async fn complete_multipart(
        &self,
        path: &Path,
        id: &MultipartId,
        parts: Vec<PartId>,
    ) -> object_store::Result<PutResult> {
        self.check_gone()?;
        self.f.completes.fetch_add(1, Ordering::SeqCst);
        self.inner.complete_multipart(path, id, parts).await
    }

    async fn abort_multipart(&self, path: &Path, id: &MultipartId) -> object_store::Result<()> {
        self.check_gone()?;
        self.f.aborts.fetch_add(1, Ordering::SeqCst);
        self.inner.abort_multipart(path, id).await
    }
}

//! The transmission phase: requests read, run (inline when the device can without waiting, else on
//! blocking threads) and answered, many in flight per connection, within the byte budget.

use super::*;

/// Inline writes run on executor threads, and a buffered write blocks for as long as the
/// filesystem does (frozen, a hung disk). Two bounds keep such a write from stopping the server:
/// - at most half of the executor's threads may be inside one at a time (none on a
///   single-threaded executor); a write that finds no free slot goes to a blocking thread;
/// - while a slot is taken, a keeper thread wakes the executor every [`KEEPER_INTERVAL`]: the
///   blocked thread may have been the one polling the I/O driver while the others slept, and a
///   sleeping thread only takes the driver over (and the blocked thread's queued tasks) once woken.
///
/// So a filesystem that stops answering blocks at most half of the threads, and the others keep
/// serving every other connection (and, in `blocksnap serve`, the API). Inline writes take
/// microseconds: one connection, or a few, rarely miss a slot.
pub(super) struct InlineWrites {
    slots: Semaphore,
    total: usize,
}

/// How often the keeper looks for a running inline write.
const KEEPER_INTERVAL: Duration = Duration::from_millis(25);

impl InlineWrites {
    fn start() -> Arc<InlineWrites> {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return Arc::new(InlineWrites { slots: Semaphore::new(0), total: 0 });
        };
        let total = rt.metrics().num_workers() / 2;
        let w = Arc::new(InlineWrites { slots: Semaphore::new(total), total });
        if total == 0 {
            return w;
        }
        let weak = Arc::downgrade(&w);
        let keeper = std::thread::Builder::new().name("nbd-inline-keeper".into()).spawn(move || {
            // Ends once the server is gone.
            while let Some(w) = weak.upgrade() {
                if w.slots.available_permits() < w.total {
                    // From outside the executor: wakes a sleeping worker if there is one.
                    drop(rt.spawn(async {}));
                }
                drop(w);
                std::thread::sleep(KEEPER_INTERVAL);
            }
        });
        match keeper {
            Ok(_) => w,
            Err(e) => {
                tracing::warn!(error = %e, "no keeper thread; NBD writes all go to blocking threads");
                Arc::new(InlineWrites { slots: Semaphore::new(0), total: 0 })
            }
        }
    }
}

impl NbdServer {
    /// The inline write slots, made on the first connection for the executor it runs on.
    fn inline_write_slots(&self) -> &Semaphore {
        &self.inline_writes.get_or_init(InlineWrites::start).slots
    }

    pub(super) async fn transmission<R, W>(self: Arc<Self>, rd: R, wr: W, n: Negotiated)
    where
        R: AsyncRead + Unpin + Send + 'static,
        W: AsyncWrite + Unpin + Send + 'static,
    {
        let metrics = Arc::new(ConnMetrics::new(&n.name));
        let mut rd = BufReader::with_capacity(256 << 10, rd);
        let (tx, rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let writer = tokio::spawn(write_loop(wr, rx));
        let budget_units = (self.config.max_inflight_bytes / BUDGET_UNIT).max(1024) as u32;
        let sem = Arc::new(Semaphore::new(budget_units as usize));
        let ctx = CmdContext {
            size: n.size,
            read_only: n.read_only,
            structured: n.structured,
            base_allocation: n.base_allocation,
        };
        let mut stop = n.reg.stop.clone();
        let device = n.export.device.clone();
        let inline_writes = self.inline_write_slots();
        // Inline writes are paused until then after one stalled.
        let mut inline_writes_after: Option<Instant> = None;

        loop {
            let mut hdr = [0u8; REQUEST_HEADER_LEN];
            let r = tokio::select! {
                biased;
                _ = stop.wait_for(|s| *s != RUN) => break,
                r = rd.read_exact(&mut hdr) => r,
            };
            if r.is_err() {
                // Client closed or vanished: finish what is in flight.
                break;
            }
            let Some(h) = parse_request_header(&hdr) else {
                tracing::debug!(export = %n.name, "bad request magic; disconnecting");
                break;
            };
            let started = Instant::now();
            let cmd = match validate(&h, &ctx) {
                Ok(c) => c,
                Err(refusal) => {
                    metrics.error(op_of_type(h.typ));
                    let payload = payload_len(&h);
                    if !refusal.disconnect && payload > 0 {
                        let discarded =
                            tokio::io::copy(&mut (&mut rd).take(u64::from(payload)), &mut tokio::io::sink()).await;
                        if !matches!(discarded, Ok(x) if x == u64::from(payload)) {
                            break;
                        }
                    }
                    let structured_err = ctx.structured && matches!(h.typ, CMD_READ | CMD_BLOCK_STATUS);
                    let msg = if structured_err {
                        error_chunk(refusal.errno, h.cookie, "request refused")
                    } else {
                        simple_reply(refusal.errno, h.cookie)
                    };
                    let _ = tx.send(msg);
                    if refusal.disconnect {
                        break;
                    }
                    continue;
                }
            };
            let mut payload = Vec::new();
            let units = match cmd {
                Command::Disc => break,
                Command::Write { len, .. } => {
                    payload = vec![0u8; len as usize];
                    let r = tokio::select! {
                        biased;
                        _ = stop.wait_for(|s| *s != RUN) => break,
                        r = rd.read_exact(&mut payload) => r,
                    };
                    if r.is_err() {
                        // Vanished mid-payload: the partial write is never applied.
                        break;
                    }
                    1 + len as usize / BUDGET_UNIT
                }
                Command::Read { len, .. } => 1 + len as usize / BUDGET_UNIT,
                _ => 1,
            };
            if self.config.inline_io
                && let Some((msg, res)) = try_inline(
                    &*device,
                    cmd,
                    h.cookie,
                    &payload,
                    ctx.structured,
                    inline_writes,
                    &mut inline_writes_after,
                )
            {
                let _ = tx.send(msg);
                metrics.record(cmd, res, started.elapsed());
                continue;
            }
            let units = (units as u32).min(budget_units);
            let Ok(permit) = sem.clone().acquire_many_owned(units).await else {
                break;
            };
            let (device, tx, metrics) = (device.clone(), tx.clone(), metrics.clone());
            let structured = ctx.structured;
            let cookie = h.cookie;
            tokio::task::spawn_blocking(move || {
                let (msg, res) = execute(&*device, cmd, cookie, payload, structured);
                let _ = tx.send(msg);
                metrics.record(cmd, res, started.elapsed());
                drop(permit);
            });
        }
        let abort = writer.abort_handle();
        let cut = *stop.borrow() == CUT;
        if cut {
            // Access was revoked: nothing more reaches the client.
            abort.abort();
        }
        // Drain: every in-flight request finishes on the device (and, unless
        // cut, is answered) before the connection counts as gone.
        let _ = sem.acquire_many(budget_units).await;
        drop(tx);
        // A client that stopped reading must not hold a close forever.
        if !cut && tokio::time::timeout(CLOSE_GRACE, writer).await.is_err() {
            tracing::debug!(export = %n.name, "client not reading replies; dropping it");
            abort.abort();
        }
        drop(n.reg);
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(wr: W, mut rx: mpsc::UnboundedReceiver<Vec<u8>>) {
    let mut w = BufWriter::with_capacity(256 << 10, wr);
    while let Some(buf) = rx.recv().await {
        if w.write_all(&buf).await.is_err() {
            return;
        }
        // Batch whatever else is ready into one flush.
        while let Ok(buf) = rx.try_recv() {
            if w.write_all(&buf).await.is_err() {
                return;
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

fn op_of_type(typ: u16) -> Op {
    match typ {
        CMD_READ => Op::Read,
        CMD_WRITE => Op::Write,
        CMD_FLUSH => Op::Flush,
        CMD_TRIM => Op::Trim,
        CMD_WRITE_ZEROES => Op::WriteZeroes,
        CMD_BLOCK_STATUS => Op::BlockStatus,
        CMD_CACHE => Op::Cache,
        _ => Op::Other,
    }
}

fn read_header_len(structured: bool) -> usize {
    if structured { CHUNK_HEADER_LEN + 8 } else { SIMPLE_HEADER_LEN }
}

/// Fills in the header of a read reply whose data is in place.
fn read_done(mut buf: Vec<u8>, structured: bool, cookie: u64, offset: u64, len: u32) -> (Vec<u8>, Result<u64, u32>) {
    if structured {
        put_chunk_header(&mut buf, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + len);
        buf[CHUNK_HEADER_LEN..CHUNK_HEADER_LEN + 8].copy_from_slice(&offset.to_be_bytes());
    } else {
        put_simple_header(&mut buf, 0, cookie);
    }
    (buf, Ok(u64::from(len)))
}

fn read_failed(e: &io::Error, structured: bool, cookie: u64) -> (Vec<u8>, Result<u64, u32>) {
    let errno = errno_of(e);
    tracing::debug!(error = %e, errno, "nbd read failed");
    let msg = if structured { error_chunk(errno, cookie, "read failed") } else { simple_reply(errno, cookie) };
    (msg, Err(errno))
}

/// Serves a small read or write on the calling (async) task when the device
/// can do it without waiting; `None` sends it to a blocking thread. A read
/// never blocks (`RWF_NOWAIT`); a write holds one of `write_slots` while it
/// runs, so a hung filesystem blocks only as many executor threads as there
/// are slots.
fn try_inline(
    dev: &dyn BlockDevice,
    cmd: Command,
    cookie: u64,
    payload: &[u8],
    structured: bool,
    write_slots: &Semaphore,
    writes_after: &mut Option<Instant>,
) -> Option<(Vec<u8>, Result<u64, u32>)> {
    match cmd {
        Command::Read { offset, len } if len <= INLINE_MAX => {
            let hdr = read_header_len(structured);
            let mut buf = vec![0u8; hdr + len as usize];
            match dev.try_read_at(offset, &mut buf[hdr..]) {
                Ok(true) => Some(read_done(buf, structured, cookie, offset, len)),
                Ok(false) => None,
                Err(e) => Some(read_failed(&e, structured, cookie)),
            }
        }
        Command::Write { offset, len, fua: false }
            if len <= INLINE_MAX && writes_after.is_none_or(|t| Instant::now() >= t) =>
        {
            let _slot = write_slots.try_acquire().ok()?;
            let t = Instant::now();
            match dev.try_write_at(offset, payload) {
                Ok(true) => {
                    if t.elapsed() > INLINE_STALL {
                        tracing::debug!(took = ?t.elapsed(), "inline write stalled; offloading writes for a while");
                        *writes_after = Some(Instant::now() + INLINE_BACKOFF);
                    }
                    Some((simple_reply(0, cookie), Ok(u64::from(len))))
                }
                Ok(false) => None,
                Err(e) => {
                    let errno = errno_of(&e);
                    Some((simple_reply(errno, cookie), Err(errno)))
                }
            }
        }
        _ => None,
    }
}

/// Runs one command on the device (blocking) and builds its reply. Returns
/// the reply and `Ok(bytes moved)` or `Err(errno)`.
fn execute(
    dev: &dyn BlockDevice,
    cmd: Command,
    cookie: u64,
    payload: Vec<u8>,
    structured: bool,
) -> (Vec<u8>, Result<u64, u32>) {
    let simple = |r: io::Result<()>, bytes: u64| match r {
        Ok(()) => (simple_reply(0, cookie), Ok(bytes)),
        Err(e) => {
            let errno = errno_of(&e);
            tracing::debug!(?cmd, error = %e, errno, "nbd request failed");
            (simple_reply(errno, cookie), Err(errno))
        }
    };
    let then_flush = |r: io::Result<()>, fua: bool| r.and_then(|()| if fua { dev.flush() } else { Ok(()) });
    match cmd {
        Command::Read { offset, len } => {
            let hdr = if structured { CHUNK_HEADER_LEN + 8 } else { SIMPLE_HEADER_LEN };
            let mut buf = vec![0u8; hdr + len as usize];
            match dev.read_at(offset, &mut buf[hdr..]) {
                Ok(()) => {
                    if structured {
                        put_chunk_header(&mut buf, REPLY_FLAG_DONE, REPLY_TYPE_OFFSET_DATA, cookie, 8 + len);
                        buf[CHUNK_HEADER_LEN..hdr].copy_from_slice(&offset.to_be_bytes());
                    } else {
                        put_simple_header(&mut buf, 0, cookie);
                    }
                    (buf, Ok(u64::from(len)))
                }
                Err(e) => {
                    let errno = errno_of(&e);
                    tracing::debug!(offset, len, error = %e, "nbd read failed");
                    let msg = if structured {
                        error_chunk(errno, cookie, "read failed")
                    } else {
                        simple_reply(errno, cookie)
                    };
                    (msg, Err(errno))
                }
            }
        }
        Command::Write { offset, len, fua } => simple(dev.write_at(offset, &payload, fua), u64::from(len)),
        Command::Flush => simple(dev.flush(), 0),
        Command::Trim { offset, len, fua } => simple(then_flush(dev.trim(offset, u64::from(len)), fua), u64::from(len)),
        Command::WriteZeroes { offset, len, fua, no_hole, fast } => {
            simple(then_flush(dev.write_zeroes(offset, u64::from(len), !no_hole, fast), fua), u64::from(len))
        }
        Command::Cache { offset, len } => simple(dev.cache(offset, u64::from(len)), u64::from(len)),
        Command::BlockStatus { offset, len, req_one } => {
            match dev.block_status(offset, u64::from(len)) {
                Ok(extents) => {
                    let mut out: Vec<(u32, u32)> = Vec::new();
                    let mut left = u64::from(len);
                    for e in extents {
                        if left == 0 || out.len() >= 1 << 20 {
                            break;
                        }
                        let l = e.len.min(left);
                        if l == 0 {
                            continue;
                        }
                        let flags = (if e.hole { STATE_HOLE } else { 0 }) | (if e.zero { STATE_ZERO } else { 0 });
                        match out.last_mut() {
                            Some(last) if last.1 == flags => last.0 += l as u32,
                            _ => out.push((l as u32, flags)),
                        }
                        left -= l;
                    }
                    if out.is_empty() {
                        // The device said nothing: claim data, which is always safe.
                        out.push((len, 0));
                    }
                    if req_one {
                        out.truncate(1);
                    }
                    (block_status_chunk(cookie, &out), Ok(0))
                }
                Err(e) => {
                    let errno = errno_of(&e);
                    (error_chunk(errno, cookie, "block status failed"), Err(errno))
                }
            }
        }
        // Handled by the reader.
        Command::Disc => (Vec::new(), Ok(0)),
    }
}

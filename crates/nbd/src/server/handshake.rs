//! The handshake: the server hello, STARTTLS and the TLS handshake, option haggling up to the
//! export the client chose.

use super::*;

#[derive(Debug, thiserror::Error)]
pub(super) enum HandshakeError {
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("protocol: {0}")]
    Protocol(&'static str),
    #[error("tls: {0}")]
    Tls(String),
}

fn transmission_flags(read_only: bool) -> u16 {
    let mut f = TF_HAS_FLAGS
        | TF_SEND_FLUSH
        | TF_SEND_FUA
        | TF_SEND_TRIM
        | TF_SEND_WRITE_ZEROES
        | TF_SEND_DF
        | TF_CAN_MULTI_CONN
        | TF_SEND_CACHE
        | TF_SEND_FAST_ZERO;
    if read_only {
        f |= TF_READ_ONLY;
    }
    f
}

impl NbdServer {
    /// The handshake of a TLS-only server: hello, options until
    /// `NBD_OPT_STARTTLS`, the TLS handshake (PSK: it authenticates the client),
    /// then the usual option haggling inside TLS.
    #[allow(clippy::type_complexity)]
    pub(super) async fn handshake_tls<S: AsyncRead + AsyncWrite + Unpin>(
        self: &Arc<Self>,
        tls: &TlsConfig,
        mut stream: S,
    ) -> Result<
        Option<(tokio::io::ReadHalf<TlsStream<S>>, tokio::io::WriteHalf<TlsStream<S>>, Negotiated)>,
        HandshakeError,
    > {
        let no_zeroes = hello(&mut stream).await?;
        if !await_starttls(&mut stream).await? {
            let _ = stream.shutdown().await;
            return Ok(None);
        }
        let ssl = tls.new_session().map_err(|e| HandshakeError::Tls(e.to_string()))?;
        // Buffered below TLS: OpenSSL writes each 16 KiB record and reads each record header and
        // body separately; the buffers turn that into one syscall per batch (flushed when we flush).
        let buffered = tokio::io::BufStream::with_capacity(TLS_IO_BUFFER, TLS_IO_BUFFER, stream);
        let mut s = tokio_openssl::SslStream::new(ssl, buffered).map_err(|e| HandshakeError::Tls(e.to_string()))?;
        std::pin::Pin::new(&mut s).accept().await.map_err(|e| HandshakeError::Tls(e.to_string()))?;
        let Some(identity) = crate::tls::authenticated_identity(s.ssl()) else {
            return Err(HandshakeError::Tls("no authenticated identity".into()));
        };
        tracing::debug!(
            version = s.ssl().version_str(),
            cipher = s.ssl().current_cipher().map(|c| c.name()).unwrap_or("?"),
            "nbd tls established"
        );
        let client = Client { identity: Some(identity) };
        let (mut rd, mut wr) = tokio::io::split(s);
        match self.options(&mut rd, &mut wr, no_zeroes, &client, true).await? {
            Some(neg) => Ok(Some((rd, wr, neg))),
            None => {
                let _ = wr.shutdown().await;
                Ok(None)
            }
        }
    }

    /// The plaintext handshake: hello, then option haggling with no identity.
    pub(super) async fn handshake<R, W>(
        self: &Arc<Self>,
        rd: &mut R,
        wr: &mut W,
    ) -> Result<Option<Negotiated>, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let no_zeroes = hello_split(rd, wr).await?;
        self.options(rd, wr, no_zeroes, &Client::default(), false).await
    }

    /// Option haggling until an export is chosen (`Some`) or the client aborts.
    async fn options<R, W>(
        self: &Arc<Self>,
        rd: &mut R,
        wr: &mut W,
        no_zeroes: bool,
        client: &Client,
        tls_active: bool,
    ) -> Result<Option<Negotiated>, HandshakeError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut structured = false;
        // Export the base:allocation context was selected for.
        let mut meta_for: Option<String> = None;

        loop {
            let mut h = [0u8; 16];
            rd.read_exact(&mut h).await?;
            let (opt, len) = parse_option_header(&h).ok_or(HandshakeError::Protocol("bad option magic"))?;
            if len > MAX_OPTION_DISCARD {
                return Err(HandshakeError::Protocol("option too long"));
            }
            let mut data = vec![0u8; len as usize];
            rd.read_exact(&mut data).await?;
            if len > MAX_OPTION_LEN {
                reply(wr, opt, REP_ERR_TOO_BIG, b"option too long").await?;
                continue;
            }
            match opt {
                OPT_EXPORT_NAME => {
                    let name =
                        String::from_utf8(data).map_err(|_| HandshakeError::Protocol("export name is not UTF-8"))?;
                    // This option has no way to report an error: just close.
                    let Some((export, reg)) = self.register(client, &name) else {
                        return Err(HandshakeError::Protocol("unknown export (EXPORT_NAME)"));
                    };
                    let n = self.negotiated(name, export, reg, structured, &meta_for);
                    let mut v = Vec::with_capacity(10 + 124);
                    v.extend_from_slice(&n.size.to_be_bytes());
                    v.extend_from_slice(&transmission_flags(n.read_only).to_be_bytes());
                    if !no_zeroes {
                        v.extend_from_slice(&[0u8; 124]);
                    }
                    wr.write_all(&v).await?;
                    wr.flush().await?;
                    return Ok(Some(n));
                }
                OPT_ABORT => {
                    // Best effort: the client may already be gone.
                    let _ = reply(wr, opt, REP_ACK, &[]).await;
                    return Ok(None);
                }
                OPT_LIST => {
                    if !data.is_empty() {
                        reply(wr, opt, REP_ERR_INVALID, b"LIST takes no data").await?;
                        continue;
                    }
                    for name in self.resolver.list(client) {
                        let mut d = (name.len() as u32).to_be_bytes().to_vec();
                        d.extend_from_slice(name.as_bytes());
                        wr.write_all(&option_reply(opt, REP_SERVER, &d)).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_INFO | OPT_GO => {
                    let Some(req) = parse_info_request(&data) else {
                        reply(wr, opt, REP_ERR_INVALID, b"malformed request").await?;
                        continue;
                    };
                    let found = if opt == OPT_GO {
                        self.register(client, &req.name).map(|(e, r)| (e, Some(r)))
                    } else {
                        self.resolver.lookup(client, &req.name).map(|e| (e, None))
                    };
                    let Some((export, reg)) = found else {
                        reply(wr, opt, REP_ERR_UNKNOWN, b"unknown export").await?;
                        continue;
                    };
                    let read_only = export.read_only || export.device.read_only();
                    let size = export.device.size();
                    let mut d = INFO_EXPORT.to_be_bytes().to_vec();
                    d.extend_from_slice(&size.to_be_bytes());
                    d.extend_from_slice(&transmission_flags(read_only).to_be_bytes());
                    wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    let mut d = INFO_BLOCK_SIZE.to_be_bytes().to_vec();
                    for v in [MIN_BLOCK, PREFERRED_BLOCK, MAX_PAYLOAD] {
                        d.extend_from_slice(&v.to_be_bytes());
                    }
                    wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    if req.infos.contains(&INFO_NAME) {
                        let mut d = INFO_NAME.to_be_bytes().to_vec();
                        d.extend_from_slice(req.name.as_bytes());
                        wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    }
                    if let Some(desc) = export.description.as_ref().filter(|_| req.infos.contains(&INFO_DESCRIPTION)) {
                        let mut d = INFO_DESCRIPTION.to_be_bytes().to_vec();
                        d.extend_from_slice(&desc.as_bytes()[..desc.len().min(MAX_STRING)]);
                        wr.write_all(&option_reply(opt, REP_INFO, &d)).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                    if let Some(reg) = reg {
                        return Ok(Some(self.negotiated(req.name, export, reg, structured, &meta_for)));
                    }
                }
                OPT_STRUCTURED_REPLY => {
                    if !data.is_empty() {
                        reply(wr, opt, REP_ERR_INVALID, b"takes no data").await?;
                        continue;
                    }
                    structured = true;
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_LIST_META_CONTEXT | OPT_SET_META_CONTEXT => {
                    if !structured {
                        reply(wr, opt, REP_ERR_INVALID, b"needs structured replies").await?;
                        continue;
                    }
                    let Some(req) = parse_meta_request(&data) else {
                        reply(wr, opt, REP_ERR_INVALID, b"malformed request").await?;
                        continue;
                    };
                    if self.resolver.lookup(client, &req.name).is_none() {
                        reply(wr, opt, REP_ERR_UNKNOWN, b"unknown export").await?;
                        continue;
                    }
                    let listing = opt == OPT_LIST_META_CONTEXT;
                    let selected = if listing && req.queries.is_empty() {
                        true
                    } else {
                        req.queries.iter().any(|q| meta_matches(q, listing))
                    };
                    if !listing {
                        meta_for = selected.then(|| req.name.clone());
                    }
                    if selected {
                        let mut d = BASE_ALLOCATION_ID.to_be_bytes().to_vec();
                        d.extend_from_slice(BASE_ALLOCATION.as_bytes());
                        wr.write_all(&option_reply(opt, REP_META_CONTEXT, &d)).await?;
                    }
                    reply(wr, opt, REP_ACK, &[]).await?;
                }
                OPT_STARTTLS if tls_active => {
                    reply(wr, opt, REP_ERR_INVALID, b"TLS is already active").await?;
                }
                OPT_STARTTLS => {
                    reply(wr, opt, REP_ERR_POLICY, b"TLS is not offered").await?;
                }
                _ => {
                    reply(wr, opt, REP_ERR_UNSUP, b"unsupported option").await?;
                }
            }
        }
    }

    fn negotiated(
        &self,
        name: String,
        export: Export,
        reg: Registration,
        structured: bool,
        meta_for: &Option<String>,
    ) -> Negotiated {
        let base_allocation = structured && meta_for.as_deref() == Some(name.as_str());
        Negotiated {
            size: export.device.size(),
            read_only: export.read_only || export.device.read_only(),
            name,
            export,
            structured,
            base_allocation,
            reg,
        }
    }
}

/// Sends the server hello and reads the client's flags; returns whether the
/// client asked for no zeroes after `NBD_OPT_EXPORT_NAME`.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, HandshakeError> {
    let mut h = Vec::with_capacity(18);
    h.extend_from_slice(&NBDMAGIC.to_be_bytes());
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    s.write_all(&h).await?;
    s.flush().await?;
    client_flags(s.read_u32().await?)
}

async fn hello_split<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    rd: &mut R,
    wr: &mut W,
) -> Result<bool, HandshakeError> {
    let mut h = Vec::with_capacity(18);
    h.extend_from_slice(&NBDMAGIC.to_be_bytes());
    h.extend_from_slice(&IHAVEOPT.to_be_bytes());
    h.extend_from_slice(&(FLAG_FIXED_NEWSTYLE | FLAG_NO_ZEROES).to_be_bytes());
    wr.write_all(&h).await?;
    wr.flush().await?;
    client_flags(rd.read_u32().await?)
}

fn client_flags(flags: u32) -> Result<bool, HandshakeError> {
    if flags & !(CLIENT_FIXED_NEWSTYLE | CLIENT_NO_ZEROES) != 0 {
        return Err(HandshakeError::Protocol("unknown client flags"));
    }
    if flags & CLIENT_FIXED_NEWSTYLE == 0 {
        return Err(HandshakeError::Protocol("client is not fixed-newstyle"));
    }
    Ok(flags & CLIENT_NO_ZEROES != 0)
}

/// Option haggling before TLS on a TLS-only server: only `STARTTLS` (true)
/// and `ABORT` (false) are served; anything else is `NBD_REP_ERR_TLS_REQD`,
/// and `EXPORT_NAME` (which cannot be refused) ends the connection.
async fn await_starttls<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S) -> Result<bool, HandshakeError> {
    for _ in 0..MAX_OPTIONS_BEFORE_TLS {
        let mut h = [0u8; 16];
        s.read_exact(&mut h).await?;
        let (opt, len) = parse_option_header(&h).ok_or(HandshakeError::Protocol("bad option magic"))?;
        if len > MAX_OPTION_DISCARD {
            return Err(HandshakeError::Protocol("option too long"));
        }
        let skipped = tokio::io::copy(&mut (&mut *s).take(u64::from(len)), &mut tokio::io::sink()).await?;
        if skipped != u64::from(len) {
            return Err(HandshakeError::Protocol("short option"));
        }
        match opt {
            OPT_STARTTLS if len == 0 => {
                reply(s, opt, REP_ACK, &[]).await?;
                return Ok(true);
            }
            OPT_STARTTLS => reply(s, opt, REP_ERR_INVALID, b"STARTTLS takes no data").await?,
            OPT_ABORT => {
                let _ = reply(s, opt, REP_ACK, &[]).await;
                return Ok(false);
            }
            OPT_EXPORT_NAME => return Err(HandshakeError::Protocol("EXPORT_NAME before STARTTLS")),
            _ => {
                reply(s, opt, REP_ERR_TLS_REQD, b"this server requires TLS (NBD_OPT_STARTTLS) with a PSK credential")
                    .await?
            }
        }
    }
    Err(HandshakeError::Protocol("too many options before STARTTLS"))
}

async fn reply<W: AsyncWrite + Unpin>(wr: &mut W, opt: u32, typ: u32, data: &[u8]) -> io::Result<()> {
    wr.write_all(&option_reply(opt, typ, data)).await?;
    wr.flush().await
}

//! TLS for `NBD_OPT_STARTTLS` with pre-shared keys (RFC 4279 / TLS 1.3
//! external PSK), through OpenSSL: qemu and libnbd (gnutls) speak PSK, and a
//! PSK identity names a credential directly, with no certificates or host names
//! to manage. rustls has no external-PSK support, hence OpenSSL.

use std::fmt;
use std::sync::{Arc, OnceLock};

use openssl::ex_data::Index;
use openssl::ssl::{
    Ssl, SslContext, SslContextBuilder, SslMethod, SslOptions, SslRef, SslSessionCacheMode, SslVersion,
};

pub use openssl::error::ErrorStack;

/// Looks a PSK identity up and returns its key (`None`: unknown identity, the
/// handshake fails). Called on the async executor during a handshake: keep it
/// quick (an in-memory lookup).
pub type PskLookup = Arc<dyn Fn(&str) -> Option<Vec<u8>> + Send + Sync>;

/// Server-side TLS settings for the NBD listener.
pub struct TlsConfig {
    ctx: SslContext,
}

impl fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("TlsConfig(psk)")
    }
}

/// Where the handshake leaves the identity the client authenticated with.
fn identity_index() -> Result<Index<Ssl, String>, ErrorStack> {
    static INDEX: OnceLock<Index<Ssl, String>> = OnceLock::new();
    if let Some(i) = INDEX.get() {
        return Ok(*i);
    }
    let i = Ssl::new_ex_index::<String>()?;
    Ok(*INDEX.get_or_init(|| i))
}

/// Longest PSK identity accepted (RFC 4279 allows 2^16 - 1; ours are short).
const MAX_IDENTITY: usize = 128;

impl TlsConfig {
    /// PSK-only TLS 1.2/1.3: (EC)DHE-PSK and PSK suites with AES-GCM or
    /// ChaCha20-Poly1305 for TLS 1.2, the TLS 1.3 AEAD suites (qemu and libnbd
    /// negotiate TLS 1.3 with `psk_dhe_ke`, so sessions have forward secrecy).
    pub fn psk(lookup: PskLookup) -> Result<TlsConfig, ErrorStack> {
        let index = identity_index()?;
        let mut b = SslContextBuilder::new(SslMethod::tls_server())?;
        b.set_min_proto_version(Some(SslVersion::TLS1_2))?;
        b.set_options(SslOptions::NO_TICKET | SslOptions::NO_RENEGOTIATION | SslOptions::CIPHER_SERVER_PREFERENCE);
        // No resumption: every connection authenticates with its credential's PSK (a resumed
        // session would skip the lookup, i.e. the credential check and its revocation), and a
        // client is never sent tickets it cannot use.
        b.set_num_tickets(0)?;
        b.set_session_cache_mode(SslSessionCacheMode::OFF);
        b.set_cipher_list(
            "ECDHE-PSK-CHACHA20-POLY1305:DHE-PSK-AES256-GCM-SHA384:DHE-PSK-AES128-GCM-SHA256:\
             DHE-PSK-CHACHA20-POLY1305:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256",
        )?;
        b.set_ciphersuites("TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA384:TLS_CHACHA20_POLY1305_SHA256")?;
        b.set_psk_server_callback(move |ssl: &mut SslRef, identity: Option<&[u8]>, out: &mut [u8]| {
            let Some(id) = identity.and_then(|i| std::str::from_utf8(i).ok()).filter(|i| i.len() <= MAX_IDENTITY)
            else {
                return Ok(0);
            };
            let Some(key) = lookup(id) else {
                tracing::debug!("nbd tls: unknown psk identity");
                return Ok(0);
            };
            if key.is_empty() || key.len() > out.len() {
                return Ok(0);
            }
            out[..key.len()].copy_from_slice(&key);
            ssl.set_ex_data(index, id.to_string());
            Ok(key.len())
        });
        Ok(TlsConfig { ctx: b.build() })
    }

    pub(crate) fn new_session(&self) -> Result<Ssl, ErrorStack> {
        Ssl::new(&self.ctx)
    }
}

/// The PSK identity a finished handshake authenticated.
pub(crate) fn authenticated_identity(ssl: &SslRef) -> Option<String> {
    let index = identity_index().ok()?;
    ssl.ex_data(index).cloned()
}

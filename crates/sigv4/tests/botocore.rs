//! Verifies requests signed by the real botocore signer (fixtures/gen_botocore.py).

use std::path::Path;
use std::process::Command;

use blocksnap_sigv4::{AuthError, AuthForm, ParsedAuth, PayloadHash, parse, verify};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Uri};
use serde::Deserialize;
use time::{Duration, OffsetDateTime, PrimitiveDateTime, macros::format_description};

#[derive(Debug, Clone, Deserialize)]
struct Fixture {
    name: String,
    form: String,
    method: String,
    url: String,
    headers: Vec<(String, String)>,
    body_b64: String,
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    amz_date: String,
    region: String,
    service: String,
}

#[derive(Debug, Deserialize)]
struct FixtureFile {
    requests: Vec<Fixture>,
}

/// A request as the server receives it.
#[derive(Debug, Clone)]
struct Req {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Req {
    fn parse(&self) -> Result<ParsedAuth, AuthError> {
        parse(&self.method, &self.uri, &self.headers)
    }
    fn check(&self, secret: &str, now: OffsetDateTime) -> Result<ParsedAuth, AuthError> {
        let parsed = self.parse()?;
        verify(&parsed, secret, &self.method, &self.uri, &self.headers, &self.body, now)?;
        Ok(parsed)
    }
    fn set_header(&mut self, name: &str, value: &str) {
        self.headers.insert(HeaderName::from_bytes(name.as_bytes()).unwrap(), HeaderValue::from_str(value).unwrap());
    }
    fn set_path_and_query(&mut self, pq: &str) {
        self.uri = pq.parse().unwrap();
    }
    fn pq(&self) -> String {
        self.uri.path_and_query().unwrap().as_str().to_owned()
    }
}

fn b64decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut acc = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = ALPHABET.iter().position(|&a| a == c).unwrap() as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

fn amz_time(s: &str) -> OffsetDateTime {
    PrimitiveDateTime::parse(s, format_description!("[year][month][day]T[hour][minute][second]Z")).unwrap().assume_utc()
}

impl Fixture {
    fn request(&self) -> Req {
        let full: Uri = self.url.parse().unwrap();
        let mut headers = HeaderMap::new();
        for (k, v) in &self.headers {
            headers.append(HeaderName::from_bytes(k.as_bytes()).unwrap(), HeaderValue::from_str(v).unwrap());
        }
        // urllib3 adds Host on the wire; botocore signed it from the URL.
        if !headers.contains_key("host") {
            headers.insert("host", HeaderValue::from_str(full.authority().unwrap().as_str()).unwrap());
        }
        Req {
            method: self.method.parse().unwrap(),
            // The server sees the origin form.
            uri: full.path_and_query().unwrap().as_str().parse().unwrap(),
            headers,
            body: b64decode(&self.body_b64),
        }
    }
    fn signed_at(&self) -> OffsetDateTime {
        amz_time(&self.amz_date)
    }
    fn presigned(&self) -> bool {
        self.form == "presigned"
    }
}

fn committed() -> Vec<Fixture> {
    let text = include_str!("fixtures/botocore_requests.json");
    let file: FixtureFile = serde_json::from_str(text).unwrap();
    assert!(file.requests.len() >= 10, "fixture file lost requests");
    file.requests
}

fn expect_err(name: &str, what: &str, r: Result<ParsedAuth, AuthError>) -> AuthError {
    match r {
        Ok(p) => panic!("{name}: {what}: unexpectedly verified: {p:?}"),
        Err(e) => e,
    }
}

fn assert_mismatch(name: &str, what: &str, r: Result<ParsedAuth, AuthError>) {
    let e = expect_err(name, what, r);
    assert_eq!(e, AuthError::SignatureMismatch, "{name}: {what}");
    assert_eq!(e.aws_code(), "AuthFailure");
    assert_eq!(e.http_status(), 401);
}

fn verify_all_ok(fixtures: &[Fixture]) {
    for f in fixtures {
        let req = f.request();
        let now = f.signed_at() + Duration::minutes(1);
        let parsed = req.check(&f.secret_access_key, now).unwrap_or_else(|e| panic!("{}: {e:?}", f.name));
        assert_eq!(parsed.access_key_id, f.access_key_id, "{}", f.name);
        assert_eq!(parsed.region, f.region, "{}", f.name);
        assert_eq!(parsed.service, f.service, "{}", f.name);
        assert_eq!(parsed.date, &f.amz_date[..8], "{}", f.name);
        assert_eq!(parsed.amz_date, f.amz_date, "{}", f.name);
        assert_eq!(parsed.security_token, f.session_token, "{}", f.name);
        assert_eq!(matches!(parsed.form, AuthForm::Presigned { .. }), f.presigned(), "{}", f.name);
    }
}

#[test]
fn committed_botocore_requests_verify() {
    let fixtures = committed();
    verify_all_ok(&fixtures);
    let names: Vec<&str> = fixtures.iter().map(|f| f.name.as_str()).collect();
    for needed in [
        "ec2_describe_volumes_post",
        "ec2_get_query_slash_tilde",
        "lightsail_json_target",
        "ec2_session_token",
        "ec2_copy_snapshot_presigned_url",
        "ec2_copy_snapshot_presigned_url_token",
        "ebs_presigned_unsigned_payload",
        "ebs_put_snapshot_block_unsigned",
        "ebs_put_hex_content_sha256",
        "ebs_get_encoded_path",
    ] {
        assert!(names.contains(&needed), "missing fixture {needed}");
    }
}

/// Runs the generator with the installed botocore, so a botocore upgrade that changes what it
/// signs is caught. Skipped (with a message) only when python3 or botocore is unavailable.
#[test]
fn live_botocore_requests_verify() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/gen_botocore.py");
    let out = match Command::new("python3").arg(&script).output() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("SKIP live botocore test: cannot run python3: {e}");
            return;
        }
    };
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if stderr.contains("No module named 'botocore'") {
            eprintln!("SKIP live botocore test: botocore not installed");
            return;
        }
        panic!("gen_botocore.py failed: {stderr}");
    }
    let file: FixtureFile = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(file.requests.len(), committed().len());
    verify_all_ok(&file.requests);
}

#[test]
fn tampered_body_fails() {
    for f in committed() {
        let mut req = f.request();
        if req.body.is_empty() {
            continue;
        }
        let last = req.body.len() - 1;
        req.body[last] ^= 0x01;
        let r = req.check(&f.secret_access_key, f.signed_at());
        match req.parse().unwrap().payload {
            PayloadHash::Body => assert_mismatch(&f.name, "body byte", r),
            PayloadHash::Sha256(_) => {
                let e = expect_err(&f.name, "body byte", r);
                assert_eq!(e, AuthError::ContentHashMismatch, "{}", f.name);
                assert_eq!(e.aws_code(), "AuthFailure");
            }
            // The client declared the body unsigned (EBS PutSnapshotBlock): still valid.
            PayloadHash::Unsigned { .. } => {
                r.unwrap();
            }
            PayloadHash::Presigned => unreachable!(),
        }
    }
}

/// What `covers_body` says of each real request: botocore hashes the body of every EC2 Query and
/// JSON request; only the EBS PUT with `UNSIGNED-PAYLOAD` leaves it unsigned; a presigned URL
/// covers no body at all.
#[test]
fn covers_body_of_real_requests() {
    for f in committed() {
        let req = f.request();
        let parsed = req.check(&f.secret_access_key, f.signed_at()).unwrap();
        let expected = f.name != "ebs_put_snapshot_block_unsigned";
        assert_eq!(parsed.covers_body(&req.body), expected, "{}", f.name);
        if f.name.starts_with("ec2_") || f.name.starts_with("lightsail_") {
            assert!(parsed.covers_body(&req.body), "{}: botocore must sign the Query/JSON body", f.name);
        }
        if f.presigned() {
            assert!(!parsed.covers_body(b"Action=CreateVolume"), "{}: a presigned URL signs no body", f.name);
        }
        if f.name == "lightsail_json_target" {
            assert!(parsed.signs_header("x-amz-target"), "botocore signs X-Amz-Target");
        }
    }
}

#[test]
fn tampered_signed_header_fails_unsigned_header_does_not_matter() {
    for f in committed() {
        let req = f.request();
        let parsed = req.parse().unwrap();
        for h in &parsed.signed_headers {
            if h == "x-amz-date" {
                continue; // changing it is covered by the time / scope tests
            }
            let mut bad = req.clone();
            let old = bad.headers.get(h.as_str()).unwrap().to_str().unwrap().to_owned();
            let new = if h == "host" { "127.0.0.1:4567".to_owned() } else { format!("{old}x") };
            bad.set_header(h, &new);
            let what = format!("header {h}");
            let r = bad.check(&f.secret_access_key, f.signed_at());
            if h == "x-amz-content-sha256" {
                // Now not a valid payload hash value at all.
                assert!(matches!(r, Err(AuthError::Malformed(_))), "{}: {r:?}", f.name);
            } else {
                assert_mismatch(&f.name, &what, r);
            }
        }
        // Headers that are not signed may change (proxies rewrite User-Agent).
        let mut ok = req.clone();
        ok.set_header("user-agent", "something else");
        ok.set_header("x-forwarded-for", "10.0.0.1");
        ok.check(&f.secret_access_key, f.signed_at()).unwrap_or_else(|e| panic!("{}: {e:?}", f.name));
    }
}

#[test]
fn wrong_secret_fails() {
    for f in committed() {
        let req = f.request();
        let mut secret = f.secret_access_key.clone().into_bytes();
        secret[0] ^= 0x20;
        let secret = String::from_utf8(secret).unwrap();
        assert_mismatch(&f.name, "secret", req.check(&secret, f.signed_at()));
        assert_mismatch(&f.name, "empty secret", req.check("", f.signed_at()));
    }
}

#[test]
fn tampered_query_fails() {
    for f in committed() {
        let req = f.request();
        let pq = req.pq();
        // Add a parameter.
        let mut bad = req.clone();
        let sep = if pq.contains('?') { '&' } else { '?' };
        bad.set_path_and_query(&format!("{pq}{sep}DryRun=true"));
        assert_mismatch(&f.name, "added query parameter", bad.check(&f.secret_access_key, f.signed_at()));
        // Change the value of the first operation parameter.
        if let Some(q) = req.uri.query() {
            let (first, rest) = q.split_once('&').unwrap_or((q, ""));
            assert!(!first.starts_with("X-Amz-"), "{}: {q}", f.name);
            let changed = format!("{first}x&{rest}");
            let changed = changed.trim_end_matches('&');
            let mut bad = req.clone();
            bad.set_path_and_query(&format!("{}?{changed}", req.uri.path()));
            assert_mismatch(&f.name, "query value", bad.check(&f.secret_access_key, f.signed_at()));
        }
        // Change the path.
        let mut bad = req.clone();
        bad.set_path_and_query(&pq.replacen('/', "/x/", 1));
        assert_mismatch(&f.name, "path", bad.check(&f.secret_access_key, f.signed_at()));
        // Change the method.
        let mut bad = req.clone();
        bad.method = if req.method == Method::GET { Method::POST } else { Method::GET };
        assert_mismatch(&f.name, "method", bad.check(&f.secret_access_key, f.signed_at()));
    }
}

#[test]
fn header_form_clock_skew() {
    for f in committed().iter().filter(|f| !f.presigned()) {
        let req = f.request();
        let t = f.signed_at();
        req.check(&f.secret_access_key, t + Duration::minutes(15)).unwrap();
        req.check(&f.secret_access_key, t - Duration::minutes(15)).unwrap();
        let e = expect_err(&f.name, "+16 min", req.check(&f.secret_access_key, t + Duration::minutes(16)));
        assert!(matches!(e, AuthError::Expired { .. }), "{}: {e:?}", f.name);
        assert_eq!(e.aws_code(), "RequestExpired");
        assert_eq!(e.http_status(), 400);
        let e = expect_err(&f.name, "-16 min", req.check(&f.secret_access_key, t - Duration::minutes(16)));
        assert!(matches!(e, AuthError::NotYetValid { .. }), "{}: {e:?}", f.name);
        assert_eq!(e.aws_code(), "RequestExpired");
    }
}

#[test]
fn presigned_expiry() {
    let mut seen = 0;
    for f in committed().iter().filter(|f| f.presigned()) {
        seen += 1;
        let req = f.request();
        let parsed = req.parse().unwrap();
        let AuthForm::Presigned { expires_secs } = parsed.form else { panic!("{}: not presigned", f.name) };
        let t = f.signed_at();
        let secs = Duration::seconds(expires_secs as i64);
        // Presigned URLs live for X-Amz-Expires, not 15 minutes.
        req.check(&f.secret_access_key, t + Duration::minutes(9)).unwrap();
        req.check(&f.secret_access_key, t + secs).unwrap();
        let e =
            expect_err(&f.name, "past X-Amz-Expires", req.check(&f.secret_access_key, t + secs + Duration::seconds(1)));
        assert!(matches!(e, AuthError::Expired { .. }), "{}: {e:?}", f.name);
        assert_eq!(e.aws_code(), "RequestExpired");
        let e = expect_err(&f.name, "future", req.check(&f.secret_access_key, t - Duration::minutes(16)));
        assert!(matches!(e, AuthError::NotYetValid { .. }), "{}: {e:?}", f.name);
        // Changing X-Amz-Expires (to extend the lifetime) breaks the signature.
        let pq = req.pq();
        let longer = pq.replacen(&format!("X-Amz-Expires={expires_secs}"), "X-Amz-Expires=604800", 1);
        assert_ne!(longer, pq);
        let mut bad = req.clone();
        bad.set_path_and_query(&longer);
        assert_mismatch(&f.name, "X-Amz-Expires", bad.check(&f.secret_access_key, t));
    }
    assert_eq!(seen, 3);
}

#[test]
fn wrong_scope_date_fails() {
    for f in committed() {
        let req = f.request();
        let date = &f.amz_date[..8];
        let mut bad = req.clone();
        if f.presigned() {
            let pq = req.pq();
            let changed = pq.replacen(&format!("%2F{date}%2F"), "%2F20261121%2F", 1);
            assert_ne!(changed, pq, "{}", f.name);
            bad.set_path_and_query(&changed);
        } else {
            let auth = req.headers["authorization"].to_str().unwrap();
            let changed = auth.replacen(&format!("/{date}/"), "/20261121/", 1);
            assert_ne!(changed, auth);
            bad.set_header("authorization", &changed);
        }
        let e = expect_err(&f.name, "scope date", bad.parse());
        assert_eq!(e, AuthError::ScopeDateMismatch { scope: "20261121".into(), request: date.into() }, "{}", f.name);
        assert_eq!(e.aws_code(), "AuthFailure");

        // Moving both X-Amz-Date and the scope consistently still breaks the signature.
        if !f.presigned() {
            let mut bad2 = bad.clone();
            let moved = f.amz_date.replacen(date, "20261121", 1);
            bad2.set_header("x-amz-date", &moved);
            assert_mismatch(&f.name, "moved date", bad2.check(&f.secret_access_key, amz_time(&moved)));
        }
    }
}

#[test]
fn other_credential_fields_are_bound() {
    for f in committed().iter().filter(|f| !f.presigned()) {
        let req = f.request();
        let auth = req.headers["authorization"].to_str().unwrap().to_owned();
        for (from, to) in
            [(format!("/{}/", f.region), "/eu-west-1/".to_owned()), (format!("/{}/", f.service), "/sts/".to_owned())]
        {
            let mut bad = req.clone();
            bad.set_header("authorization", &auth.replacen(&from, &to, 1));
            assert_mismatch(&f.name, &to, bad.check(&f.secret_access_key, f.signed_at()));
        }
        // The access key id is not part of the string to sign: it only selects the secret. A
        // different id verifies only if it maps to the same secret.
        let mut other = req.clone();
        other.set_header("authorization", &auth.replacen(&format!("={}/", f.access_key_id), "=AKIDOTHER/", 1));
        assert_eq!(other.check(&f.secret_access_key, f.signed_at()).unwrap().access_key_id, "AKIDOTHER");
        assert_mismatch(&f.name, "other key, other secret", other.check("otherSecret", f.signed_at()));
    }
}

#[test]
fn missing_and_malformed() {
    let fixtures = committed();
    let header = fixtures.iter().find(|f| f.name == "ec2_describe_volumes_post").unwrap();
    let presigned = fixtures.iter().find(|f| f.name == "ec2_copy_snapshot_presigned_url").unwrap();
    let now = header.signed_at();

    // No authentication at all.
    let mut req = header.request();
    req.headers.remove("authorization");
    let e = req.check(&header.secret_access_key, now).unwrap_err();
    assert_eq!(e, AuthError::Missing);
    assert_eq!(e.aws_code(), "MissingAuthenticationToken");
    assert_eq!(e.http_status(), 401);

    let base = header.request();
    let auth = base.headers["authorization"].to_str().unwrap().to_owned();
    let malformed_auth = [
        auth.replacen("AWS4-HMAC-SHA256", "AWS4-HMAC-SHA1", 1),
        auth.replacen("AWS4-HMAC-SHA256", "AWS4-ECDSA-P256-SHA256", 1),
        "AWS AKIDEXAMPLE:c2lnbmF0dXJl".to_owned(),
        "Bearer token".to_owned(),
        auth.replacen("SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;x-amz-date", 1),
        auth.replacen("SignedHeaders=content-type;host;x-amz-date", "SignedHeaders=content-type;host", 1),
        auth.replacen("SignedHeaders=content-type;", "SignedHeaders=Content-Type;", 1),
        auth.replacen("/aws4_request", "/aws4_requesx", 1),
        auth.replacen("/us-east-1/", "//", 1),
        auth.replacen("/us-east-1/", "/us-east-1/extra/", 1),
        auth.replacen("Signature=", "Signature=00", 1),
        auth.replacen("Signature=", "Signature=X", 1)[..auth.len()].to_owned(),
        auth.replacen(", Signature=", ", Foo=bar, Signature=", 1),
        format!("{auth}, Signature=00"),
        auth.split(", Signature=").next().unwrap().to_owned(),
        "AWS4-HMAC-SHA256".to_owned(),
        "AWS4-HMAC-SHA256 ".to_owned(),
        "AWS4-HMAC-SHA256 Credential".to_owned(),
        String::new(),
    ];
    for bad_auth in &malformed_auth {
        let mut req = base.clone();
        req.set_header("authorization", bad_auth);
        let e = req.check(&header.secret_access_key, now).unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "{bad_auth:?}: {e:?}");
        assert_eq!(e.aws_code(), "IncompleteSignature");
        assert_eq!(e.http_status(), 400);
    }

    // X-Amz-Date problems.
    for date in ["2026-11-22T10:20:30Z", "20261122T102030", "20261322T102030Z", "20261122T252030Z", "+0261122T102030Z"]
    {
        let mut req = base.clone();
        req.set_header("x-amz-date", date);
        let e = req.check(&header.secret_access_key, now).unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "{date}: {e:?}");
    }
    let mut req = base.clone();
    req.headers.remove("x-amz-date");
    assert!(matches!(req.parse(), Err(AuthError::Malformed(_))));
    req.set_header("date", "Sun, 22 Nov 2026 10:20:30 GMT");
    assert!(matches!(req.parse(), Err(AuthError::Malformed(m)) if m.contains("Date header")));

    // Two Authorization headers.
    let mut req = base.clone();
    req.headers.append("authorization", HeaderValue::from_str(&auth).unwrap());
    assert!(matches!(req.parse(), Err(AuthError::Malformed(_))));

    // Signed header missing from the request.
    let mut req = base.clone();
    req.headers.remove("content-type");
    assert!(matches!(req.check(&header.secret_access_key, now), Err(AuthError::Malformed(_))));

    // Unsupported payload hash values.
    for v in ["STREAMING-AWS4-HMAC-SHA256-PAYLOAD", "ABCDEF", &"A".repeat(64)] {
        let mut req = base.clone();
        req.set_header("x-amz-content-sha256", v);
        assert!(matches!(req.parse(), Err(AuthError::Malformed(_))), "{v}");
    }

    // Presigned: both mechanisms, bad/missing parameters.
    let preq = presigned.request();
    let pq = preq.pq();
    let mut both = preq.clone();
    both.set_header("authorization", &auth);
    assert!(matches!(both.parse(), Err(AuthError::Malformed(_))));
    for (from, to) in [
        ("X-Amz-Expires=3600", "X-Amz-Expires=0"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=604801"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=-5"),
        ("X-Amz-Expires=3600", "X-Amz-Expires=99999999999999999999999"),
        ("X-Amz-Expires=3600&", ""),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256", "X-Amz-Algorithm=AWS4-HMAC-SHA512"),
        ("X-Amz-Algorithm=AWS4-HMAC-SHA256&", ""),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=host&X-Amz-SignedHeaders=host"),
        ("X-Amz-Date=20261122T102030Z", "X-Amz-Date=20261122"),
    ] {
        let changed = pq.replacen(from, to, 1);
        assert_ne!(changed, pq, "{from}");
        let mut req = preq.clone();
        req.set_path_and_query(&changed);
        let e = req.check(&presigned.secret_access_key, now).unwrap_err();
        assert!(matches!(e, AuthError::Malformed(_)), "{to}: {e:?}");
    }
    // Only the signature parameter left: still recognised as presigned, hence malformed.
    let mut req = preq.clone();
    req.set_path_and_query("/?X-Amz-Signature=00");
    assert!(matches!(req.parse(), Err(AuthError::Malformed(_))));
}

#[test]
fn http2_authority_instead_of_host_header() {
    let f = committed().into_iter().find(|f| f.name == "lightsail_json_target").unwrap();
    let mut req = f.request();
    let host = req.headers.remove("host").unwrap();
    req.uri = format!("http://{}{}", host.to_str().unwrap(), req.pq()).parse().unwrap();
    req.check(&f.secret_access_key, f.signed_at()).unwrap();
}

/// Small deterministic PRNG (xorshift64*), so the test needs no extra crates.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut Rng, s: &str) -> String {
    const POOL: &[u8] = b"/%?&=;, .~+-_abcXYZ0129\tT*:@#";
    let mut b = s.as_bytes().to_vec();
    for _ in 0..=rng.below(4) {
        match rng.below(4) {
            0 if !b.is_empty() => {
                let i = rng.below(b.len());
                b.remove(i);
            }
            1 => {
                let i = rng.below(b.len() + 1);
                b.insert(i, POOL[rng.below(POOL.len())]);
            }
            2 if !b.is_empty() => {
                let i = rng.below(b.len());
                b[i] = POOL[rng.below(POOL.len())];
            }
            _ => {
                let i = rng.below(b.len() + 1);
                b.truncate(i);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

/// Random mutations of real requests never panic, and never verify unless unchanged in substance.
#[test]
fn mutated_requests_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let fixtures = committed();
    let mut verified = 0;
    for round in 0..4000 {
        let f = &fixtures[round % fixtures.len()];
        let mut req = f.request();
        match rng.below(3) {
            0 => {
                let auth = req.headers.get("authorization").map(|v| v.to_str().unwrap().to_owned());
                if let Some(auth) = auth
                    && let Ok(v) = HeaderValue::from_str(&mutate(&mut rng, &auth))
                {
                    req.headers.insert("authorization", v);
                }
            }
            1 => {
                let m = mutate(&mut rng, &req.pq());
                match m.parse::<Uri>() {
                    Ok(u) => req.uri = u,
                    Err(_) => continue,
                }
            }
            _ => {
                if let Ok(v) = HeaderValue::from_str(&mutate(&mut rng, &f.amz_date)) {
                    req.headers.insert("x-amz-date", v);
                }
            }
        }
        let now = f.signed_at() + Duration::seconds(rng.below(7200) as i64 - 3600);
        if let Ok(p) = req.check(&f.secret_access_key, now) {
            verified += 1;
            // Only harmless mutations may pass (whitespace in the Authorization header, the access
            // key id, which only selects the secret).
            assert_eq!(
                (p.region.as_str(), p.service.as_str(), p.amz_date.as_str()),
                (f.region.as_str(), f.service.as_str(), f.amz_date.as_str())
            );
        }
    }
    // Garbage that is not derived from a real request.
    for _ in 0..2000 {
        let mut headers = HeaderMap::new();
        let junk = mutate(
            &mut rng,
            "AWS4-HMAC-SHA256 Credential=A/20261122/r/s/aws4_request, SignedHeaders=host;x-amz-date, Signature=",
        );
        if let Ok(v) = HeaderValue::from_str(&junk) {
            headers.insert("authorization", v);
        }
        headers.insert("x-amz-date", HeaderValue::from_static("20261122T102030Z"));
        if rng.below(2) == 0 {
            headers.insert("host", HeaderValue::from_static("h"));
        }
        let uri: Uri = mutate(&mut rng, "/?X-Amz-Signature=1&X-Amz-Credential=a%2F20261122%2Fr%2Fs%2Faws4_request")
            .parse()
            .unwrap_or_else(|_| Uri::from_static("/"));
        if let Ok(p) = parse(&Method::GET, &uri, &headers) {
            let _ = verify(&p, "s", &Method::GET, &uri, &headers, b"", amz_time("20261122T102030Z"));
        }
    }
    eprintln!("{verified} harmless mutations verified");
}

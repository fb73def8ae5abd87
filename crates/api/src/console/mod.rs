//! The web console's static assets, served at `/console` on the API listener.
//!
//! The pages carry no data: no ids, no keys, nothing of any account. The browser signs every API
//! call itself with SigV4 (Web Crypto; the secret stays in the tab's `sessionStorage` and is never
//! sent) and calls the same endpoints as the AWS CLI on the same origin, so the console adds no
//! server-side authentication surface: serving these files unauthenticated leaks nothing.
//!
//! The assets are compiled into the binary with `include_str!` (a handful of small files: no
//! embedding crate needed), so the console works offline and from any working directory.

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use http::{HeaderValue, StatusCode, header};

/// (file name, content type, content)
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("assets/index.html")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("assets/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("assets/api.js")),
    ("ui.js", "text/javascript; charset=utf-8", include_str!("assets/ui.js")),
    ("lightsail.js", "text/javascript; charset=utf-8", include_str!("assets/lightsail.js")),
    ("sigv4.js", "text/javascript; charset=utf-8", include_str!("assets/sigv4.js")),
    ("style.css", "text/css; charset=utf-8", include_str!("assets/style.css")),
];

/// Scripts, styles and API calls from this origin only; never framed (no clickjacking of the
/// delete buttons), no referrer leaves the page.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// `/console`, `/console/` and `/console/<asset>` (GET and HEAD); every other path stays an AWS
/// call (the router's fallback).
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(|| async { Redirect::permanent("/console/") }))
        .route("/console/", get(|| async { asset("index.html") }))
        .route("/console/{*path}", get(|Path(path): Path<String>| async move { asset(&path) }))
}

fn asset(name: &str) -> Response {
    let Some((_, content_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (StatusCode::NOT_FOUND, "Not found\n").into_response();
    };
    let mut r = (StatusCode::OK, *body).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_asset_is_served_and_others_are_not_found() {
        for (name, ty, body) in ASSETS {
            let r = asset(name);
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(r.headers()[header::CONTENT_TYPE], *ty);
            assert!(r.headers().contains_key(header::CONTENT_SECURITY_POLICY));
            assert!(!body.is_empty());
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("").status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn the_pages_carry_no_inline_script() {
        // The CSP allows scripts from files only; an inline handler would be refused by the browser.
        let html = ASSETS[0].2;
        assert!(!html.contains("onclick=") && !html.contains("<script>"));
    }

    #[test]
    fn every_file_the_page_links_is_served() {
        let html = ASSETS[0].2;
        for part in html.split("/console/").skip(1) {
            let name = part.split('"').next().unwrap_or_default();
            assert_eq!(asset(name).status(), StatusCode::OK, "index.html links /console/{name}");
        }
    }

    #[test]
    fn no_action_goes_through_the_browsers_modal_boxes() {
        // prompt()/alert()/confirm() are neither labelled nor stylable and block the page: every
        // action is a form (ui.js: actionForm, dialog, confirmDialog).
        for (name, _, body) in ASSETS.iter().filter(|(n, _, _)| n.ends_with(".js")) {
            for call in ["prompt(", "alert(", "confirm("] {
                assert!(!body.contains(call), "{name} calls {call}");
            }
        }
    }
}

//! The web console at `/console`: a small static front end (HTML, CSS, vanilla JS) built into
//! the binary. It holds no secrets and renders nothing on the server: the page signs in with a
//! manage token (kept in the tab's sessionStorage) and calls the `/v1` API with it, so the
//! console can never do more than its token.
//!
//! Every answer carries a strict Content-Security-Policy: only these files' own scripts and
//! styles, requests only to this origin, no frames, no inline code.

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

use super::ManageState;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");
const ICON: &str = include_str!("assets/icon.svg");

/// No inline script or style, nothing from another origin, no framing.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

pub fn routes() -> Router<ManageState> {
    Router::new()
        .route(
            "/console",
            get(|| async { Redirect::permanent("/console/") }),
        )
        .route(
            "/console/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/app.css",
            get(|| async { asset("text/css; charset=utf-8", APP_CSS) }),
        )
        .route(
            "/console/icon.svg",
            get(|| async { asset("image/svg+xml", ICON) }),
        )
        .route("/console/{*rest}", get(not_found))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    secure(h);
    r
}

/// The headers every console answer has.
fn secure(h: &mut axum::http::HeaderMap) {
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    // The files change with the binary; a new version must not run an old script.
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
}

async fn not_found() -> Response {
    let mut r = (StatusCode::NOT_FOUND, "no such console file").into_response();
    secure(r.headers_mut());
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assets_have_no_inline_code_and_load_only_their_own_files() {
        // The CSP forbids inline scripts, styles and event handlers: the page must not need them.
        assert!(!INDEX.contains("<style"), "inline style element");
        assert!(!INDEX.contains("style="), "inline style attribute");
        let handler = INDEX.match_indices(" on").any(|(i, _)| {
            let rest = &INDEX[i + 3..];
            let word = rest.len()
                - rest
                    .trim_start_matches(|c: char| c.is_ascii_lowercase())
                    .len();
            word > 0 && rest[word..].starts_with('=')
        });
        assert!(!handler, "inline event handler");
        for tag in INDEX.match_indices("<script") {
            let rest = &INDEX[tag.0..];
            let end = rest.find('>').unwrap_or(rest.len());
            assert!(rest[..end].contains("src=\"app.js\""), "{}", &rest[..end]);
        }
        // Data from the API is put in the page as text, never as markup.
        for banned in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!APP_JS.contains(banned), "app.js uses {banned}");
        }
    }
}

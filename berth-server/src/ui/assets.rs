//! The stylesheet and script, embedded in the binary (no CDN, no build step). Pages link
//! them with `?v=<hash>`, so a new binary's assets are fetched at once and a cached copy
//! never goes stale; the `ETag` lets a browser revalidate an unversioned request.

use std::collections::HashMap;

use axum::extract::{Path, Query};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::HostChecked;

pub const CSS: &str = include_str!("static/berth.css");
pub const JS: &str = include_str!("static/berth.js");

/// FNV-1a, at compile time: a content fingerprint for cache busting, not a defence.
const fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    h
}

pub const CSS_HASH: u64 = fnv1a(CSS.as_bytes());
pub const JS_HASH: u64 = fnv1a(JS.as_bytes());

pub fn css_url() -> String {
    format!("/ui/static/berth.css?v={CSS_HASH:016x}")
}

pub fn js_url() -> String {
    format!("/ui/static/berth.js?v={JS_HASH:016x}")
}

pub async fn serve(
    _: HostChecked,
    Path(file): Path<String>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let (body, hash, ty) = match file.as_str() {
        "berth.css" => (CSS, CSS_HASH, "text/css; charset=utf-8"),
        "berth.js" => (JS, JS_HASH, "text/javascript; charset=utf-8"),
        _ => return StatusCode::NOT_FOUND.into_response(),
    };
    let etag = format!("\"{hash:016x}\"");
    let cache = if q.get("v").is_some_and(|v| *v == format!("{hash:016x}")) {
        "public, max-age=31536000, immutable"
    } else {
        "public, max-age=300"
    };
    let fresh = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*"));
    let mut r = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        let mut r = body.into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static(ty));
        r
    };
    let h = r.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    if let Ok(v) = HeaderValue::from_str(&etag) {
        h.insert(header::ETAG, v);
    }
    r
}

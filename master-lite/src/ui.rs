//! The dashboard: static files under `/ui/`, embedded in the binary.
//!
//! The files hold no secret and no cluster data, so they are served without a
//! token (the page must load before its user can sign in); everything the
//! page shows comes from `/api/v1` with the token the user signs in with,
//! under the same roles as every other client. Every answer carries a
//! Content-Security-Policy that allows only this origin's scripts, styles and
//! API (no inline script, no eval, no framing), see SECURITY.md.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;

/// Every file of the dashboard: its name under `/ui/`, its media type and its bytes.
const ASSETS: &[(&str, &str, &str)] = &[
    ("index.html", "text/html; charset=utf-8", include_str!("../ui/index.html")),
    ("style.css", "text/css; charset=utf-8", include_str!("../ui/style.css")),
    ("app.js", "text/javascript; charset=utf-8", include_str!("../ui/app.js")),
    ("api.js", "text/javascript; charset=utf-8", include_str!("../ui/api.js")),
    ("dom.js", "text/javascript; charset=utf-8", include_str!("../ui/dom.js")),
    ("pages.js", "text/javascript; charset=utf-8", include_str!("../ui/pages.js")),
    ("plot.js", "text/javascript; charset=utf-8", include_str!("../ui/plot.js")),
    ("icon.svg", "image/svg+xml", include_str!("../ui/icon.svg")),
];

/// Scripts, styles, images and API calls from this origin only; no inline
/// script or style element, no eval, no plugins, never inside a frame.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// The routes of the dashboard, outside the token guard.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to("/ui/") }))
        .route("/ui", get(|| async { Redirect::to("/ui/") }))
        .route("/ui/", get(|| async { asset("index.html") }))
        .route("/ui/{file}", get(|Path(file): Path<String>| async move { asset(&file) }))
}

/// The file `name` with the security headers, or 404.
fn asset(name: &str) -> Response {
    let Some((_, media_type, body)) = ASSETS.iter().find(|(n, _, _)| *n == name) else {
        return (
            StatusCode::NOT_FOUND,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("no file `{name}` in the dashboard\n"),
        )
            .into_response();
    };
    let mut response = (*body).into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(media_type));
    for (name, value) in security_headers() {
        headers.insert(name, value);
    }
    response
}

/// The headers every dashboard file is served with.
pub fn security_headers() -> [(HeaderName, HeaderValue); 6] {
    [
        (header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
        (header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff")),
        (header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY")),
        (header::REFERRER_POLICY, HeaderValue::from_static("no-referrer")),
        // The files change with the binary: always ask, never keep a stale page.
        (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        (HeaderName::from_static("cross-origin-opener-policy"), HeaderValue::from_static("same-origin")),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_served_with_the_policy_and_nothing_else_is() {
        for (name, media_type, _) in ASSETS {
            let response = asset(name);
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()[header::CONTENT_TYPE], *media_type);
            assert_eq!(response.headers()[header::CONTENT_SECURITY_POLICY], CONTENT_SECURITY_POLICY);
            assert_eq!(response.headers()[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
            assert_eq!(response.headers()[header::REFERRER_POLICY], "no-referrer");
        }
        assert_eq!(asset("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(asset("secret").status(), StatusCode::NOT_FOUND);
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"), "no inline script, no eval");
    }

    #[test]
    fn the_page_has_no_inline_script_or_style_and_loads_nothing_from_elsewhere() {
        for (name, _, body) in ASSETS {
            // The SVG namespace is a name, not a place anything is loaded from.
            let body = body.replace("http://www.w3.org/2000/svg", "");
            assert!(!body.contains("http://") && !body.contains("https://"), "{name} names another origin");
            assert!(!body.contains("innerHTML") && !body.contains("insertAdjacentHTML"), "{name} inserts text as HTML");
            assert!(!body.contains("eval("), "{name} evaluates text");
            assert!(!body.contains("localStorage"), "{name}: the token lives in sessionStorage only");
        }
        let index = ASSETS[0].2;
        assert!(!index.contains("<script>") && !index.contains("style="), "inline script or style in index.html");
    }
}

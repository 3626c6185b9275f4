//! `http-fetch`: a wasi:http component (wasm32-wasip2) exporting `wasi:http/incoming-handler`.
//!
//! `GET /?url=<percent-encoded http:// or https:// URL>` makes an outgoing GET to that URL
//! through `wasi:http/outgoing-handler` and answers 200 `text/plain`:
//!
//! ```text
//! upstream status: 200
//! upstream body (1024 bytes, truncated):
//! <at most the first 1 KiB of the upstream body>
//! ```
//!
//! with the upstream status also in the `x-upstream-status` header (`, truncated` appears only
//! when the upstream body is longer than 1 KiB). When the host refuses the request or it fails
//! (for example a host outside the allow-list, `ErrorCode::HttpRequestDenied`, or
//! `ErrorCode::ConnectionRefused`), it answers 502 with one line naming the URL and the
//! `ErrorCode` it got. A missing or unusable `url` is answered with 400. Use it to test the
//! outbound allow-list.

use std::io::{Read as _, Write as _};

use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, IncomingRequest, Method, OutgoingBody, OutgoingRequest, OutgoingResponse, ResponseOutparam, Scheme};

/// How much of the upstream body is passed on.
const BODY_PREFIX: usize = 1024;

struct HttpFetch;

wasi::http::proxy::export!(HttpFetch);

impl wasi::exports::http::incoming_handler::Guest for HttpFetch {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let (status, extra, body) = match query_param(&path, "url") {
            None => (400, None, "missing ?url=<http:// or https:// URL, percent-encoded>\n".into()),
            Some(raw) => fetch(&percent_decode(raw)),
        };
        respond(response_out, status, extra, &body);
    }
}

/// Fetches `url`; returns the status, the `x-upstream-status` value and the body to answer with.
fn fetch(url: &str) -> (u16, Option<u16>, Vec<u8>) {
    let fail = |status: u16, text: String| (status, None, format!("{text}\n").into_bytes());
    let Some((scheme, authority, path_with_query)) = split_url(url) else {
        return fail(400, format!("bad url {url:?}: want http://host[:port][/path] or https://..."));
    };

    let outgoing = OutgoingRequest::new(Fields::new());
    let set = outgoing.set_method(&Method::Get).is_ok()
        && outgoing.set_scheme(Some(&scheme)).is_ok()
        && outgoing.set_authority(Some(authority)).is_ok()
        && outgoing.set_path_with_query(Some(&path_with_query)).is_ok();
    if !set {
        return fail(400, format!("bad url {url:?}: rejected by wasi:http"));
    }
    // A GET has no body: finish it empty so the request is complete.
    if let Ok(body) = outgoing.body() {
        let _ = OutgoingBody::finish(body, None);
    }

    let future = match outgoing_handler::handle(outgoing, None) {
        Ok(future) => future,
        Err(code) => return fail(502, format!("outgoing request to {url} refused: {code}")),
    };
    let upstream = loop {
        match future.get() {
            Some(Ok(Ok(response))) => break response,
            Some(Ok(Err(code))) => return fail(502, format!("outgoing request to {url} failed: {code}")),
            Some(Err(())) => return fail(502, format!("outgoing request to {url}: response already taken")),
            None => future.subscribe().block(),
        }
    };
    let status = upstream.status();

    // Read one byte more than is passed on, to tell whether the body was cut.
    let mut prefix = Vec::with_capacity(BODY_PREFIX + 1);
    let read = (|| -> std::io::Result<()> {
        let body = upstream.consume().map_err(|()| std::io::Error::other("body already taken"))?;
        let stream = body.stream().map_err(|()| std::io::Error::other("body stream already taken"))?;
        stream.take(BODY_PREFIX as u64 + 1).read_to_end(&mut prefix)?;
        Ok(())
    })();
    if let Err(e) = read {
        return fail(502, format!("reading the body of {url} (status {status}) failed: {e}"));
    }
    let truncated = prefix.len() > BODY_PREFIX;
    prefix.truncate(BODY_PREFIX);

    let mut out =
        format!("upstream status: {status}\nupstream body ({} bytes{}):\n", prefix.len(), if truncated { ", truncated" } else { "" })
            .into_bytes();
    out.extend_from_slice(&prefix);
    (200, Some(status), out)
}

/// Splits `scheme://authority[/path][?query][#fragment]` into the parts wasi:http wants.
fn split_url(url: &str) -> Option<(Scheme, &str, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = match scheme.to_ascii_lowercase().as_str() {
        "http" => Scheme::Http,
        "https" => Scheme::Https,
        _ => return None,
    };
    let rest = rest.split('#').next().unwrap_or_default();
    let (authority, path_with_query) = rest.split_at(rest.find(['/', '?']).unwrap_or(rest.len()));
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let path_with_query = match path_with_query {
        p if p.starts_with('/') => p.to_string(),
        p => format!("/{p}"),
    };
    Some((scheme, authority, path_with_query))
}

/// The raw value of the first `name=value` pair in the query of `path_with_query`.
fn query_param<'a>(path_with_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
}

/// Decodes `%XX` escapes (`+` is left alone); invalid escapes are kept as they are.
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Sends a complete `text/plain` response with a `content-length`.
fn respond(response_out: ResponseOutparam, status: u16, upstream_status: Option<u16>, body: &[u8]) {
    let mut headers = vec![
        ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ];
    if let Some(upstream) = upstream_status {
        headers.push(("x-upstream-status".to_string(), upstream.to_string().into_bytes()));
    }
    let response = OutgoingResponse::new(Fields::from_list(&headers).expect("valid response headers"));
    response.set_status_code(status).expect("valid status code");
    let outgoing = response.body().expect("response body taken once");
    ResponseOutparam::set(response_out, Ok(response));
    {
        let mut stream = outgoing.write().expect("body stream taken once");
        // A failed write means the client went away; there is nobody left to tell.
        let _ = stream.write_all(body).and_then(|()| std::io::Write::flush(&mut stream));
    } // The stream must be dropped before the body is finished.
    let _ = OutgoingBody::finish(outgoing, None);
}

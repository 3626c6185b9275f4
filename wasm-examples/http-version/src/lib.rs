//! `http-version`: a wasi:http component (wasm32-wasip2) exporting `wasi:http/incoming-handler`,
//! for trying out releases.
//!
//! Answers every request with 200 `text/plain` `version <VERSION> on <node>\n`, where `VERSION`
//! and `WASMLET_NODE` come from the environment (`unknown` when unset). With `FAIL_PERCENT=N`
//! (0–100) it answers that share of requests with 500 `version <VERSION> failed\n` instead,
//! chosen at random per request (`wasi:random`): a bad release to be caught by a health gate.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct HttpVersion;

wasi::http::proxy::export!(HttpVersion);

impl wasi::exports::http::incoming_handler::Guest for HttpVersion {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let env = wasi::cli::environment::get_environment();
        let var = |name: &str| env.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
        let version = var("VERSION").unwrap_or("unknown");
        let node = var("WASMLET_NODE").unwrap_or("unknown");
        let fail_percent = var("FAIL_PERCENT").and_then(|v| v.parse::<u64>().ok()).unwrap_or(0).min(100);
        if fail_percent > 0 && wasi::random::random::get_random_u64() % 100 < fail_percent {
            let body = format!("version {version} failed\n");
            return respond(response_out, 500, body.as_bytes());
        }
        let body = format!("version {version} on {node}\n");
        respond(response_out, 200, body.as_bytes());
    }
}

/// Sends a complete `text/plain` response with a `content-length`.
fn respond(response_out: ResponseOutparam, status: u16, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), b"text/plain; charset=utf-8".to_vec()),
        ("content-length".to_string(), body.len().to_string().into_bytes()),
    ])
    .expect("valid response headers");
    let response = OutgoingResponse::new(headers);
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

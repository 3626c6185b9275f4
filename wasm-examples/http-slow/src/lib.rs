//! `http-slow`: a wasi:http component (wasm32-wasip2) exporting `wasi:http/incoming-handler`.
//!
//! Sleeps for `?ms=N` milliseconds (default 1000), then answers 200 `text/plain`
//! `slept N ms\n`. The sleep blocks on a `wasi:clocks/monotonic-clock` pollable, so the guest
//! burns no CPU while it waits (it is not a busy loop). A value of `ms` that is not a
//! non-negative integer is answered with 400. Use it for request timeouts and concurrency.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

const DEFAULT_MS: u64 = 1000;

struct HttpSlow;

wasi::http::proxy::export!(HttpSlow);

impl wasi::exports::http::incoming_handler::Guest for HttpSlow {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let path = request.path_with_query().unwrap_or_default();
        let ms = match query_param(&path, "ms") {
            None => DEFAULT_MS,
            Some(value) => match value.parse::<u64>() {
                Ok(ms) => ms,
                Err(_) => {
                    let body = format!("bad ms={value:?}: want a non-negative integer\n");
                    return respond(response_out, 400, body.as_bytes());
                }
            },
        };
        wasi::clocks::monotonic_clock::subscribe_duration(ms.saturating_mul(1_000_000)).block();
        respond(response_out, 200, format!("slept {ms} ms\n").as_bytes());
    }
}

/// The raw value of the first `name=value` pair in the query of `path_with_query`.
fn query_param<'a>(path_with_query: &'a str, name: &str) -> Option<&'a str> {
    let (_, query) = path_with_query.split_once('?')?;
    query.split('&').find_map(|pair| {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        (key == name).then_some(value)
    })
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

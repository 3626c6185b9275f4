//! `http-hello`: a wasi:http component (wasm32-wasip2) exporting `wasi:http/incoming-handler`.
//!
//! Answers every request with 200 `text/plain` `hello from wasmlet on <node>\n`, where `<node>`
//! is the environment variable `WASMLET_NODE`, or `unknown` when it is unset. The request is
//! not read. This is the component `make bench` serves, so it stays minimal.

use std::io::Write as _;

use wasi::http::types::{Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam};

struct HttpHello;

wasi::http::proxy::export!(HttpHello);

impl wasi::exports::http::incoming_handler::Guest for HttpHello {
    fn handle(_request: IncomingRequest, response_out: ResponseOutparam) {
        let node = wasi::cli::environment::get_environment()
            .into_iter()
            .find(|(key, _)| key == "WASMLET_NODE")
            .map(|(_, value)| value)
            .unwrap_or_else(|| "unknown".to_string());
        let body = format!("hello from wasmlet on {node}\n");
        respond(response_out, 200, "text/plain; charset=utf-8", body.as_bytes());
    }
}

/// Sends a complete response with a `content-type` and a `content-length`.
fn respond(response_out: ResponseOutparam, status: u16, content_type: &str, body: &[u8]) {
    let headers = Fields::from_list(&[
        ("content-type".to_string(), content_type.as_bytes().to_vec()),
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

//! `http-echo`: a wasi:http component (wasm32-wasip2) exporting `wasi:http/incoming-handler`.
//!
//! Reads the whole request and answers 200 `application/json` with one object:
//!
//! ```json
//! {"method":"POST","pathWithQuery":"/a?b=1","scheme":"http","authority":"host:port",
//!  "headers":{"content-type":["text/plain"],"x-many":["1","2"]},
//!  "bodyEncoding":"utf-8","bodyBytes":5,"body":"hello"}
//! ```
//!
//! `headers` maps each lowercased name to its values in order (values that are not UTF-8 are
//! converted lossily). `body` is the body as text when it is valid UTF-8 (`bodyEncoding`
//! `"utf-8"`), otherwise standard base64 with padding (`bodyEncoding` `"base64"`). `scheme`
//! and `authority` are `null` when the host does not report them. A body that cannot be read
//! is answered with 400. Use it to see what reaches a replica through the ingress.

use std::io::{Read as _, Write as _};

use wasi::http::types::{Fields, IncomingBody, IncomingRequest, Method, OutgoingBody, OutgoingResponse, ResponseOutparam, Scheme};

struct HttpEcho;

wasi::http::proxy::export!(HttpEcho);

impl wasi::exports::http::incoming_handler::Guest for HttpEcho {
    fn handle(request: IncomingRequest, response_out: ResponseOutparam) {
        let body = match read_body(&request) {
            Ok(body) => body,
            Err(e) => {
                let text = format!("reading the request body failed: {e}\n");
                return respond(response_out, 400, "text/plain; charset=utf-8", text.as_bytes());
            }
        };

        let mut json = String::with_capacity(256 + body.len() * 2);
        json.push_str("{\"method\":");
        push_json_str(&mut json, &method_name(&request.method()));
        json.push_str(",\"pathWithQuery\":");
        push_json_opt(&mut json, request.path_with_query().as_deref());
        json.push_str(",\"scheme\":");
        let scheme = request.scheme().map(|s| match s {
            Scheme::Http => "http".to_string(),
            Scheme::Https => "https".to_string(),
            Scheme::Other(other) => other,
        });
        push_json_opt(&mut json, scheme.as_deref());
        json.push_str(",\"authority\":");
        push_json_opt(&mut json, request.authority().as_deref());

        // Group the values by lowercased name, keeping the order in which names first appear.
        let mut headers: Vec<(String, Vec<String>)> = Vec::new();
        for (name, value) in request.headers().entries() {
            let name = name.to_ascii_lowercase();
            let value = String::from_utf8_lossy(&value).into_owned();
            match headers.iter_mut().find(|(n, _)| *n == name) {
                Some((_, values)) => values.push(value),
                None => headers.push((name, vec![value])),
            }
        }
        json.push_str(",\"headers\":{");
        for (i, (name, values)) in headers.iter().enumerate() {
            if i > 0 {
                json.push(',');
            }
            push_json_str(&mut json, name);
            json.push_str(":[");
            for (j, value) in values.iter().enumerate() {
                if j > 0 {
                    json.push(',');
                }
                push_json_str(&mut json, value);
            }
            json.push(']');
        }
        json.push('}');

        match std::str::from_utf8(&body) {
            Ok(text) => {
                json.push_str(",\"bodyEncoding\":\"utf-8\"");
                json.push_str(&format!(",\"bodyBytes\":{},\"body\":", body.len()));
                push_json_str(&mut json, text);
            }
            Err(_) => {
                json.push_str(",\"bodyEncoding\":\"base64\"");
                json.push_str(&format!(",\"bodyBytes\":{},\"body\":\"", body.len()));
                json.push_str(&base64(&body));
                json.push('"');
            }
        }
        json.push_str("}\n");
        respond(response_out, 200, "application/json", json.as_bytes());
    }
}

/// Reads the request body to its end.
fn read_body(request: &IncomingRequest) -> std::io::Result<Vec<u8>> {
    let other = |what: &str| std::io::Error::other(what.to_string());
    let incoming = request.consume().map_err(|()| other("body already consumed"))?;
    let mut body = Vec::new();
    {
        let mut stream = incoming.stream().map_err(|()| other("body stream already taken"))?;
        stream.read_to_end(&mut body)?;
    } // The stream must be dropped before the body is finished.
    drop(IncomingBody::finish(incoming));
    Ok(body)
}

fn method_name(method: &Method) -> String {
    match method {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
        Method::Other(other) => other,
    }
    .to_string()
}

fn push_json_opt(out: &mut String, value: Option<&str>) {
    match value {
        Some(value) => push_json_str(out, value),
        None => out.push_str("null"),
    }
}

/// Appends `value` as a JSON string literal.
fn push_json_str(out: &mut String, value: &str) {
    out.push('"');
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => {
                out.push_str(&format!("\\u{:04x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Standard base64 (RFC 4648, with `=` padding).
fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3f) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
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

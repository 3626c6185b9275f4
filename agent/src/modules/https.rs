//! Modules on web servers: `https://` URLs (and `http://` where the node
//! allows it), downloaded by the node itself. A connection that drops
//! mid-body is resumed where it stopped with a range request, so a board on
//! a flaky link does not start a large module over again.

use std::time::Duration;

use futures::future::BoxFuture;
use reqwest::StatusCode;
use reqwest::header::{CONTENT_RANGE, RANGE};
use wasmlet_api::ModuleRef;

use wasmlet_security::error_chain;

use super::{ModuleSource, PullError};

/// Resumes of one download, at most (each must bring new bytes).
const RESUMES: u32 = 20;
/// A server that sends nothing for this long is given up on (and resumed).
const READ_TIMEOUT: Duration = Duration::from_secs(30);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// Redirects followed, at most.
const REDIRECTS: usize = 5;

/// Downloads modules from their URL.
#[derive(Debug, Clone)]
pub struct HttpsSource {
    client: reqwest::Client,
    allow_http: bool,
}

impl HttpsSource {
    /// Trusts the system's certificate authorities and `extra_ca_pem` (the
    /// node's `--module-ca-file`, for servers with a private CA);
    /// `allow_http`: whether `http://` URLs may be downloaded (`--allow-http-modules`).
    pub fn new(extra_ca_pem: Option<&[u8]>, allow_http: bool) -> anyhow::Result<HttpsSource> {
        let mut builder = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT).read_timeout(READ_TIMEOUT).redirect(
            reqwest::redirect::Policy::custom(move |attempt| {
                if attempt.previous().len() >= REDIRECTS {
                    attempt.error(format!("more than {REDIRECTS} redirects"))
                } else if attempt.url().scheme() != "https" && !allow_http {
                    let to = attempt.url().to_string();
                    attempt.error(format!("redirected to {to}, which is not https (this node refuses http:// modules)"))
                } else {
                    attempt.follow()
                }
            }),
        );
        let system = rustls_native_certs::load_native_certs();
        for certificate in system.certs {
            // One certificate the TLS library cannot take is no reason to trust none.
            if let Ok(certificate) = reqwest::Certificate::from_der(&certificate) {
                builder = builder.add_root_certificate(certificate);
            }
        }
        if let Some(pem) = extra_ca_pem {
            for certificate in reqwest::Certificate::from_pem_bundle(pem)? {
                builder = builder.add_root_certificate(certificate);
            }
        }
        Ok(HttpsSource { client: builder.build()?, allow_http })
    }

    async fn download(&self, url: &str, limit: u64) -> Result<Vec<u8>, PullError> {
        let parsed = reqwest::Url::parse(url).map_err(|e| PullError::Refused(format!("`{url}` is not a URL: {e}")))?;
        match parsed.scheme() {
            "https" => {}
            "http" if self.allow_http => {}
            "http" => {
                return Err(PullError::Refused(format!(
                    "`{url}`: this node refuses http:// modules (anyone on the path could change them); serve it over https, or start the agent with --allow-http-modules"
                )));
            }
            other => return Err(PullError::Refused(format!("`{url}`: modules come from https:// URLs, not {other}://"))),
        }
        let mut bytes: Vec<u8> = Vec::new();
        let mut resumes = 0;
        loop {
            let mut request = self.client.get(parsed.clone());
            if !bytes.is_empty() {
                request = request.header(RANGE, format!("bytes={}-", bytes.len()));
            }
            let mut response = match request.send().await {
                Ok(response) => response,
                Err(e) if !bytes.is_empty() && resumes < RESUMES => {
                    resumes += 1;
                    tracing::debug!(%url, error = %e, "resuming the module download");
                    continue;
                }
                Err(e) => return Err(PullError::Unreachable(format!("cannot download {url}: {}", error_chain(&e)))),
            };
            let status = response.status();
            match status {
                StatusCode::PARTIAL_CONTENT if resumes_at(&response) == Some(bytes.len() as u64) => {}
                // Another part than asked for: not appended; asked for again, from the start.
                StatusCode::PARTIAL_CONTENT if resumes < RESUMES => {
                    tracing::info!(%url, asked = bytes.len(), answered = ?resumes_at(&response), "the server sent another part than asked for; starting over");
                    bytes.clear();
                    resumes += 1;
                    continue;
                }
                StatusCode::PARTIAL_CONTENT => {
                    return Err(PullError::Unreachable(format!("{url} keeps answering with other parts than asked for")));
                }
                // The server sent the whole module again (it ignores ranges).
                StatusCode::OK => bytes.clear(),
                status if status.is_client_error() => {
                    return Err(PullError::Refused(format!("{url} answered {status}")));
                }
                status => return Err(PullError::Unreachable(format!("{url} answered {status}"))),
            }
            if response.content_length().is_some_and(|length| bytes.len() as u64 + length > limit) {
                return Err(PullError::TooLarge { limit });
            }
            let before = bytes.len();
            let dropped = loop {
                match response.chunk().await {
                    Ok(Some(chunk)) => {
                        if (bytes.len() + chunk.len()) as u64 > limit {
                            return Err(PullError::TooLarge { limit });
                        }
                        bytes.extend_from_slice(&chunk);
                    }
                    Ok(None) => return Ok(bytes),
                    Err(e) => break e,
                }
            };
            if bytes.len() == before || resumes >= RESUMES {
                return Err(PullError::Unreachable(format!(
                    "the download of {url} broke off after {} bytes: {}",
                    bytes.len(),
                    error_chain(&dropped)
                )));
            }
            resumes += 1;
            tracing::info!(%url, have = bytes.len(), error = %error_chain(&dropped), "the module download broke off; resuming where it stopped");
        }
    }
}

impl ModuleSource for HttpsSource {
    fn fetch<'a>(&'a self, module: &'a ModuleRef, limit: u64) -> BoxFuture<'a, Result<Vec<u8>, PullError>> {
        Box::pin(self.download(&module.source, limit))
    }
}

/// Where a `206 Partial Content` answer starts (`Content-Range: bytes START-END/TOTAL`).
fn resumes_at(response: &reqwest::Response) -> Option<u64> {
    let range = response.headers().get(CONTENT_RANGE)?.to_str().ok()?;
    range.strip_prefix("bytes ")?.split('-').next()?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// What the test server does with one request: the `Range` start asked for → the raw answer.
    type Answer = Box<dyn Fn(Option<usize>) -> Vec<u8> + Send + Sync>;

    /// A server on loopback answering request `i` with `answers[i]` (the last one again after
    /// that), closing each connection after its answer; keeps the `Range` of every request.
    async fn server(answers: Vec<Answer>) -> (String, Arc<Mutex<Vec<Option<usize>>>>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/m.wasm", listener.local_addr().unwrap());
        let ranges = Arc::new(Mutex::new(Vec::new()));
        let seen = ranges.clone();
        tokio::spawn(async move {
            let mut count = 0;
            while let Ok((mut stream, _)) = listener.accept().await {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap_or(0) == 1 {
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).to_lowercase();
                let range = head.lines().find_map(|l| l.strip_prefix("range: bytes=")).and_then(|r| r.trim_end_matches('-').parse().ok());
                seen.lock().unwrap().push(range);
                let answer = &answers[count.min(answers.len() - 1)];
                count += 1;
                let _ = stream.write_all(&answer(range)).await;
                let _ = stream.shutdown().await;
            }
        });
        (url, ranges)
    }

    fn module_bytes() -> Vec<u8> {
        (0..100_000u32).map(|i| (i % 251) as u8).collect()
    }

    /// The whole module announced, only its first `sent` bytes sent before the connection closes.
    fn cut_at(sent: usize) -> Answer {
        Box::new(move |_| {
            let body = module_bytes();
            let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()).into_bytes();
            out.extend_from_slice(&body[..sent]);
            out
        })
    }

    /// Honours the range asked for.
    fn ranged() -> Answer {
        Box::new(|range| {
            let body = module_bytes();
            let start = range.unwrap_or(0);
            let mut out = match range {
                Some(_) => format!(
                    "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{}\r\ncontent-length: {}\r\n\r\n",
                    body.len() - 1,
                    body.len(),
                    body.len() - start
                ),
                None => format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len()),
            }
            .into_bytes();
            out.extend_from_slice(&body[start..]);
            out
        })
    }

    fn plain(status: &'static str) -> Answer {
        Box::new(move |_| format!("HTTP/1.1 {status}\r\ncontent-length: 0\r\n\r\n").into_bytes())
    }

    fn module(url: &str) -> ModuleRef {
        ModuleRef { source: url.to_string(), ..ModuleRef::default() }
    }

    #[tokio::test]
    async fn a_download_cut_off_mid_body_resumes_where_it_stopped() {
        let (url, ranges) = server(vec![cut_at(30_000), cut_at(10_000), ranged()]).await;
        let source = HttpsSource::new(None, true).unwrap();
        // The second answer ignores the range and sends the start again (200): taken as a new start.
        let bytes = source.fetch(&module(&url), 1 << 20).await.unwrap();
        assert_eq!(bytes, module_bytes());
        assert_eq!(*ranges.lock().unwrap(), [None, Some(30_000), Some(10_000)]);
    }

    /// Answers a range request with another part than asked for (from `start`).
    fn elsewhere(start: usize) -> Answer {
        Box::new(move |_| {
            let body = module_bytes();
            let mut out = format!(
                "HTTP/1.1 206 Partial Content\r\ncontent-range: bytes {start}-{}/{}\r\ncontent-length: {}\r\n\r\n",
                body.len() - 1,
                body.len(),
                body.len() - start
            )
            .into_bytes();
            out.extend_from_slice(&body[start..]);
            out
        })
    }

    #[tokio::test(start_paused = false)]
    async fn a_part_other_than_asked_for_is_not_appended() {
        let (url, ranges) = server(vec![cut_at(30_000), elsewhere(5_000), ranged()]).await;
        let source = HttpsSource::new(None, true).unwrap();
        let bytes = tokio::time::timeout(std::time::Duration::from_secs(20), source.fetch(&module(&url), 1 << 20)).await.unwrap().unwrap();
        assert_eq!(bytes, module_bytes());
        assert_eq!(*ranges.lock().unwrap(), [None, Some(30_000), None], "asked again from the start");

        // A server that never sends the part asked for is given up on.
        let (url, ranges) = server(vec![cut_at(30_000), elsewhere(5_000)]).await;
        let error =
            tokio::time::timeout(std::time::Duration::from_secs(20), source.fetch(&module(&url), 1 << 20)).await.unwrap().unwrap_err();
        assert!(error.to_string().contains("other parts than asked for"), "{error}");
        assert!(ranges.lock().unwrap().len() <= 2 + 2 * RESUMES as usize);
    }

    #[tokio::test]
    async fn refusals_name_what_is_wrong() {
        let (url, _) = server(vec![plain("404 Not Found")]).await;
        let source = HttpsSource::new(None, true).unwrap();
        let error = source.fetch(&module(&url), 1 << 20).await.unwrap_err();
        assert!(matches!(&error, PullError::Refused(m) if m.contains("404")), "{error}");

        let (url, _) = server(vec![plain("503 Service Unavailable")]).await;
        assert!(matches!(source.fetch(&module(&url), 1 << 20).await, Err(PullError::Unreachable(m)) if m.contains("503")));

        // Larger than the node accepts: by its announced length, and by what it sends.
        let (url, _) = server(vec![ranged()]).await;
        assert!(matches!(source.fetch(&module(&url), 1000).await, Err(PullError::TooLarge { limit: 1000 })));

        // A server that breaks off without bringing anything new is given up on.
        let (url, ranges) = server(vec![cut_at(0)]).await;
        let error = source.fetch(&module(&url), 1 << 20).await.unwrap_err();
        assert!(matches!(&error, PullError::Unreachable(m) if m.contains("broke off after 0 bytes")), "{error}");
        assert_eq!(ranges.lock().unwrap().len(), 1);

        // http:// only where the node allows it; other schemes never.
        let strict = HttpsSource::new(None, false).unwrap();
        let error = strict.fetch(&module(&url), 1 << 20).await.unwrap_err();
        assert!(error.to_string().contains("--allow-http-modules"), "{error}");
        let error = strict.fetch(&module("file:///etc/passwd"), 1 << 20).await.unwrap_err();
        assert!(matches!(&error, PullError::Refused(m) if m.contains("not file://")), "{error}");
    }
}

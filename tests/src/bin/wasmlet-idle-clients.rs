//! `wasmlet-idle-clients ADDR COUNT SOURCE_IP`: the attacker of the
//! connection-exhaustion tests. Opens COUNT TCP connections to ADDR from
//! SOURCE_IP (any 127.x.y.z on Linux, so several of these processes do not
//! share one range of ephemeral ports), sends nothing on them, and holds them
//! until it is killed.
//!
//! On stdout: `connected N` once every connection attempt ended (N of them
//! were established), then `open N` whenever the number of connections the
//! server has not closed changes. It raises its open-files limit to the hard
//! limit first; one process holds as many connections as that allows.
#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};

/// Connection attempts in flight at once.
const CONCURRENCY: usize = 256;
/// A SYN the server's full backlog drops is retried by the kernel for long; give up sooner.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
const POLL: Duration = Duration::from_millis(200);

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let parsed = match args.as_slice() {
        [addr, count, source] => addr.parse::<SocketAddr>().ok().zip(count.parse::<usize>().ok()).zip(source.parse::<IpAddr>().ok()),
        _ => None,
    };
    let Some(((addr, count), source)) = parsed else {
        eprintln!("usage: wasmlet-idle-clients ADDR COUNT SOURCE_IP");
        return std::process::ExitCode::from(2);
    };
    raise_open_files_limit();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("wasmlet-idle-clients: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    runtime.block_on(hold(addr, count, source));
    std::process::ExitCode::SUCCESS
}

async fn hold(addr: SocketAddr, count: usize, source: IpAddr) {
    let mut streams = Vec::with_capacity(count);
    let mut attempts = tokio::task::JoinSet::new();
    let mut started = 0;
    while started < count || !attempts.is_empty() {
        while started < count && attempts.len() < CONCURRENCY {
            attempts.spawn(connect(addr, source));
            started += 1;
        }
        if let Some(Ok(Some(stream))) = attempts.join_next().await {
            streams.push(stream);
        }
    }
    println!("connected {}", streams.len());
    let mut reported = None;
    loop {
        // A connection the server closed reads end-of-file (or a reset); an open one would block.
        streams.retain(|s| matches!(s.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock));
        if reported != Some(streams.len()) {
            println!("open {}", streams.len());
            reported = Some(streams.len());
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn connect(addr: SocketAddr, source: IpAddr) -> Option<TcpStream> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.ok()?;
    socket.bind(SocketAddr::new(source, 0)).ok()?;
    tokio::time::timeout(CONNECT_TIMEOUT, socket.connect(addr)).await.ok()?.ok()
}

fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
}

//! `net-probe`: reports what network access the sandbox lets the guest have. Built for
//! wasm32-wasip2, where Rust std's `std::net` goes through `wasi:sockets`. Arguments are handled
//! in order; every attempt prints one line:
//!
//! * `<addr>` (`IP:PORT`): connects over TCP and prints `tcp <addr>: ok` (then closes the
//!   connection) or `tcp <addr>: denied <error>`;
//! * `--udp <addr>`: binds a UDP socket to `0.0.0.0:0` and sends one datagram (`net-probe`) to
//!   `<addr>`: `udp <addr>: ok sent <N> bytes`, or `udp <addr>: denied bind <error>` /
//!   `udp <addr>: denied send <error>`;
//! * `--listen <addr>`: binds a TCP listener: `listen <addr>: ok <local addr>` or
//!   `listen <addr>: denied <error>`;
//! * `--lookup <host>`: resolves a name (`<host>:80`): `lookup <host>: ok <N> addresses` or
//!   `lookup <host>: denied <error>`.
//!
//! Always exits 0 (2 only for a malformed command line, e.g. `--udp` without an address).

use std::io::{self, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs, UdpSocket};

const USAGE: &str = "usage: net-probe [<ip:port>] [--udp <ip:port>] [--listen <ip:port>] [--lookup <host>] ...";

fn udp(addr: &str) -> String {
    let socket = match UdpSocket::bind("0.0.0.0:0") {
        Ok(socket) => socket,
        Err(e) => return format!("denied bind {e}"),
    };
    match socket.send_to(b"net-probe", addr) {
        Ok(n) => format!("ok sent {n} bytes"),
        Err(e) => format!("denied send {e}"),
    }
}

fn main() {
    let mut out = io::stdout().lock();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| {
            args.next().unwrap_or_else(|| {
                let _ = out.flush();
                eprintln!("net-probe: {flag} needs a value\n{USAGE}");
                std::process::exit(2);
            })
        };
        let line = match arg.as_str() {
            "--udp" => {
                let addr = value("--udp");
                format!("udp {addr}: {}", udp(&addr))
            }
            "--listen" => {
                let addr = value("--listen");
                match TcpListener::bind(addr.as_str()).and_then(|l| l.local_addr()) {
                    Ok(local) => format!("listen {addr}: ok {local}"),
                    Err(e) => format!("listen {addr}: denied {e}"),
                }
            }
            "--lookup" => {
                let host = value("--lookup");
                match (host.as_str(), 80).to_socket_addrs() {
                    Ok(addrs) => format!("lookup {host}: ok {} addresses", addrs.count()),
                    Err(e) => format!("lookup {host}: denied {e}"),
                }
            }
            "-h" | "--help" => USAGE.to_string(),
            addr => match TcpStream::connect(addr) {
                Ok(stream) => {
                    drop(stream);
                    format!("tcp {addr}: ok")
                }
                Err(e) => format!("tcp {addr}: denied {e}"),
            },
        };
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
}

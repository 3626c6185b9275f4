//! `exit-code`: prints `exiting with N` and exits with N, the integer first argument
//! (0 without one). A non-integer argument is an error: message on stderr, exit code 2.

use std::io::Write;

fn main() {
    let code = match std::env::args().nth(1) {
        None => 0,
        Some(arg) => match arg.trim().parse::<i32>() {
            Ok(code) => code,
            Err(e) => {
                eprintln!("exit-code: not an integer exit code {arg:?}: {e}");
                std::process::exit(2);
            }
        },
    };
    println!("exiting with {code}");
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

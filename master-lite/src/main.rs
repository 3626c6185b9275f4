use anyhow::Context;
use wasmlet_config::daemon::{block_on, init_tracing, shutdown_signal};
use wasmlet_master::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli: Cli = wasmlet_config::load(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Some(Command::ConfigTemplate) = cli.command {
        use clap::CommandFactory;
        print!("{}", wasmlet_config::commented_template(&Cli::command()));
        return std::process::ExitCode::SUCCESS;
    }
    init_tracing(cli.master.log_format);
    block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.master.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", cli.master.listen))?;
        wasmlet_master::run(cli.master, listener, shutdown_signal()).await
    })
}

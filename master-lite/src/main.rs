use anyhow::Context;
use wasmlet_config::daemon::{block_on, init_tracing, shutdown_signal};
use wasmlet_master::config::{Cli, Command};

fn main() -> std::process::ExitCode {
    let cli: Cli = wasmlet_config::load(std::env::args_os()).unwrap_or_else(|e| e.exit());
    match &cli.command {
        Some(Command::ConfigTemplate) => {
            use clap::CommandFactory;
            print!("{}", wasmlet_config::commented_template(&Cli::command()));
            return std::process::ExitCode::SUCCESS;
        }
        Some(Command::Token(command)) => {
            let command = command.clone();
            return one_shot(async move { wasmlet_master::admin::token(&cli.master, &command).await });
        }
        Some(Command::Backup { file }) => {
            let file = file.clone();
            return one_shot(async move { wasmlet_master::backup::command::backup(&cli.master, &file).await });
        }
        Some(Command::Restore { file, force }) => {
            let text = wasmlet_master::backup::command::restore(&cli.master, file, *force);
            return one_shot(async move { text });
        }
        Some(Command::JoinCommand) => {
            let text = wasmlet_master::auth::bootstrap::join_command(&cli.master);
            return one_shot(async move { text });
        }
        Some(Command::ClientConfig { context, server }) => {
            let text = wasmlet_master::admin::client_config(&cli.master, context, server.as_deref());
            return one_shot(async move { text });
        }
        None => {}
    }
    init_tracing(cli.master.log_format);
    block_on(async move {
        let listener = tokio::net::TcpListener::bind(cli.master.listen)
            .await
            .with_context(|| format!("cannot listen on --listen {}", cli.master.listen))?;
        wasmlet_master::run(cli.master, listener, shutdown_signal()).await
    })
}

/// Runs a command that prints its result: the text on stdout, or `error: …` on stderr and exit code 1.
fn one_shot(command: impl std::future::Future<Output = anyhow::Result<String>>) -> std::process::ExitCode {
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")
        .and_then(|rt| rt.block_on(command));
    match result {
        Ok(text) => {
            print!("{text}");
            std::process::ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

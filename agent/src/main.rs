use anyhow::Context;
use wasmlet_agent::config::{Cli, Command};
use wasmlet_config::daemon::{block_on, init_tracing, shutdown_signal};

fn main() -> std::process::ExitCode {
    let mut cli: Cli = wasmlet_config::load(std::env::args_os()).unwrap_or_else(|e| e.exit());
    if let Some(Command::Compile(args)) = &cli.command {
        // The agent's compiler process: no logging, no async runtime, nothing but the compile.
        return wasmlet_agent::runtime::compiler::child_main(args);
    }
    if let Some(Command::Instance(args)) = &cli.command {
        // A process-isolated instance: its own scheduler, its log its own file.
        return wasmlet_agent::process::child::child_main(args);
    }
    // This very binary, even if its file was replaced (an upgrade) since it started.
    cli.agent.compiler = Some("/proc/self/exe".into());
    init_tracing(cli.agent.log_format);
    block_on(async move {
        match cli.command {
            Some(Command::Status { output }) => wasmlet_agent::status_cmd::execute(&cli.agent, output).await,
            Some(Command::Compile(_) | Command::Instance(_)) => Ok(()),
            Some(Command::ConfigTemplate) => {
                use clap::CommandFactory;
                print!("{}", wasmlet_config::commented_template(&Cli::command()));
                Ok(())
            }
            None => {
                let addr = cli.agent.api_addr();
                let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("cannot listen on --api-addr {addr}"))?;
                wasmlet_agent::run(cli.agent, listener, shutdown_signal()).await
            }
        }
    })
}

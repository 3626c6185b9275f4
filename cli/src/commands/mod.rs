//! The command line: global connection flags and one subcommand per file,
//! each a struct with `execute(self, &Session)`.

use std::io::Write as _;

use clap::{Parser, Subcommand};

use crate::client::Client;
use crate::config::{ConfigFile, Connection, Overrides, config_path, moved_variable_hint};
use crate::style::Style;
use crate::{Error, Result};

pub mod apply;
pub mod completion;
pub mod config;
pub mod cordon;
pub mod create;
pub mod delete;
pub mod describe;
pub mod drain;
pub mod events;
pub mod get;
pub mod logs;
pub mod push;
pub mod rollout;
pub mod top;
pub mod uncordon;
pub mod version;

/// Run and inspect WebAssembly workloads on a wasmlet cluster.
#[derive(Debug, Parser)]
#[command(name = "wasmlet", version, about, propagate_version = true)]
pub struct Cli {
    /// The master's URL (default: the current context, else https://127.0.0.1:7070).
    #[arg(long, global = true, env = "WASMLET_MASTER", value_name = "URL")]
    pub master: Option<String>,
    /// Bearer token sent to the master.
    #[arg(long, global = true, env = "WASMLET_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM file of the cluster CA, the only issuer the master's certificate is trusted from.
    #[arg(long, global = true, env = "WASMLET_CA", value_name = "FILE")]
    pub certificate_authority: Option<std::path::PathBuf>,
    /// Use this context of the config file instead of `current-context`.
    #[arg(long, global = true)]
    pub context: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    Get(get::Get),
    Describe(describe::Describe),
    Apply(apply::Apply),
    Create(create::Create),
    Delete(delete::Delete),
    Cordon(cordon::Cordon),
    Uncordon(uncordon::Uncordon),
    Drain(drain::Drain),
    Events(events::Events),
    Logs(logs::Logs),
    Push(push::Push),
    Rollout(rollout::Rollout),
    Top(top::Top),
    Version(version::Version),
    Config(config::Config),
    Completion(completion::Completion),
}

impl Cli {
    pub fn execute(self) -> Result<()> {
        let session = Session {
            overrides: Overrides {
                master: self.master,
                token: self.token,
                context: self.context,
                certificate_authority: self.certificate_authority,
            },
            style: Style::detect(std::env::var_os("NO_COLOR")),
        };
        match self.command {
            Command::Get(c) => c.execute(&session),
            Command::Describe(c) => c.execute(&session),
            Command::Apply(c) => c.execute(&session),
            Command::Create(c) => c.execute(&session),
            Command::Push(c) => c.execute(&session),
            Command::Rollout(c) => c.execute(&session),
            Command::Delete(c) => c.execute(&session),
            Command::Cordon(c) => c.execute(&session),
            Command::Uncordon(c) => c.execute(&session),
            Command::Drain(c) => c.execute(&session),
            Command::Events(c) => c.execute(&session),
            Command::Logs(c) => c.execute(&session),
            Command::Top(c) => c.execute(&session),
            Command::Version(c) => c.execute(&session),
            Command::Config(c) => c.execute(&session),
            Command::Completion(c) => c.execute(&session),
        }
    }
}

/// What every command may need: where the master is, and how to print.
pub struct Session {
    pub overrides: Overrides,
    pub style: Style,
}

impl Session {
    pub fn config_path(&self) -> Result<std::path::PathBuf> {
        config_path(&|key| std::env::var(key).ok())
    }

    /// The config file; a missing one is empty, with a hint if `WASMLET_CONFIG` may have been meant.
    pub fn config_file(&self) -> Result<ConfigFile> {
        let path = self.config_path()?;
        if let Some(hint) = moved_variable_hint(&|key| std::env::var(key).ok(), &path) {
            note(&hint);
        }
        ConfigFile::load(&path)
    }

    pub fn connection(&self) -> Result<Connection> {
        // With `--master` and no `--context`, a broken, unreadable or missing config file does not matter
        // (nor is there a hint about it): the file only adds the current context's token and CA.
        let file = if self.overrides.master.is_some() && self.overrides.context.is_none() {
            self.config_path().and_then(|path| ConfigFile::load(&path)).unwrap_or_default()
        } else {
            self.config_file()?
        };
        Connection::resolve(&self.overrides, &file)
    }

    pub fn client(&self) -> Result<Client> {
        Client::new(&self.connection()?)
    }
}

/// Writes to stdout; a closed pipe (`wasmlet get nodes | head -1`) ends the program quietly.
pub fn print(text: &str) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|_| out.flush())
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// A progress or status line for people, on stderr.
pub fn note(text: &str) {
    eprintln!("{text}");
}

/// Parses `kind/name` or a bare name (of `default_kind`).
pub fn split_ref<'a>(text: &'a str, default_kind: &'a str) -> (&'a str, &'a str) {
    text.split_once('/').unwrap_or((default_kind, text))
}

pub(crate) fn usage(message: impl Into<String>) -> Error {
    Error::Usage(message.into())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    #[test]
    fn the_command_line_is_consistent() {
        super::Cli::command().debug_assert();
    }
}

//! Layered settings for wasmlet's daemons.
//!
//! Every setting is declared once, as a clap argument with its default, its
//! `WASMLET_…` environment variable and its help. The same declaration names
//! the key in the TOML config file (the flag's long name, `data-dir = "…"`),
//! so flags, environment, file and documentation cannot drift apart.
//!
//! Precedence, highest first: command-line flag, environment variable,
//! config file, built-in default.
//!
//! `daemon` holds what both daemons do alike around their `run`: logging,
//! the shutdown signal, the exit code.
#![forbid(unsafe_code)]

pub mod daemon;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::{ContextKind, ContextValue};
use clap::parser::ValueSource;
use clap::{ArgAction, Command};

/// Why settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A bad flag or environment variable, or `--help`/`--version`: clap's own
    /// message, printed and exited by [`ConfigError::exit`].
    #[error("{0}")]
    Cli(#[from] clap::Error),
    #[error("config file {path}: cannot read it: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
}

impl ConfigError {
    /// Prints the error (or the help text) and exits: 0 for help and version, 2 otherwise.
    pub fn exit(self) -> ! {
        match self {
            ConfigError::Cli(e) => e.exit(),
            other => {
                eprintln!("error: {other}");
                std::process::exit(2)
            }
        }
    }
}

/// Parses `argv` into `T`, filling settings not given as flags or environment
/// variables from the TOML file named by the `--config` flag (argument id `config`).
pub fn load<T, I, S>(argv: I) -> Result<T, ConfigError>
where
    T: clap::Parser,
    I: IntoIterator<Item = S>,
    S: Into<OsString> + Clone,
{
    let argv: Vec<OsString> = argv.into_iter().map(Into::into).collect();
    let command = T::command();
    let matches = command.clone().try_get_matches_from(&argv)?;
    let config_path = find_config_path(&matches);
    let Some(path) = config_path else {
        return Ok(T::from_arg_matches(&matches)?);
    };

    let text = std::fs::read_to_string(&path).map_err(|source| ConfigError::Read { path: path.clone(), source })?;
    let file_args = file_arguments(&command, &matches, &path, &text)?;
    let mut merged = Vec::with_capacity(argv.len() + file_args.args.len());
    merged.extend(argv.first().cloned());
    merged.extend(file_args.args.iter().map(OsString::from));
    merged.extend(argv.iter().skip(1).cloned());

    let matches = command.try_get_matches_from(&merged).map_err(|e| attribute_to_file(e, &path, &file_args.keys))?;
    Ok(T::from_arg_matches(&matches)?)
}

fn find_config_path(matches: &clap::ArgMatches) -> Option<PathBuf> {
    let mut m = matches;
    loop {
        if let Ok(Some(path)) = m.try_get_one::<PathBuf>("config") {
            return Some(path.clone());
        }
        m = m.subcommand()?.1;
    }
}

struct FileArguments {
    args: Vec<String>,
    keys: BTreeSet<String>,
}

/// Turns the file's keys into `--key=value` arguments for every setting that
/// neither a flag nor the environment already set.
fn file_arguments(command: &Command, matches: &clap::ArgMatches, path: &Path, text: &str) -> Result<FileArguments, ConfigError> {
    let file_error = |message: String| ConfigError::File { path: path.to_path_buf(), message };
    let table: toml::Table = text.parse().map_err(|e: toml::de::Error| file_error(e.to_string().trim_end().to_string()))?;

    let settable: Vec<&clap::Arg> = command
        .get_arguments()
        .filter(|a| a.get_long().is_some() && a.get_id() != "config" && !matches!(a.get_action(), ArgAction::Help | ArgAction::Version))
        .collect();
    if let Some(key) = ["contexts", "current-context"].into_iter().find(|k| table.contains_key(*k)) {
        return Err(file_error(format!(
            "key `{key}`: this is the wasmlet CLI's contexts file, not a daemon's settings file; \
             the CLI reads it from WASMLETCONFIG: set that instead of WASMLET_CONFIG (or --config), \
             which name the daemons' settings file"
        )));
    }
    let mut out = FileArguments { args: Vec::new(), keys: BTreeSet::new() };
    for (key, value) in &table {
        let Some(arg) = settable.iter().find(|a| a.get_long() == Some(key.as_str())) else {
            let known: Vec<&str> = settable.iter().filter_map(|a| a.get_long()).collect();
            return Err(file_error(format!("unknown key `{key}` (known keys: {})", known.join(", "))));
        };
        let source = matches.value_source(arg.get_id().as_str());
        if matches!(source, Some(ValueSource::CommandLine | ValueSource::EnvVariable)) {
            continue;
        }
        out.keys.insert(key.clone());
        if arg.get_action().takes_values() {
            let text = scalar_text(value).map_err(|what| file_error(format!("key `{key}`: {what}")))?;
            out.args.push(format!("--{key}={text}"));
        } else {
            match value {
                toml::Value::Boolean(true) => out.args.push(format!("--{key}")),
                toml::Value::Boolean(false) => {}
                other => return Err(file_error(format!("key `{key}`: expected true or false, found {}", other.type_str()))),
            }
        }
    }
    Ok(out)
}

/// The text a TOML value stands for on the command line. Tables become
/// `k=v,k2=v2` (labels) and arrays `a,b` (lists).
fn scalar_text(value: &toml::Value) -> Result<String, String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        toml::Value::Array(items) => items.iter().map(scalar_text).collect::<Result<Vec<_>, _>>()?.join(","),
        toml::Value::Table(t) => {
            t.iter().map(|(k, v)| scalar_text(v).map(|v| format!("{k}={v}"))).collect::<Result<Vec<_>, _>>()?.join(",")
        }
        toml::Value::Datetime(d) => d.to_string(),
    })
}

/// A clap error caused by a value that came from the file is reported as the
/// file's, naming the key.
fn attribute_to_file(error: clap::Error, path: &Path, file_keys: &BTreeSet<String>) -> ConfigError {
    let arg = match error.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => return ConfigError::Cli(error),
    };
    let long = arg.trim_start_matches("--").split([' ', '=']).next().unwrap_or_default().to_string();
    if !file_keys.contains(&long) {
        return ConfigError::Cli(error);
    }
    let value = match error.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => format!(" `{v}`"),
        _ => String::new(),
    };
    let detail = error.to_string();
    let reason =
        detail.lines().next().and_then(|l| l.rsplit_once(": ")).map(|(_, r)| r.to_string()).unwrap_or_else(|| detail.trim().to_string());
    ConfigError::File { path: path.to_path_buf(), message: format!("key `{long}`: invalid value{value}: {reason}") }
}

/// A commented TOML config file listing every setting of `command` with its
/// help, environment variable and default: what packages install, generated
/// from the same declarations as the flags so the two cannot drift apart.
pub fn commented_template(command: &Command) -> String {
    let name = command.get_name();
    let mut out = format!(
        "# {name} configuration (TOML), read with --config FILE.\n\
         # Every key is the flag of the same name; a flag or a WASMLET_* environment\n\
         # variable overrides the file. Uncomment a line to change its default.\n\n"
    );
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "config" || arg.is_hide_set() || matches!(arg.get_action(), ArgAction::Help | ArgAction::Version) {
            continue;
        }
        if let Some(help) = arg.get_help() {
            for line in help.to_string().lines() {
                out.push_str(&format!("# {line}\n"));
            }
        }
        if let Some(env) = arg.get_env() {
            out.push_str(&format!("# Environment: {}\n", env.to_string_lossy()));
        }
        let default = arg.get_default_values().first().map(|v| v.to_string_lossy().into_owned());
        let placeholder =
            || arg.get_value_names().and_then(|n| n.first()).map(|n| format!("<{n}>")).unwrap_or_else(|| "<value>".to_string());
        match (arg.get_action().takes_values(), default) {
            (false, _) => out.push_str(&format!("#{long} = false\n\n")),
            (true, Some(value)) => out.push_str(&format!("#{long} = \"{value}\"\n\n")),
            (true, None) => out.push_str(&format!("#{long} = \"{}\"  # no default\n\n", placeholder())),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::{CommandFactory, Parser};

    #[derive(Parser, Debug)]
    struct Settings {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Where state lives.
        #[arg(long, default_value = "/var/lib/x")]
        data_dir: PathBuf,
        #[arg(long, default_value = "7071")]
        port: u16,
        #[arg(long)]
        verbose: bool,
        #[arg(long, env = "WASMLET_CONFIG_TEST_ONLY_NAME")]
        name: Option<String>,
    }

    fn file(text: &str) -> tempfile::NamedTempFile {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), text).unwrap();
        f
    }

    #[test]
    fn defaults_apply_without_a_file() {
        let s: Settings = load(["x"]).unwrap();
        assert_eq!(s.port, 7071);
        assert_eq!(s.data_dir, PathBuf::from("/var/lib/x"));
    }

    #[test]
    fn file_fills_what_flags_do_not_set() {
        let f = file("port = 9000\ndata-dir = \"/tmp/d\"\nverbose = true\nname = \"edge\"\n");
        let path = f.path().to_str().unwrap();
        let s: Settings = load(["x", "--config", path, "--port", "8000"]).unwrap();
        assert_eq!(s.port, 8000, "the flag wins over the file");
        assert_eq!(s.data_dir, PathBuf::from("/tmp/d"));
        assert!(s.verbose);
        assert_eq!(s.name.as_deref(), Some("edge"));
    }

    #[test]
    fn bad_file_values_name_the_file_and_key() {
        let f = file("port = \"many\"\n");
        let err = load::<Settings, _, _>(["x", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("key `port`"), "{err}");
        assert!(err.contains("many"), "{err}");
        assert!(err.contains(f.path().to_str().unwrap()), "{err}");
    }

    #[test]
    fn the_cli_contexts_file_is_named_as_such() {
        let f = file("current-context = \"lab\"\n[[contexts]]\nname = \"lab\"\nmaster = \"https://m\"\n");
        let err = load::<Settings, _, _>(["x", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("the wasmlet CLI's contexts file") && err.contains("WASMLETCONFIG"), "{err}");
    }

    #[test]
    fn unknown_keys_and_broken_toml_are_refused() {
        let f = file("prot = 1\n");
        let err = load::<Settings, _, _>(["x", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.contains("unknown key `prot`") && err.contains("port"), "{err}");
        let f = file("port = \n");
        let err = load::<Settings, _, _>(["x", "--config", f.path().to_str().unwrap()]).unwrap_err().to_string();
        assert!(err.starts_with("config file"), "{err}");
        let err = load::<Settings, _, _>(["x", "--config", "/nonexistent/x.toml"]).unwrap_err().to_string();
        assert!(err.contains("cannot read"), "{err}");
    }

    #[test]
    fn template_lists_every_setting_with_its_default() {
        let t = commented_template(&Settings::command());
        assert!(t.contains("# Where state lives\n#data-dir = \"/var/lib/x\""), "{t}");
        assert!(t.contains("#port = \"7071\""));
        assert!(t.contains("#verbose = false"));
        assert!(t.contains("#name = \"<NAME>\"  # no default"), "{t}");
        assert!(!t.contains("config ="));
    }
}

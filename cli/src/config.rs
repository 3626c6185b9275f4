//! Where the master is and how to talk to it.
//!
//! In order: `--master`/`--token`/`--certificate-authority` flags (or
//! `WASMLET_MASTER`/`WASMLET_TOKEN`/`WASMLET_CA`), then the context named by
//! `--context` or `current-context` in the config file, then
//! `https://127.0.0.1:7070`. The file is `$WASMLETCONFIG`, else
//! `$XDG_CONFIG_HOME/wasmlet/config.toml`, else `~/.config/wasmlet/config.toml`
//! (`wasmlet-master client-config` prints one). The CLI's variable is not the
//! daemons' `WASMLET_CONFIG` (their settings file): one shell can set both, as
//! kubectl's `KUBECONFIG` sits beside a kubelet's `--config`.
//!
//! ```toml
//! current-context = "lab"
//!
//! [[contexts]]
//! name = "lab"
//! master = "https://10.0.0.5:7070"
//! token = "…"
//! certificate-authority = "/etc/wasmlet/ca.crt"   # or the PEM itself:
//! # certificate-authority-data = '''-----BEGIN CERTIFICATE-----…'''
//! ```
//!
//! The environment is read through a function, so tests never touch the process's.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// The mode of a config file the CLI creates: it holds tokens.
const NEW_FILE_MODE: u32 = 0o600;

/// The master a fresh installation talks to (`make run` listens there).
pub const DEFAULT_MASTER: &str = "https://127.0.0.1:7070";

/// A named master, the token to present to it and the CA that signed its certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Context {
    pub name: String,
    pub master: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// A PEM file with the cluster CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority: Option<PathBuf>,
    /// The cluster CA itself, PEM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub certificate_authority_data: Option<String>,
}

/// The config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: Vec<Context>,
}

impl ConfigFile {
    /// Reads the file; a missing file is an empty configuration.
    pub fn load(path: &Path) -> Result<ConfigFile> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| Error::Usage(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigFile::default()),
            Err(e) => Err(Error::Usage(format!("cannot read {}: {e}", path.display()))),
        }
    }

    /// Writes the file whole: to a temporary file first, then renamed over the
    /// old one. A new file (and its missing parent directories) is created,
    /// readable by its owner alone (0600: it holds tokens); an existing file
    /// keeps its mode.
    pub fn save(&self, path: &Path) -> Result<()> {
        use std::io::Write as _;
        use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
        let fail = |e: std::io::Error| Error::Failed(format!("cannot write {}: {e}", path.display()));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(fail)?;
        }
        let text = toml::to_string(self).map_err(|e| Error::Failed(format!("cannot encode the configuration: {e}")))?;
        let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(NEW_FILE_MODE);
        let mut tmp_name = path.as_os_str().to_owned();
        tmp_name.push(".tmp");
        let tmp = PathBuf::from(tmp_name);
        let written = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)
            .and_then(|mut file| {
                // The umask narrows `mode` at creation, and a leftover temporary file keeps its own: set it.
                file.set_permissions(std::fs::Permissions::from_mode(mode))?;
                file.write_all(text.as_bytes())?;
                file.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, path));
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map_err(fail)
    }

    pub fn context(&self, name: &str) -> Option<&Context> {
        self.contexts.iter().find(|c| c.name == name)
    }

    /// Adds the context or changes the one of that name.
    pub fn set_context(&mut self, context: Context) {
        match self.contexts.iter_mut().find(|c| c.name == context.name) {
            Some(existing) => *existing = context,
            None => self.contexts.push(context),
        }
    }
}

/// The variable naming the CLI's config file.
pub const CONFIG_VAR: &str = "WASMLETCONFIG";

/// The daemons' settings file, which the CLI used to share; read only to give a hint.
const DAEMON_CONFIG_VAR: &str = "WASMLET_CONFIG";

/// The config file's path, from `WASMLETCONFIG`, `XDG_CONFIG_HOME` or `HOME`.
pub fn config_path(env: &dyn Fn(&str) -> Option<String>) -> Result<PathBuf> {
    let set = |key: &str| env(key).filter(|v| !v.is_empty());
    if let Some(path) = set(CONFIG_VAR) {
        return Ok(PathBuf::from(path));
    }
    let base = match (set("XDG_CONFIG_HOME"), set("HOME")) {
        (Some(xdg), _) => PathBuf::from(xdg),
        (None, Some(home)) => Path::new(&home).join(".config"),
        (None, None) => {
            return Err(Error::Usage(format!("neither {CONFIG_VAR}, XDG_CONFIG_HOME nor HOME is set: cannot find the config file")));
        }
    };
    Ok(base.join("wasmlet").join("config.toml"))
}

/// A one-line hint for a user who still points `WASMLET_CONFIG` at the CLI's
/// file: given when the CLI's own file (`path`) does not exist and
/// `WASMLETCONFIG` is not set.
pub fn moved_variable_hint(env: &dyn Fn(&str) -> Option<String>, path: &Path) -> Option<String> {
    let set = |key: &str| env(key).filter(|v| !v.is_empty());
    let old = set(DAEMON_CONFIG_VAR)?;
    if set(CONFIG_VAR).is_some() || path.exists() {
        return None;
    }
    Some(format!(
        "hint: the CLI reads its contexts from {CONFIG_VAR} (not {DAEMON_CONFIG_VAR}, the daemons' settings file); \
         no config file at {}: if {old} is your CLI config, `export {CONFIG_VAR}={old}`",
        path.display()
    ))
}

/// What the flags say; `None` where they say nothing.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub master: Option<String>,
    pub token: Option<String>,
    pub context: Option<String>,
    pub certificate_authority: Option<PathBuf>,
}

/// The master to talk to, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// Without a trailing slash: `https://127.0.0.1:7070`.
    pub master: String,
    pub token: Option<String>,
    /// The CA to trust, PEM.
    pub ca_pem: Option<String>,
}

impl Connection {
    pub fn resolve(overrides: &Overrides, file: &ConfigFile) -> Result<Connection> {
        let context =
            match overrides.context.as_deref().or(file.current_context.as_deref()) {
                Some(name) => Some(file.context(name).ok_or_else(|| {
                    Error::Usage(format!("context `{name}` is not in the config file (see `wasmlet config get-contexts`)"))
                })?),
                None => None,
            };
        let master = overrides.master.clone().or_else(|| context.map(|c| c.master.clone())).unwrap_or_else(|| DEFAULT_MASTER.to_string());
        let token = overrides.token.clone().or_else(|| context.and_then(|c| c.token.clone()));
        let read = |path: &PathBuf| {
            std::fs::read_to_string(path)
                .map_err(|e| Error::Usage(format!("cannot read the certificate authority {}: {e}", path.display())))
        };
        let ca_pem = match (&overrides.certificate_authority, context) {
            (Some(path), _) => Some(read(path)?),
            (None, Some(c)) => match (&c.certificate_authority_data, &c.certificate_authority) {
                (Some(pem), _) => Some(pem.clone()),
                (None, Some(path)) => Some(read(path)?),
                (None, None) => None,
            },
            (None, None) => None,
        };
        Ok(Connection { master: normalise(&master), token, ca_pem })
    }
}

/// `host:port` becomes `https://host:port`; trailing slashes go.
fn normalise(master: &str) -> String {
    let master = master.trim().trim_end_matches('/');
    if master.contains("://") { master.to_string() } else { format!("https://{master}") }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |key| map.get(key).cloned()
    }

    #[test]
    fn the_config_path_follows_xdg() {
        assert_eq!(config_path(&env(&[("HOME", "/home/a")])).unwrap(), PathBuf::from("/home/a/.config/wasmlet/config.toml"));
        assert_eq!(config_path(&env(&[("HOME", "/home/a"), ("XDG_CONFIG_HOME", "/x")])).unwrap(), PathBuf::from("/x/wasmlet/config.toml"));
        assert_eq!(config_path(&env(&[("XDG_CONFIG_HOME", "/x"), ("WASMLETCONFIG", "/c.toml")])).unwrap(), PathBuf::from("/c.toml"));
        assert_eq!(
            config_path(&env(&[("XDG_CONFIG_HOME", "/x"), ("WASMLET_CONFIG", "/daemon.toml")])).unwrap(),
            PathBuf::from("/x/wasmlet/config.toml"),
            "WASMLET_CONFIG is the daemons' file"
        );
        assert!(config_path(&env(&[])).unwrap_err().to_string().contains("WASMLETCONFIG"));
    }

    #[test]
    fn a_user_still_setting_wasmlet_config_gets_a_hint_when_the_cli_finds_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("wasmlet/config.toml");
        let hint = moved_variable_hint(&env(&[("WASMLET_CONFIG", "/old/cli.toml")]), &missing).unwrap();
        assert!(hint.contains("export WASMLETCONFIG=/old/cli.toml") && hint.contains(&missing.display().to_string()), "{hint}");
        assert_eq!(moved_variable_hint(&env(&[("WASMLET_CONFIG", "/a"), ("WASMLETCONFIG", "/b")]), &missing), None);
        assert_eq!(moved_variable_hint(&env(&[]), &missing), None);
        std::fs::write(dir.path().join("found.toml"), "").unwrap();
        assert_eq!(moved_variable_hint(&env(&[("WASMLET_CONFIG", "/a")]), &dir.path().join("found.toml")), None);
    }

    #[test]
    fn flags_beat_the_context_which_beats_the_default() {
        let mut file = ConfigFile::default();
        assert_eq!(Connection::resolve(&Overrides::default(), &file).unwrap().master, DEFAULT_MASTER);
        file.set_context(Context {
            name: "lab".into(),
            master: "10.0.0.5:7070/".into(),
            token: Some("t".into()),
            certificate_authority_data: Some("PEM".into()),
            ..Default::default()
        });
        file.current_context = Some("lab".into());
        let lab = Connection::resolve(&Overrides::default(), &file).unwrap();
        assert_eq!(lab, Connection { master: "https://10.0.0.5:7070".into(), token: Some("t".into()), ca_pem: Some("PEM".into()) });
        let flag = Overrides { master: Some("http://m".into()), ..Default::default() };
        let resolved = Connection::resolve(&flag, &file).unwrap();
        assert_eq!((resolved.master.as_str(), resolved.token.as_deref()), ("http://m", Some("t")));
        let missing_ca = Overrides { certificate_authority: Some("/nonexistent/ca.crt".into()), ..Default::default() };
        assert!(Connection::resolve(&missing_ca, &file).unwrap_err().to_string().contains("/nonexistent/ca.crt"));
        let missing = Overrides { context: Some("nope".into()), ..Default::default() };
        assert!(Connection::resolve(&missing, &file).unwrap_err().to_string().contains("`nope`"));
    }

    #[test]
    fn the_file_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wasmlet/config.toml");
        assert_eq!(ConfigFile::load(&path).unwrap(), ConfigFile::default());
        let mut file = ConfigFile { current_context: Some("a".into()), ..Default::default() };
        file.set_context(Context {
            name: "a".into(),
            master: "https://a".into(),
            certificate_authority_data: Some("PEM\n".into()),
            ..Default::default()
        });
        file.save(&path).unwrap();
        assert_eq!(ConfigFile::load(&path).unwrap(), file);
    }

    #[test]
    fn a_new_file_is_private_and_an_existing_one_keeps_its_mode() {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a/b/config");
        ConfigFile::default().save(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o640)).unwrap();
        ConfigFile { current_context: Some("x".into()), ..Default::default() }.save(&path).unwrap();
        assert_eq!(mode(&path), 0o640);
        assert!(!dir.path().join("a/b/config.tmp").exists());
    }
}

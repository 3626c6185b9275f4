//! The master's settings: every option is a flag, a `WASMLET_…` environment
//! variable and a key of the `--config` TOML file. The defaults live in
//! [`defaults`] and nowhere else.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, ValueEnum};
use wasmlet_api::{Bytes, Duration};
pub use wasmlet_config::daemon::LogFormat;
use wasmlet_security::serve::{ConnectionLimits, share_of_open_files};

/// The built-in defaults, one place for all of them.
pub mod defaults {
    pub const DATA_DIR: &str = "/var/lib/wasmlet-master";
    pub const LISTEN: &str = "0.0.0.0:7070";
    pub const HEARTBEAT_INTERVAL: &str = "2s";
    pub const NODE_GRACE_PERIOD: &str = "8s";
    pub const LOST_AFTER: &str = "15s";
    pub const STATUS_REPORT_INTERVAL: &str = "60s";
    pub const MAX_MODULE_SIZE: &str = "64Mi";
    pub const HAND_OFFS_PER_SECOND: &str = "10";
    pub const WATCH_TIMEOUT: &str = "30s";
    pub const SERVING_CERTIFICATE_TTL: &str = "30d";
    pub const NODE_CREDENTIAL_TTL: &str = "365d";
    /// Shortest lifetime a certificate or credential may be given: renewals come at two thirds of it.
    pub const MIN_TTL: std::time::Duration = std::time::Duration::from_secs(1);
    /// Within the absolute cap `wasmlet_api::limits::MAX_REPLICAS`.
    pub const MAX_REPLICAS: &str = "10000";
    pub const AUDIT_LOG_MAX_SIZE: &str = "64Mi";
    pub const AUDIT_LOG_MAX_FILES: &str = "4";
    pub const REFUSED_PER_SECOND: &str = "10";
    pub const REFUSED_BURST: &str = "50";
    pub const ETCD_PREFIX: &str = "/wasmlet";
    pub const LEADER_LEASE: &str = "2s";
    /// A request to etcd that takes longer fails: the store counts as unavailable (503).
    pub const ETCD_REQUEST_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
    /// Instances one controller pass creates or hands off at most; the rest
    /// follow in the next pass, at once: no object turns into one huge
    /// transaction, and requests get the cluster lock in between.
    pub const CONTROLLER_BATCH: usize = 1000;
    /// How often the audit log records what it dropped, when it dropped anything.
    pub const AUDIT_DROP_SUMMARY_EVERY: std::time::Duration = std::time::Duration::from_secs(5);
    pub const HEADER_READ_TIMEOUT: &str = "10s";
    pub const IDLE_TIMEOUT: &str = "60s";
    /// Share (percent) of the open-files limit the API may hold when `--max-connections`
    /// is not set: every agent keeps one or two connections open (its lease and its
    /// assignment watch); the other 25% stay for the store, module files, the audit
    /// log and the calls to agents.
    pub const CONNECTIONS_PERCENT: u64 = 75;
    /// Events kept in the store; older ones are dropped.
    pub const MAX_EVENTS: usize = 10_000;
    /// Share of silent nodes (and count) above which hand-offs are held off.
    pub const DISRUPTION_SHARE: f64 = 0.55;
    pub const DISRUPTION_MIN_NODES: usize = 2;
    /// First and largest delay before a Failed instance of a service or daemon is replaced.
    pub const REPLACE_BACKOFF_INITIAL: std::time::Duration = std::time::Duration::from_millis(200);
    pub const REPLACE_BACKOFF_MAX: std::time::Duration = std::time::Duration::from_secs(30);
}

/// `wasmlet-master`: the wasmlet master.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wasmlet-master",
    version,
    args_override_self = true,
    about = "wasmlet master: keeps the desired state and places WASM workloads on nodes"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML file with settings; keys are the long flag names (`data-dir = "/srv/wasmlet-master"`).
    /// Not the CLI's contexts file, which is `WASMLETCONFIG`'s.
    #[arg(long, global = true, env = "WASMLET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub master: MasterConfig,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Print a commented config file with every setting and its default (what packages install).
    ConfigTemplate,
    /// Create, list and revoke tokens of the running master (run on the master's machine: uses its data dir).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the command that joins a node with the first join token (`<data-dir>/join.token`); the master never logs it.
    JoinCommand,
    /// Write a consistent backup of the running master to FILE: every stored
    /// object, the uploaded modules they use, the CA and the bootstrap tokens (run on the master's machine).
    Backup {
        /// Where the backup goes; it holds the cluster CA's key: keep it as private as the data dir.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
    /// Restore a backup into the data dir of a stopped master.
    Restore {
        /// A file `wasmlet-master backup` wrote.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        /// Replace the data dir's store (and CA and token files) when it has one; what is replaced is kept beside it.
        #[arg(long)]
        force: bool,
    },
    /// Print a config file for the `wasmlet` CLI: this cluster's URL, CA and admin token.
    ClientConfig {
        /// The context's name.
        #[arg(long, default_value = "wasmlet")]
        context: String,
        /// The URL the CLI reaches the master at (default: the listen address, or this machine's first address).
        #[arg(long, value_name = "URL")]
        server: Option<String>,
    },
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum TokenCommand {
    /// Create a token and print it (the only time its secret is shown).
    Create {
        /// `join` (nodes register with it), `viewer` (read only) or `admin`.
        #[arg(long, default_value = "join", value_name = "ROLE")]
        role: String,
        /// How long the token is valid; `0s` never expires.
        #[arg(long, default_value = "24h", value_name = "DURATION")]
        ttl: Duration,
        /// What the token is for, shown by `token list`.
        #[arg(long, default_value = "")]
        description: String,
    },
    /// List tokens (never their secrets).
    List,
    /// Revoke a token by id: requests with it are refused from now on (a node's credential: its heartbeats fail).
    Revoke {
        /// The token's id: the part before the `.`.
        id: String,
    },
}

/// Settings of a running master.
#[derive(Debug, Clone, clap::Args)]
pub struct MasterConfig {
    /// Directory of the store and the uploaded modules.
    #[arg(long, global = true, env = "WASMLET_DATA_DIR", default_value = defaults::DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address of the API agents and operators talk to.
    #[arg(long, global = true, env = "WASMLET_LISTEN", default_value = defaults::LISTEN, value_name = "HOST:PORT")]
    pub listen: SocketAddr,

    /// How often agents renew their lease.
    #[arg(long, global = true, env = "WASMLET_HEARTBEAT_INTERVAL", default_value = defaults::HEARTBEAT_INTERVAL, value_name = "DURATION")]
    pub heartbeat_interval: Duration,

    /// Silence after which a node's conditions go Unknown and it is tainted unreachable.
    #[arg(long, global = true, env = "WASMLET_NODE_GRACE_PERIOD", default_value = defaults::NODE_GRACE_PERIOD, value_name = "DURATION")]
    pub node_grace_period: Duration,

    /// Silence after which a node's instances are Lost and handed off (workloads may override it).
    #[arg(long, global = true, env = "WASMLET_LOST_AFTER", default_value = defaults::LOST_AFTER, value_name = "DURATION")]
    pub lost_after: Duration,

    /// How often agents send their full NodeStatus when nothing changed.
    #[arg(long, global = true, env = "WASMLET_STATUS_REPORT_INTERVAL", default_value = defaults::STATUS_REPORT_INTERVAL, value_name = "DURATION")]
    pub status_report_interval: Duration,

    /// Largest module accepted by an upload (or from a registry).
    #[arg(long, global = true, env = "WASMLET_MAX_MODULE_SIZE", default_value = defaults::MAX_MODULE_SIZE, value_name = "BYTES")]
    pub max_module_size: Bytes,

    /// Also trust this CA (PEM) for the OCI registries the master resolves
    /// workloads' module tags at, beside the system's (a private registry).
    #[arg(long, global = true, env = "WASMLET_REGISTRY_CA_FILE", value_name = "FILE")]
    pub registry_ca_file: Option<PathBuf>,

    /// Credentials for resolving module tags in OCI registries: a Docker
    /// `config.json` (as `docker login` writes it). Read at each resolve, so
    /// renewed credentials apply without a restart; registries it does not
    /// name are asked anonymously. Nodes pull with their own credentials.
    #[arg(long, global = true, env = "WASMLET_REGISTRY_CREDENTIALS", value_name = "FILE")]
    pub registry_credentials: Option<PathBuf>,

    /// Instances of silent nodes handed off per second at most.
    #[arg(long, global = true, env = "WASMLET_HAND_OFFS_PER_SECOND", default_value = defaults::HAND_OFFS_PER_SECOND, value_name = "N")]
    pub hand_offs_per_second: u32,

    /// Longest a watch waits before answering 304, whatever the client asks.
    #[arg(long, global = true, env = "WASMLET_WATCH_TIMEOUT", default_value = defaults::WATCH_TIMEOUT, value_name = "DURATION")]
    pub watch_timeout: Duration,

    /// Most replicas one workload may ask for (at most 100000); a workload asking for more is refused.
    #[arg(long, global = true, env = "WASMLET_MAX_REPLICAS", default_value = defaults::MAX_REPLICAS, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=i64::from(wasmlet_api::limits::MAX_REPLICAS)))]
    pub max_replicas: u32,

    /// Size at which the audit log is rotated.
    #[arg(long, global = true, env = "WASMLET_AUDIT_LOG_MAX_SIZE", default_value = defaults::AUDIT_LOG_MAX_SIZE, value_name = "BYTES")]
    pub audit_log_max_size: Bytes,

    /// Audit log files kept, the current one included; older ones are deleted.
    #[arg(long, global = true, env = "WASMLET_AUDIT_LOG_MAX_FILES", default_value = defaults::AUDIT_LOG_MAX_FILES, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub audit_log_max_files: u32,

    /// Unauthenticated or forbidden requests answered per second per source address;
    /// more get `429` (`0`: no limit). Allowed requests are never limited.
    #[arg(long, global = true, env = "WASMLET_REFUSED_PER_SECOND", default_value = defaults::REFUSED_PER_SECOND, value_name = "N")]
    pub refused_per_second: u32,

    /// Refused requests one source address may send at once before the per-second limit applies.
    #[arg(long, global = true, env = "WASMLET_REFUSED_BURST", default_value = defaults::REFUSED_BURST, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub refused_burst: u32,
    /// Most connections the API keeps open at once; more are closed as soon as they are
    /// accepted. Default: 75% of the open-files limit (raised to its hard limit at start).
    #[arg(long, global = true, env = "WASMLET_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub max_connections: Option<u64>,

    /// Time a client has to send a request's whole header, from the connection's opening
    /// (TLS handshake included) or from the request's first byte; then the connection is closed.
    #[arg(long, global = true, env = "WASMLET_HEADER_READ_TIMEOUT", default_value = defaults::HEADER_READ_TIMEOUT, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// Time a kept-alive connection may wait for its next request without receiving anything;
    /// then it is closed.
    #[arg(long, global = true, env = "WASMLET_IDLE_TIMEOUT", default_value = defaults::IDLE_TIMEOUT, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// How nodes are scored after spreading: prefer the emptiest or the fullest.
    #[arg(long, global = true, env = "WASMLET_SCORING", value_enum, default_value_t = Scoring::LeastAllocated)]
    pub scoring: Scoring,

    /// Extra names or addresses for the master's certificate, comma-separated
    /// (its hostname, `localhost` and the addresses of its interfaces are always in it).
    #[arg(long, global = true, env = "WASMLET_TLS_SAN", value_delimiter = ',', value_name = "NAME,...")]
    pub tls_san: Vec<String>,

    /// Lifetime of the master's serving certificate and of the node
    /// certificates it signs; each is renewed, without a restart, at two thirds of it.
    #[arg(long, global = true, env = "WASMLET_SERVING_CERTIFICATE_TTL", default_value = defaults::SERVING_CERTIFICATE_TTL, value_name = "DURATION")]
    pub serving_certificate_ttl: Duration,

    /// Lifetime of a node credential; agents renew theirs at two thirds of it.
    /// A node silent for longer than what is left of it must join again.
    #[arg(long, global = true, env = "WASMLET_NODE_CREDENTIAL_TTL", default_value = defaults::NODE_CREDENTIAL_TTL, value_name = "DURATION")]
    pub node_credential_ttl: Duration,

    /// Serve the API over plain HTTP instead of TLS. Tokens and workloads then
    /// cross the network readable by anyone on the path: for a lab behind a TLS proxy only.
    #[arg(long, global = true, env = "WASMLET_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// Log format.
    #[arg(long, global = true, env = "WASMLET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Where the cluster's objects are kept: `redb`, a file in the data dir (one
    /// master), or `etcd`, shared by several masters of which one leads.
    #[arg(long, global = true, env = "WASMLET_STORE", value_enum, default_value_t = StoreKind::Redb)]
    pub store: StoreKind,

    /// The etcd servers of `--store etcd`, comma-separated URLs (`https://` with `--etcd-ca-file`).
    #[arg(long, global = true, env = "WASMLET_ETCD_ENDPOINTS", value_delimiter = ',', value_name = "URL,...")]
    pub etcd_endpoints: Vec<String>,

    /// The CA (PEM) that signed the etcd servers' certificates.
    #[arg(long, global = true, env = "WASMLET_ETCD_CA_FILE", value_name = "FILE")]
    pub etcd_ca_file: Option<PathBuf>,

    /// This master's client certificate (PEM) for etcd.
    #[arg(long, global = true, env = "WASMLET_ETCD_CERT_FILE", value_name = "FILE")]
    pub etcd_cert_file: Option<PathBuf>,

    /// The key (PEM) of `--etcd-cert-file`.
    #[arg(long, global = true, env = "WASMLET_ETCD_KEY_FILE", value_name = "FILE")]
    pub etcd_key_file: Option<PathBuf>,

    /// The key prefix of this cluster in etcd (several clusters may share one etcd).
    #[arg(long, global = true, env = "WASMLET_ETCD_PREFIX", default_value = defaults::ETCD_PREFIX, value_name = "PREFIX")]
    pub etcd_prefix: String,

    /// How long the leading master keeps the leadership without renewing it
    /// (a killed leader is replaced after at most this); at least 2s.
    #[arg(long, global = true, env = "WASMLET_LEADER_LEASE", default_value = defaults::LEADER_LEASE, value_name = "DURATION")]
    pub leader_lease: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StoreKind {
    Redb,
    Etcd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Scoring {
    LeastAllocated,
    BinPack,
}

impl MasterConfig {
    /// Settings for a test or an embedding: defaults, with the given data dir
    /// and a free loopback port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut cli = Cli::parse_from(["wasmlet-master", "--listen", "127.0.0.1:0"]);
        cli.master.data_dir = data_dir.into();
        cli.master
    }

    /// Refuses settings that cannot work together, naming the flag.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.store {
            StoreKind::Etcd if self.etcd_endpoints.is_empty() => {
                anyhow::bail!("--store etcd needs --etcd-endpoints: the URLs of the etcd servers, comma-separated")
            }
            StoreKind::Etcd if self.etcd_endpoints.iter().any(|e| e.starts_with("https://")) && self.etcd_ca_file.is_none() => {
                anyhow::bail!("--etcd-endpoints with https:// needs --etcd-ca-file: the CA that signed the etcd servers' certificates")
            }
            StoreKind::Etcd if self.etcd_cert_file.is_some() != self.etcd_key_file.is_some() => {
                anyhow::bail!("--etcd-cert-file and --etcd-key-file go together")
            }
            StoreKind::Etcd if !self.etcd_prefix.starts_with('/') || self.etcd_prefix.ends_with('/') => {
                anyhow::bail!("--etcd-prefix {:?} must start with '/' and not end with one, like /wasmlet", self.etcd_prefix)
            }
            StoreKind::Etcd if self.leader_lease.get() < std::time::Duration::from_secs(2) => {
                anyhow::bail!("--leader-lease {} is too short: etcd grants leases of at least 2s", self.leader_lease)
            }
            _ => {}
        }
        for (flag, ttl) in
            [("--serving-certificate-ttl", self.serving_certificate_ttl), ("--node-credential-ttl", self.node_credential_ttl)]
        {
            if ttl.get() < defaults::MIN_TTL {
                anyhow::bail!("{flag} {ttl} is too short: renewals come at two thirds of it; give at least {:?}", defaults::MIN_TTL);
            }
        }
        Ok(())
    }

    /// The API's connection limits; without `--max-connections`, a share of
    /// `open_files`, the process's open-files limit.
    pub fn connection_limits(&self, open_files: u64) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections.map_or_else(
                || share_of_open_files(open_files, defaults::CONNECTIONS_PERCENT),
                |n| usize::try_from(n).unwrap_or(usize::MAX),
            ),
            header_read_timeout: self.header_read_timeout.get(),
            idle_timeout: self.idle_timeout.get(),
        }
    }

    /// How to reach etcd (`--store etcd`).
    pub fn etcd(&self) -> crate::store::EtcdSettings {
        crate::store::EtcdSettings {
            endpoints: self.etcd_endpoints.clone(),
            prefix: self.etcd_prefix.clone(),
            ca_file: self.etcd_ca_file.clone(),
            cert_file: self.etcd_cert_file.clone(),
            key_file: self.etcd_key_file.clone(),
            request_timeout: defaults::ETCD_REQUEST_TIMEOUT,
            leader_lease: self.leader_lease.get(),
        }
    }

    /// How often the controllers look at the cluster without being woken:
    /// often enough that a hand-off happens within a fraction of a heartbeat of its deadline.
    pub fn resync_interval(&self) -> std::time::Duration {
        (self.heartbeat_interval.get() / 4).clamp(std::time::Duration::from_millis(10), std::time::Duration::from_millis(250))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_packaged_config_file_is_generated_from_the_flags() {
        use clap::CommandFactory;
        let packaged = include_str!("../../packaging/master.toml");
        assert!(
            packaged == wasmlet_config::commented_template(&super::Cli::command()),
            "packaging/master.toml differs from the flags: run `make packaging-configs`"
        );
    }

    #[test]
    fn the_readme_documents_every_setting_with_its_default() {
        use clap::CommandFactory;
        let readme = include_str!("../../README.md");
        let section = readme.split("### Master configuration").nth(1).expect("README has a master configuration section");
        for arg in super::Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}` |")))
                .unwrap_or_else(|| panic!("README has no row for --{long}"));
            assert!(row.contains(&format!("`{env}`")), "README row for --{long} names {env}: {row}");
            if let Some(default) = arg.get_default_values().first() {
                let default = default.to_string_lossy();
                assert!(row.contains(&format!("`{default}`")), "README row for --{long} gives the default {default}: {row}");
            }
        }
    }

    use super::*;

    /// The systemd drop-in for masters on etcd sets only variables a master reads.
    #[test]
    fn the_etcd_drop_in_sets_master_settings() {
        use clap::CommandFactory;
        let drop_in = include_str!("../../packaging/systemd/wasmlet-master.service.d/etcd.conf");
        let known: Vec<String> =
            Cli::command().get_arguments().filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned())).collect();
        let mut set = Vec::new();
        for line in drop_in.lines().filter_map(|l| l.strip_prefix("Environment=")) {
            let (name, value) = line.split_once('=').expect("NAME=value");
            assert!(known.iter().any(|k| k == name), "{name} is not a master setting");
            set.push((name, value));
        }
        let args: Vec<String> = std::iter::once("wasmlet-master".to_string())
            .chain(set.iter().flat_map(|(name, value)| {
                let arg = Cli::command()
                    .get_arguments()
                    .find(|a| a.get_env().is_some_and(|e| e == *name))
                    .and_then(|a| a.get_long())
                    .unwrap_or_default()
                    .to_string();
                [format!("--{arg}"), value.to_string()]
            }))
            .collect();
        let cli: Cli = wasmlet_config::load(args).expect("the drop-in's values parse");
        assert_eq!(cli.master.store, StoreKind::Etcd);
        assert_eq!(cli.master.etcd_endpoints.len(), 3);
        assert!(cli.master.check().is_ok());
        for (flag, value, named) in [
            ("--leader-lease", "1s", "--leader-lease"),
            ("--etcd-prefix", "wasmlet/", "--etcd-prefix"),
            ("--etcd-prefix", "/wasmlet/", "--etcd-prefix"),
        ] {
            let mut bad = cli.master.clone();
            let parsed: Cli = wasmlet_config::load(["wasmlet-master", flag, value]).expect("parses");
            (bad.leader_lease, bad.etcd_prefix) = (parsed.master.leader_lease, parsed.master.etcd_prefix);
            let error = bad.check().expect_err(value).to_string();
            assert!(error.contains(named), "{flag} {value}: {error}");
        }
        let mut endpoints_only = cli.master.clone();
        endpoints_only.etcd_endpoints.clear();
        assert!(endpoints_only.check().expect_err("no endpoints").to_string().contains("--etcd-endpoints"));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli: Cli = wasmlet_config::load(["wasmlet-master"]).unwrap();
        let m = cli.master;
        assert_eq!(m.listen.port(), 7070);
        assert_eq!(m.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(m.node_grace_period, Duration::from_secs(8));
        assert_eq!(m.lost_after, Duration::from_secs(15));
        assert_eq!(m.status_report_interval, Duration::from_secs(60));
        assert_eq!(m.max_module_size, Bytes::new(64 << 20));
        assert_eq!(m.hand_offs_per_second, 10);
        assert_eq!(m.scoring, Scoring::LeastAllocated);
        assert_eq!(m.serving_certificate_ttl, Duration::from_secs(30 * 86_400));
        assert_eq!(m.node_credential_ttl, Duration::from_secs(365 * 86_400));
        assert!(m.check().is_ok());
        let short: Cli = wasmlet_config::load(["wasmlet-master", "--node-credential-ttl", "500ms"]).unwrap();
        let error = short.master.check().unwrap_err().to_string();
        assert!(error.contains("--node-credential-ttl") && error.contains("too short"), "{error}");
        assert_eq!(m.max_replicas, 10_000);
        assert_eq!((m.audit_log_max_size, m.audit_log_max_files), (Bytes::new(64 << 20), 4));
        assert_eq!((m.refused_per_second, m.refused_burst), (10, 50));
        let limits = m.connection_limits(20_000);
        assert_eq!(limits.max_connections, 15_000);
        assert_eq!((limits.header_read_timeout.as_secs(), limits.idle_timeout.as_secs()), (10, 60));
    }

    #[test]
    fn the_replica_limit_stays_within_the_absolute_cap() {
        let err = wasmlet_config::load::<Cli, _, _>(["wasmlet-master", "--max-replicas", "200000"]).unwrap_err().to_string();
        assert!(err.contains("--max-replicas") && err.contains("200000"), "{err}");
        let cli: Cli = wasmlet_config::load(["wasmlet-master", "--max-replicas", "100000"]).unwrap();
        assert_eq!(cli.master.max_replicas, wasmlet_api::limits::MAX_REPLICAS);
    }

    #[test]
    fn file_and_flags_combine() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.toml");
        std::fs::write(&path, "lost-after = \"1m\"\nscoring = \"bin-pack\"\n").unwrap();
        let cli: Cli = wasmlet_config::load(["wasmlet-master", "--config", path.to_str().unwrap(), "--lost-after", "3s"]).unwrap();
        assert_eq!(cli.master.lost_after, Duration::from_secs(3));
        assert_eq!(cli.master.scoring, Scoring::BinPack);
        let err = wasmlet_config::load::<Cli, _, _>(["wasmlet-master", "--heartbeat-interval", "fast"]).unwrap_err().to_string();
        assert!(err.contains("--heartbeat-interval") && err.contains("fast"), "{err}");
    }
}

//! The agent's settings: every option is a flag, a `WASMLET_…` environment
//! variable and a key of the `--config` TOML file. The defaults live here and
//! nowhere else.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use wasmlet_api::{Bytes, Cpu, Duration, Taint, TaintEffect};
pub use wasmlet_config::daemon::LogFormat;
use wasmlet_security::serve::{ConnectionLimits, share_of_open_files};

/// The built-in defaults, one place for all of them.
pub mod defaults {
    pub const DATA_DIR: &str = "/var/lib/wasmlet";
    /// The API listens on loopback only, unless the agent joins a master (then [`API_ADDR_JOINED`]).
    pub const API_ADDR: &str = "127.0.0.1:7071";
    pub const API_ADDR_JOINED: &str = "0.0.0.0:7071";
    pub const SAMPLE_INTERVAL: &str = "5s";
    pub const PRESSURE_TRANSITION_PERIOD: &str = "30s";
    pub const MEMORY_AVAILABLE_MIN: &str = "100Mi";
    pub const NODEFS_AVAILABLE_MIN_PERCENT: &str = "10";
    pub const INODES_FREE_MIN_PERCENT: &str = "5";
    pub const PID_AVAILABLE_MIN_PERCENT: &str = "5";
    pub const MAX_INSTANCES: &str = "1000";
    pub const RESERVED_CPU: &str = "0";
    pub const RESERVED_MEMORY: &str = "0";
    pub const RESERVED_STORAGE: &str = "0";
    pub const WATCH_TIMEOUT: &str = "30s";
    pub const MANIFESTS_POLL_INTERVAL: &str = "1s";
    pub const RESTART_BACKOFF_INITIAL: &str = "100ms";
    pub const RESTART_BACKOFF_MAX: &str = "30s";
    pub const RESTART_BACKOFF_RESET: &str = "10m";
    pub const LOG_MAX_SIZE: &str = "1Mi";
    pub const EPOCH_TICK: &str = "10ms";
    pub const POOL_INSTANCES: &str = "1000";
    pub const MAX_INSTANCE_MEMORY: &str = "4Gi";
    pub const DEFAULT_MEMORY_LIMIT: &str = "128Mi";
    pub const DEFAULT_ISOLATION: &str = "in-process";
    pub const PROCESS_MEMORY_OVERHEAD: &str = "8Mi";
    pub const PROCESS_PIDS_MAX: &str = "32";
    pub const DEFAULT_EPHEMERAL_STORAGE: &str = "1Gi";
    pub const MAX_MODULE_SIZE: &str = "64Mi";
    /// Room for a few dozen modules with their compiled code, on a board's SD card.
    pub const MODULE_CACHE_SIZE: &str = "256Mi";
    pub const MAX_MODULE_FUNCTIONS: &str = "100000";
    pub const MAX_FUNCTION_SIZE: &str = "2Mi";
    pub const MAX_FUNCTION_NESTING: &str = "10000";
    pub const MAX_FUNCTION_LOCALS: &str = "10000";
    pub const COMPILE_MEMORY_LIMIT: &str = "2Gi";
    pub const COMPILE_TIMEOUT: &str = "5m";
    pub const EPHEMERAL_STORAGE_CHECK_INTERVAL: &str = "1s";
    pub const INGRESS_ADDR: &str = "0.0.0.0:7080";
    pub const REQUEST_TIMEOUT: &str = "30s";
    pub const MAX_REQUEST_BODY: &str = "16Mi";
    pub const MAX_RESPONSE_BODY: &str = "64Mi";
    pub const SERVICE_CONCURRENCY: &str = "64";
    pub const HEADER_READ_TIMEOUT: &str = "10s";
    pub const IDLE_TIMEOUT: &str = "60s";
    /// Shares (percent) of the open-files limit the ingress and the API may hold
    /// when their `--…-max-connections` is not set. The other 70% stay for the
    /// agent's own work: the master link, manifests, module files, logs, and a
    /// connection to a peer ingress for each request forwarded.
    pub const INGRESS_CONNECTIONS_PERCENT: u64 = 25;
    pub const API_CONNECTIONS_PERCENT: u64 = 5;
    /// At most this many, whatever the share: a held connection costs about
    /// 12 KiB of memory (hyper's read buffer and the connection's task), and a
    /// small board cannot give 16,384 of them (a quarter of the packaged unit's
    /// `LimitNOFILE=65536`) 200 MiB.
    pub const INGRESS_CONNECTIONS_MAX: usize = 4096;
    pub const API_CONNECTIONS_MAX: usize = 1024;
}

/// `wasmlet-agent`: the wasmlet node agent.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "wasmlet-agent",
    version,
    args_override_self = true,
    about = "wasmlet node agent: reports this machine and runs WASM workloads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// TOML file with settings; keys are the long flag names (`data-dir = "/srv/wasmlet"`).
    /// Not the CLI's contexts file, which is `WASMLETCONFIG`'s.
    #[arg(long, global = true, env = "WASMLET_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub agent: AgentConfig,
}

#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Print this machine's report once and exit, without starting the daemon.
    Status {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Table)]
        output: OutputFormat,
    },
    /// Print a commented config file with every setting and its default (what packages install).
    ConfigTemplate,
    /// Compile one module for the agent (the agent runs this itself; not for people).
    #[command(hide = true)]
    Compile(crate::runtime::compiler::CompileArgs),
    /// Run one process-isolated instance (the agent runs this itself; not for people).
    #[command(hide = true)]
    Instance(crate::process::child::InstanceArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Settings of a running agent.
#[derive(Debug, Clone, Args)]
pub struct AgentConfig {
    /// Node name in the cluster; defaults to the hostname.
    #[arg(long, global = true, env = "WASMLET_NAME")]
    pub name: Option<String>,

    /// Directory for the agent's state, module cache and logs; its filesystem is the node's ephemeral storage.
    #[arg(long, global = true, env = "WASMLET_DATA_DIR", default_value = defaults::DATA_DIR, value_name = "DIR")]
    pub data_dir: PathBuf,

    /// Address of the agent's API (/healthz, /readyz, /status, /metrics, instances and logs):
    /// `127.0.0.1:7071`, or `0.0.0.0:7071` when the agent joins a master (which calls it for logs).
    #[arg(long, global = true, env = "WASMLET_API_ADDR", value_name = "HOST:PORT")]
    pub api_addr: Option<SocketAddr>,

    /// URL of the master to join, e.g. `https://10.0.0.1:7070`, or of each master of a cluster
    /// comma-separated (on a failure to connect or a 5xx the agent moves to the next);
    /// without it the agent runs on its own.
    #[arg(long, global = true, env = "WASMLET_MASTER", value_name = "URL")]
    pub master: Option<String>,

    /// Join token from the master (`wasmlet-join:<CA fingerprint>:<id>.<secret>`), needed for the
    /// first registration only: the node credential it is exchanged for is kept in the data dir.
    #[arg(long, global = true, env = "WASMLET_JOIN_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub join_token: Option<String>,

    /// A token that may read `/status` and `/metrics` of the agent's API (for resource-report pollers).
    #[arg(long, global = true, env = "WASMLET_API_READ_TOKEN", value_name = "TOKEN", hide_env_values = true)]
    pub api_read_token: Option<String>,

    /// Speak plain HTTP: to an `http://` master, and on the agent's API when it joins one or listens
    /// beyond loopback. Tokens then cross the network in clear text: for a lab only.
    #[arg(long, global = true, env = "WASMLET_INSECURE_HTTP")]
    pub insecure_http: bool,

    /// Taints of this node, `key=value:Effect,key2:Effect` (NoSchedule, PreferNoSchedule, NoExecute).
    #[arg(long, global = true, env = "WASMLET_TAINTS", value_parser = parse_taint, value_delimiter = ',', value_name = "K=V:EFFECT,...")]
    pub taints: Vec<Taint>,

    /// Address of the ingress: HTTP requests routed to service workloads by host and path.
    #[arg(long, global = true, env = "WASMLET_INGRESS_ADDR", default_value = defaults::INGRESS_ADDR, value_name = "HOST:PORT")]
    pub ingress_addr: SocketAddr,

    /// Longest a service may take to answer a request, unless its manifest sets `limits.requestTimeout`.
    #[arg(long, global = true, env = "WASMLET_REQUEST_TIMEOUT", default_value = defaults::REQUEST_TIMEOUT, value_name = "DURATION")]
    pub request_timeout: Duration,

    /// Largest request body a service is given; beyond it the guest sees a body-size error.
    #[arg(long, global = true, env = "WASMLET_MAX_REQUEST_BODY", default_value = defaults::MAX_REQUEST_BODY, value_name = "BYTES")]
    pub max_request_body: Bytes,

    /// Largest response body a service may send; beyond it the response is cut off.
    #[arg(long, global = true, env = "WASMLET_MAX_RESPONSE_BODY", default_value = defaults::MAX_RESPONSE_BODY, value_name = "BYTES")]
    pub max_response_body: Bytes,

    /// Requests one service instance serves at once; more wait their turn.
    #[arg(long, global = true, env = "WASMLET_SERVICE_CONCURRENCY", default_value = defaults::SERVICE_CONCURRENCY, value_name = "N")]
    pub service_concurrency: usize,

    /// Most connections the ingress keeps open at once; more are closed as soon as they are
    /// accepted. Default: 25% of the open-files limit (raised to its hard limit at start), at most 4096.
    #[arg(long, global = true, env = "WASMLET_INGRESS_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub ingress_max_connections: Option<u64>,

    /// Most connections the agent's API keeps open at once; more are closed as soon as they are
    /// accepted. Default: 5% of the open-files limit (raised to its hard limit at start), at most 1024.
    #[arg(long, global = true, env = "WASMLET_API_MAX_CONNECTIONS", value_parser = clap::value_parser!(u64).range(1..), value_name = "N")]
    pub api_max_connections: Option<u64>,

    /// Time a client has to send a request's whole header (API and ingress), from the
    /// connection's opening or from the request's first byte; then the connection is closed.
    #[arg(long, global = true, env = "WASMLET_HEADER_READ_TIMEOUT", default_value = defaults::HEADER_READ_TIMEOUT, value_name = "DURATION")]
    pub header_read_timeout: Duration,

    /// Time a kept-alive connection (API and ingress) may wait for its next request
    /// without receiving anything; then it is closed.
    #[arg(long, global = true, env = "WASMLET_IDLE_TIMEOUT", default_value = defaults::IDLE_TIMEOUT, value_name = "DURATION")]
    pub idle_timeout: Duration,

    /// Labels of this node, `key=value,key2=value2`.
    #[arg(long, global = true, env = "WASMLET_LABELS", value_parser = parse_label, value_delimiter = ',', value_name = "K=V,...")]
    pub labels: Vec<(String, String)>,

    /// How often the machine is sampled.
    #[arg(long, global = true, env = "WASMLET_SAMPLE_INTERVAL", default_value = defaults::SAMPLE_INTERVAL, value_name = "DURATION")]
    pub sample_interval: Duration,

    /// How long a pressure condition must stay clear before it returns to False.
    #[arg(long, global = true, env = "WASMLET_PRESSURE_TRANSITION_PERIOD", default_value = defaults::PRESSURE_TRANSITION_PERIOD, value_name = "DURATION")]
    pub pressure_transition_period: Duration,

    /// MemoryPressure when the kernel's MemAvailable falls below this.
    #[arg(long, global = true, env = "WASMLET_MEMORY_AVAILABLE_MIN", default_value = defaults::MEMORY_AVAILABLE_MIN, value_name = "BYTES")]
    pub memory_available_min: Bytes,

    /// DiskPressure when the data dir's filesystem has less than this percentage free.
    #[arg(long, global = true, env = "WASMLET_NODEFS_AVAILABLE_MIN_PERCENT", default_value = defaults::NODEFS_AVAILABLE_MIN_PERCENT, value_parser = parse_percent, value_name = "PERCENT")]
    pub nodefs_available_min_percent: f64,

    /// DiskPressure when the data dir's filesystem has less than this percentage of inodes free.
    #[arg(long, global = true, env = "WASMLET_INODES_FREE_MIN_PERCENT", default_value = defaults::INODES_FREE_MIN_PERCENT, value_parser = parse_percent, value_name = "PERCENT")]
    pub inodes_free_min_percent: f64,

    /// PIDPressure when less than this percentage of pid_max is free.
    #[arg(long, global = true, env = "WASMLET_PID_AVAILABLE_MIN_PERCENT", default_value = defaults::PID_AVAILABLE_MIN_PERCENT, value_parser = parse_percent, value_name = "PERCENT")]
    pub pid_available_min_percent: f64,

    /// Most instances this node accepts (fewer if the pool, --pool-instances, holds fewer).
    #[arg(long, global = true, env = "WASMLET_MAX_INSTANCES", default_value = defaults::MAX_INSTANCES, value_name = "N")]
    pub max_instances: u32,

    /// CPU kept back for the system and the agent (allocatable = capacity − reserved).
    #[arg(long, global = true, env = "WASMLET_RESERVED_CPU", default_value = defaults::RESERVED_CPU, value_name = "CPU")]
    pub reserved_cpu: Cpu,

    /// Memory kept back for the system and the agent.
    #[arg(long, global = true, env = "WASMLET_RESERVED_MEMORY", default_value = defaults::RESERVED_MEMORY, value_name = "BYTES")]
    pub reserved_memory: Bytes,

    /// Ephemeral storage kept back for the system and the agent.
    #[arg(long, global = true, env = "WASMLET_RESERVED_STORAGE", default_value = defaults::RESERVED_STORAGE, value_name = "BYTES")]
    pub reserved_storage: Bytes,

    /// Longest a `/status?watch=true` request waits for a change.
    #[arg(long, global = true, env = "WASMLET_WATCH_TIMEOUT", default_value = defaults::WATCH_TIMEOUT, value_name = "DURATION")]
    pub watch_timeout: Duration,

    /// Directory of Workload manifests (YAML or JSON) to run without a master; watched for changes.
    #[arg(long, global = true, env = "WASMLET_MANIFESTS_DIR", value_name = "DIR")]
    pub manifests_dir: Option<PathBuf>,

    /// How often the manifests dir is checked for changes.
    #[arg(long, global = true, env = "WASMLET_MANIFESTS_POLL_INTERVAL", default_value = defaults::MANIFESTS_POLL_INTERVAL, value_name = "DURATION")]
    pub manifests_poll_interval: Duration,

    /// Host directories workloads may be granted (`dirs[].hostPath`), comma-separated; none by default.
    #[arg(long, global = true, env = "WASMLET_ALLOWED_HOST_PATHS", value_delimiter = ',', value_name = "DIR,...")]
    pub allowed_host_paths: Vec<PathBuf>,

    /// First delay before restarting an instance that ended; doubles on every restart.
    #[arg(long, global = true, env = "WASMLET_RESTART_BACKOFF_INITIAL", default_value = defaults::RESTART_BACKOFF_INITIAL, value_name = "DURATION")]
    pub restart_backoff_initial: Duration,

    /// Longest delay between restarts.
    #[arg(long, global = true, env = "WASMLET_RESTART_BACKOFF_MAX", default_value = defaults::RESTART_BACKOFF_MAX, value_name = "DURATION")]
    pub restart_backoff_max: Duration,

    /// A run this long resets the restart delay to its initial value.
    #[arg(long, global = true, env = "WASMLET_RESTART_BACKOFF_RESET", default_value = defaults::RESTART_BACKOFF_RESET, value_name = "DURATION")]
    pub restart_backoff_reset: Duration,

    /// Size at which an instance's log file is rotated (one rotated file is kept).
    #[arg(long, global = true, env = "WASMLET_LOG_MAX_SIZE", default_value = defaults::LOG_MAX_SIZE, value_name = "BYTES")]
    pub log_max_size: Bytes,

    /// How often running guests yield to the scheduler and have their CPU time checked.
    #[arg(long, global = true, env = "WASMLET_EPOCH_TICK", default_value = defaults::EPOCH_TICK, value_name = "DURATION")]
    pub epoch_tick: Duration,

    /// Instances the pooling allocator reserves room for (the node accepts no more than that); 0 allocates on demand.
    #[arg(long, global = true, env = "WASMLET_POOL_INSTANCES", default_value = defaults::POOL_INSTANCES, value_name = "N")]
    pub pool_instances: u32,

    /// Largest linear memory one instance may have, whatever its manifest says.
    #[arg(long, global = true, env = "WASMLET_MAX_INSTANCE_MEMORY", default_value = defaults::MAX_INSTANCE_MEMORY, value_name = "BYTES")]
    pub max_instance_memory: Bytes,

    /// Memory limit of an instance whose workload sets no `resources.limits.memory`,
    /// so no workload can take the agent's memory by omission.
    #[arg(long, global = true, env = "WASMLET_DEFAULT_MEMORY_LIMIT", default_value = defaults::DEFAULT_MEMORY_LIMIT, value_name = "BYTES")]
    pub default_memory_limit: Bytes,

    /// How instances whose workload names no `isolation` run: `in-process`
    /// (inside the agent, dense and fast) or `process` (a process and a cgroup
    /// each, with hard CPU and memory limits).
    #[arg(long, global = true, env = "WASMLET_DEFAULT_ISOLATION", default_value = defaults::DEFAULT_ISOLATION, value_name = "MODE")]
    pub default_isolation: wasmlet_api::Isolation,

    /// Memory a process-isolated instance's cgroup gets beyond its
    /// `limits.memory`: the process itself (runtime, threads, stacks, page tables).
    #[arg(long, global = true, env = "WASMLET_PROCESS_MEMORY_OVERHEAD", default_value = defaults::PROCESS_MEMORY_OVERHEAD, value_name = "BYTES")]
    pub process_memory_overhead: Bytes,

    /// Tasks (threads) a process-isolated instance's process may have (its cgroup's `pids.max`).
    #[arg(long, global = true, env = "WASMLET_PROCESS_PIDS_MAX", default_value = defaults::PROCESS_PIDS_MAX, value_name = "N")]
    pub process_pids_max: u64,

    /// What an instance's scratch dirs may hold when its workload sets no
    /// `resources.limits.ephemeralStorage`; past it the instance is evicted.
    #[arg(long, global = true, env = "WASMLET_DEFAULT_EPHEMERAL_STORAGE", default_value = defaults::DEFAULT_EPHEMERAL_STORAGE, value_name = "BYTES")]
    pub default_ephemeral_storage: Bytes,

    /// How often the instances' scratch dirs are measured against their limits.
    #[arg(long, global = true, env = "WASMLET_EPHEMERAL_STORAGE_CHECK_INTERVAL", default_value = defaults::EPHEMERAL_STORAGE_CHECK_INTERVAL, value_name = "DURATION")]
    pub ephemeral_storage_check_interval: Duration,

    /// Also trust this CA (PEM; one or more certificates) for modules the node
    /// downloads from `https://` URLs and OCI registries, beside the system's
    /// (for a private web server or registry).
    #[arg(long, global = true, env = "WASMLET_MODULE_CA_FILE", value_name = "FILE")]
    pub module_ca_file: Option<PathBuf>,

    /// Credentials for pulling modules from OCI registries: a Docker
    /// `config.json` (`{"auths": {"HOST": {"auth": "<base64 user:password>"}}}`,
    /// as `docker login` writes it). Read at each pull, so renewed credentials
    /// apply without a restart; registries it does not name are pulled from anonymously.
    #[arg(long, global = true, env = "WASMLET_REGISTRY_CREDENTIALS", value_name = "FILE")]
    pub registry_credentials: Option<PathBuf>,

    /// Download modules from `http://` URLs too. Their digest is still checked,
    /// but anyone on the path can stall or swap the download: for a lab only.
    #[arg(long, global = true, env = "WASMLET_ALLOW_HTTP_MODULES")]
    pub allow_http_modules: bool,

    /// Largest module (or component) the agent downloads and compiles.
    #[arg(long, global = true, env = "WASMLET_MAX_MODULE_SIZE", default_value = defaults::MAX_MODULE_SIZE, value_name = "BYTES")]
    pub max_module_size: Bytes,

    /// Most the node's module cache (`<data-dir>/cache`: module bytes and compiled modules together) may
    /// hold on disk; the least recently used entries are evicted first. What the node's instances need
    /// is never evicted, even when that alone is over this size (0 keeps only that).
    #[arg(long, global = true, env = "WASMLET_MODULE_CACHE_SIZE", default_value = defaults::MODULE_CACHE_SIZE, value_name = "BYTES")]
    pub module_cache_size: Bytes,

    /// Most functions a module (all core modules of a component together) may have to be compiled.
    #[arg(long, global = true, env = "WASMLET_MAX_MODULE_FUNCTIONS", default_value = defaults::MAX_MODULE_FUNCTIONS, value_name = "N")]
    pub max_module_functions: u64,

    /// Largest function body a module may have to be compiled.
    #[arg(long, global = true, env = "WASMLET_MAX_FUNCTION_SIZE", default_value = defaults::MAX_FUNCTION_SIZE, value_name = "BYTES")]
    pub max_function_size: Bytes,

    /// Deepest nesting of blocks, loops and ifs in one function of a module to be compiled.
    #[arg(long, global = true, env = "WASMLET_MAX_FUNCTION_NESTING", default_value = defaults::MAX_FUNCTION_NESTING, value_name = "N")]
    pub max_function_nesting: u64,

    /// Most locals one function of a module to be compiled may declare.
    #[arg(long, global = true, env = "WASMLET_MAX_FUNCTION_LOCALS", default_value = defaults::MAX_FUNCTION_LOCALS, value_name = "N")]
    pub max_function_locals: u64,

    /// Memory one compile may use (the compiler process's data size); past it the compile fails.
    #[arg(long, global = true, env = "WASMLET_COMPILE_MEMORY_LIMIT", default_value = defaults::COMPILE_MEMORY_LIMIT, value_name = "BYTES")]
    pub compile_memory_limit: Bytes,

    /// Longest one compile may take; past it the compile is stopped and the module refused.
    #[arg(long, global = true, env = "WASMLET_COMPILE_TIMEOUT", default_value = defaults::COMPILE_TIMEOUT, value_name = "DURATION")]
    pub compile_timeout: Duration,

    /// The binary run as `wasmlet-agent compile` to compile in a child process: the running
    /// agent's own, set by `main`. None compiles in the agent's process.
    #[arg(skip)]
    pub compiler: Option<PathBuf>,

    /// Log format.
    #[arg(long, global = true, env = "WASMLET_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl AgentConfig {
    /// Where the API listens: `--api-addr`, else loopback, or every address when joining a master.
    pub fn api_addr(&self) -> SocketAddr {
        let default = if self.master.is_some() { defaults::API_ADDR_JOINED } else { defaults::API_ADDR };
        self.api_addr.unwrap_or_else(|| default.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 7071))))
    }

    /// Settings for a test or an embedding: defaults, with the given data dir
    /// and an API on a free loopback port.
    pub fn for_data_dir(data_dir: impl Into<PathBuf>) -> Self {
        let mut cli = Cli::parse_from(["wasmlet-agent", "--api-addr", "127.0.0.1:0"]);
        cli.agent.data_dir = data_dir.into();
        cli.agent
    }

    /// Which host directories workloads may be granted.
    pub fn host_path_policy(&self) -> crate::grants::HostPathPolicy {
        crate::grants::HostPathPolicy::new(&self.allowed_host_paths, &self.data_dir, self.manifests_dir.as_deref())
    }

    /// The most instances this node runs: `--max-instances`, or fewer when the
    /// pooling allocator holds fewer (`pooled`, its `--pool-instances`).
    pub fn instance_limit(&self, pooled: Option<u32>) -> InstanceLimit {
        match pooled {
            Some(pool) if pool < self.max_instances => InstanceLimit { max: pool, set_by: "--pool-instances" },
            _ => InstanceLimit { max: self.max_instances, set_by: "--max-instances" },
        }
    }

    pub fn runtime_settings(&self) -> crate::runtime::RuntimeSettings {
        crate::runtime::RuntimeSettings {
            cache_dir: crate::modules::cache::compiled_dir(&self.data_dir),
            module_cache: None,
            epoch_tick: self.epoch_tick.get().max(std::time::Duration::from_millis(1)),
            pool_instances: self.pool_instances,
            max_instance_memory: self.max_instance_memory.get(),
            compiler: self.compiler.clone(),
            compile_budget: crate::runtime::compiler::CompileBudget {
                limits: crate::runtime::precheck::CompileLimits {
                    module_size: self.max_module_size.get(),
                    functions: self.max_module_functions,
                    function_size: self.max_function_size.get(),
                    nesting: self.max_function_nesting,
                    locals: self.max_function_locals,
                },
                memory: self.compile_memory_limit.get(),
                timeout: self.compile_timeout.get(),
            },
        }
    }

    /// The limits of the API's and of the ingress's connections; those not
    /// set are shares of `open_files`, the process's open-files limit.
    pub fn connection_limits(&self, open_files: u64) -> (ConnectionLimits, ConnectionLimits) {
        let limits = |max: Option<u64>, percent: u64, most: usize| ConnectionLimits {
            max_connections: max
                .map_or_else(|| share_of_open_files(open_files, percent).min(most), |n| usize::try_from(n).unwrap_or(usize::MAX)),
            header_read_timeout: self.header_read_timeout.get(),
            idle_timeout: self.idle_timeout.get(),
        };
        (
            limits(self.api_max_connections, defaults::API_CONNECTIONS_PERCENT, defaults::API_CONNECTIONS_MAX),
            limits(self.ingress_max_connections, defaults::INGRESS_CONNECTIONS_PERCENT, defaults::INGRESS_CONNECTIONS_MAX),
        )
    }

    pub fn labels(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }
}

fn parse_label(text: &str) -> Result<(String, String), String> {
    let (key, value) = text.split_once('=').ok_or_else(|| format!("`{text}` is not `key=value`"))?;
    if !wasmlet_api::validate::is_label_key(key) {
        return Err(format!("`{key}` is not a valid label key"));
    }
    if !wasmlet_api::validate::is_label_value(value) {
        return Err(format!("`{value}` is not a valid label value"));
    }
    Ok((key.to_string(), value.to_string()))
}

fn parse_taint(text: &str) -> Result<Taint, String> {
    let (kv, effect) = text.rsplit_once(':').ok_or_else(|| format!("`{text}` is not `key=value:Effect`"))?;
    let effect = match effect {
        "NoSchedule" => TaintEffect::NoSchedule,
        "PreferNoSchedule" => TaintEffect::PreferNoSchedule,
        "NoExecute" => TaintEffect::NoExecute,
        other => return Err(format!("`{other}` is not a taint effect (NoSchedule, PreferNoSchedule or NoExecute)")),
    };
    let (key, value) = kv.split_once('=').unwrap_or((kv, ""));
    if !wasmlet_api::validate::is_label_key(key) {
        return Err(format!("`{key}` is not a valid taint key"));
    }
    Ok(Taint { key: key.to_string(), value: value.to_string(), effect })
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text.trim_end_matches('%').parse().map_err(|_| format!("`{text}` is not a number"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{value} is not between 0 and 100"));
    }
    Ok(value)
}

/// The most instances a node runs, and the setting that decides it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InstanceLimit {
    pub max: u32,
    /// `--max-instances` or `--pool-instances`.
    pub set_by: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_documented_ones() {
        let cli: Cli = wasmlet_config::load(["wasmlet-agent"]).unwrap();
        assert_eq!(cli.agent.api_addr(), "127.0.0.1:7071".parse().unwrap());
        let joined: Cli = wasmlet_config::load(["wasmlet-agent", "--master", "https://m:7070"]).unwrap();
        assert_eq!(joined.agent.api_addr(), "0.0.0.0:7071".parse().unwrap());
        assert_eq!(cli.agent.sample_interval, Duration::from_secs(5));
        assert_eq!(cli.agent.pressure_transition_period, Duration::from_secs(30));
        assert_eq!(cli.agent.memory_available_min, Bytes::new(100 << 20));
        assert_eq!(cli.agent.max_instances, 1000);
        assert_eq!(cli.agent.module_cache_size, Bytes::new(256 << 20));
        let limit = |pooled| cli.agent.instance_limit(pooled);
        assert_eq!(limit(Some(64)), InstanceLimit { max: 64, set_by: "--pool-instances" });
        assert_eq!(limit(Some(2000)), InstanceLimit { max: 1000, set_by: "--max-instances" });
        assert_eq!(limit(None), InstanceLimit { max: 1000, set_by: "--max-instances" });
        let (api, ingress) = cli.agent.connection_limits(20_000);
        assert_eq!((api.max_connections, ingress.max_connections), (1_000, 4_096));
        let (api, ingress) = cli.agent.connection_limits(8_000);
        assert_eq!((api.max_connections, ingress.max_connections), (400, 2_000));
        assert_eq!((ingress.header_read_timeout, ingress.idle_timeout), (Duration::from_secs(10).get(), Duration::from_secs(60).get()));
        let set: Cli = wasmlet_config::load(["wasmlet-agent", "--ingress-max-connections", "7"]).unwrap();
        assert_eq!(set.agent.connection_limits(20_000).1.max_connections, 7);
    }

    #[test]
    fn bad_values_name_the_flag_and_problem() {
        let err = wasmlet_config::load::<Cli, _, _>(["wasmlet-agent", "--memory-available-min", "12Qi"]).unwrap_err().to_string();
        assert!(err.contains("--memory-available-min") && err.contains("unknown suffix `Qi`"), "{err}");
        let err = wasmlet_config::load::<Cli, _, _>(["wasmlet-agent", "--labels", "zone"]).unwrap_err().to_string();
        assert!(err.contains("not `key=value`"), "{err}");
        let err = wasmlet_config::load::<Cli, _, _>(["wasmlet-agent", "--nodefs-available-min-percent", "120"]).unwrap_err().to_string();
        assert!(err.contains("between 0 and 100"), "{err}");
    }

    #[test]
    fn the_readme_documents_every_setting_with_its_default() {
        use clap::CommandFactory;
        let readme = include_str!("../../README.md");
        let section = readme.split("\n## The agent").nth(1).expect("README has a section on the agent");
        for arg in Cli::command().get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned()).unwrap_or_default();
            let default = arg.get_default_values().first().map(|d| d.to_string_lossy().into_owned());
            let row = section
                .lines()
                .find(|l| l.starts_with(&format!("| `--{long}` |")))
                .unwrap_or_else(|| panic!("README has no row for --{long}"));
            assert!(row.contains(&format!("`{env}`")), "README row for --{long} names {env}: {row}");
            if let Some(default) = default {
                assert!(row.contains(&format!("`{default}`")), "README row for --{long} gives the default {default}: {row}");
            }
        }
    }

    #[test]
    fn the_packaged_config_file_is_generated_from_the_flags() {
        use clap::CommandFactory;
        let packaged = include_str!("../../packaging/agent.toml");
        assert!(
            packaged == wasmlet_config::commented_template(&Cli::command()),
            "packaging/agent.toml differs from the flags: run `make packaging-configs`"
        );
    }

    #[test]
    fn labels_parse_from_flags_and_file_tables() {
        let cli: Cli = wasmlet_config::load(["wasmlet-agent", "--labels", "zone=a,tier=edge"]).unwrap();
        assert_eq!(cli.agent.labels().get("tier").map(String::as_str), Some("edge"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, "labels = { zone = \"b\" }\nsample-interval = \"1s\"\n").unwrap();
        let cli: Cli = wasmlet_config::load(["wasmlet-agent", "--config", path.to_str().unwrap(), "status"]).unwrap();
        assert_eq!(cli.agent.labels().get("zone").map(String::as_str), Some("b"));
        assert_eq!(cli.agent.sample_interval, Duration::from_secs(1));
        assert!(matches!(cli.command, Some(Command::Status { output: OutputFormat::Table })));
    }
}

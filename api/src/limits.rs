//! The most one object may ask for. Every count and size a client chooses is
//! bounded here, once, so no single object can turn into an allocation or a
//! loop that takes a daemon down; validation names the field and the bound.
//!
//! These are absolute caps, the same everywhere. A daemon may allow less
//! (the master's `--max-replicas`, the agent's `--max-instances`).

use std::time::Duration;

use crate::quantity::Cpu;

/// Replicas of one workload.
pub const MAX_REPLICAS: u32 = 100_000;
/// Labels of one object; also entries of a node selector.
pub const MAX_LABELS: usize = 64;
/// Annotations of one object, keys and values together, in bytes.
pub const MAX_ANNOTATIONS_BYTES: usize = 64 << 10;
/// Arguments of one workload.
pub const MAX_ARGS: usize = 1024;
/// Environment variables of one workload.
pub const MAX_ENV: usize = 1024;
/// Arguments of one workload together, in bytes; also names and values of its
/// environment together (Linux allows a process 2 MiB of both).
pub const MAX_ARGS_BYTES: usize = 128 << 10;
pub const MAX_ENV_BYTES: usize = 128 << 10;
/// Directories granted to one workload.
pub const MAX_DIRS: usize = 64;
/// A path: a guest or host directory, a module source.
pub const MAX_PATH_BYTES: usize = 4096;
/// Hosts one service may call.
pub const MAX_OUTBOUND_HOSTS: usize = 256;
/// A host name with an optional `:port`.
pub const MAX_HOST_BYTES: usize = 253 + 6;
/// Tolerations of one workload; also taints of one node.
pub const MAX_TOLERATIONS: usize = 64;
/// A toleration's key or value.
pub const MAX_TOLERATION_BYTES: usize = 317;
/// A URL path a workload names: route prefix, readiness and liveness paths.
pub const MAX_URL_PATH_BYTES: usize = 1024;
/// Any duration a workload sets (timeouts, CPU time, disconnect deadlines):
/// far beyond any sensible value, and far from where clock arithmetic overflows.
pub const MAX_DURATION: Duration = Duration::from_secs(366 * 24 * 3600);
/// The smallest `limits.cpu`: the kernel refuses a CPU quota under 1 ms per
/// period, and the period is 100 ms.
pub const MIN_CPU_LIMIT: Cpu = Cpu::from_millis(10);
/// The largest `limits.cpu`: as many CPUs as the largest machines have.
pub const MAX_CPU_LIMIT: Cpu = Cpu::from_cores(1024);

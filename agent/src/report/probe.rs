//! Where the report's facts come from. [`Probe`] is the seam: [`HostProbe`]
//! reads the real machine (sysinfo, procfs, statvfs); tests feed their own
//! values through [`FixedProbe`].

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use procfs::{Current, CurrentSI};
use sysinfo::{CpuRefreshKind, InterfaceOperationalState, Networks, RefreshKind, System};
use wasmlet_api::{DiskUsage, MemoryUsage, NodeInfo, PidUsage, Pressure, PressureAverages, ResourcePressure};

/// One reading of the machine.
#[derive(Debug, Clone, PartialEq)]
pub struct Facts {
    pub hostname: String,
    /// Facts that change only on reboot or upgrade. `agent_version` and
    /// `runtime_version` are filled by the reporter, not the probe.
    pub info: NodeInfo,
    /// CPUs this process may run on (its affinity mask).
    pub cpus: u32,
    /// Busy share of all CPUs since the previous reading; None on the first.
    pub cpu_percent: Option<f64>,
    pub memory: MemoryUsage,
    /// The filesystem of the data dir; Err says why it could not be read.
    pub disk: Result<DiskUsage, String>,
    pub pids: PidUsage,
    pub pressure: Pressure,
    pub interfaces: Vec<Interface>,
}

impl Default for Facts {
    fn default() -> Self {
        Facts {
            hostname: String::new(),
            info: NodeInfo::default(),
            cpus: 0,
            cpu_percent: None,
            memory: MemoryUsage::default(),
            disk: Err("not read".to_string()),
            pids: PidUsage::default(),
            pressure: Pressure::default(),
            interfaces: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub name: String,
    pub up: bool,
    pub loopback: bool,
    pub addresses: Vec<IpAddr>,
}

/// A source of facts about the machine.
pub trait Probe: Send + 'static {
    fn read(&mut self) -> Facts;
}

/// The real machine.
pub struct HostProbe {
    data_dir: PathBuf,
    /// Read once: nothing in it changes without a reboot.
    static_facts: (String, NodeInfo, u32),
    /// None where the platform offers no interface list.
    networks: Option<Networks>,
    /// The previous /proc/stat totals, for CPU use between readings.
    last_cpu: Option<(u64, u64)>,
}

impl HostProbe {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        let networks = Networks::new_with_refreshed_list().ok();
        HostProbe { data_dir: data_dir.into(), static_facts: read_static_facts(), networks, last_cpu: None }
    }
}

impl Probe for HostProbe {
    fn read(&mut self) -> Facts {
        let (hostname, info, cpus) = self.static_facts.clone();
        let cpu_percent = self.cpu_percent();
        if let Some(networks) = &mut self.networks {
            networks.refresh(true);
        }
        Facts {
            hostname,
            info,
            cpus,
            cpu_percent,
            memory: read_memory(),
            disk: read_disk(&self.data_dir),
            pids: read_pids(),
            pressure: read_pressure(Path::new("/proc/pressure")),
            interfaces: self
                .networks
                .iter()
                .flat_map(|n| n.iter())
                .map(|(name, data)| Interface {
                    name: name.to_string_lossy().into_owned(),
                    up: matches!(
                        data.operational_state(),
                        InterfaceOperationalState::Up | InterfaceOperationalState::Unknown | InterfaceOperationalState::Dormant
                    ),
                    loopback: name == "lo" || data.ip_networks().iter().all(|n| n.addr.is_loopback()) && !data.ip_networks().is_empty(),
                    addresses: data.ip_networks().iter().map(|n| n.addr).collect(),
                })
                .collect(),
        }
    }
}

impl HostProbe {
    fn cpu_percent(&mut self) -> Option<f64> {
        let stat = procfs::KernelStats::current().ok()?;
        let t = &stat.total;
        let idle = t.idle + t.iowait.unwrap_or(0);
        let total = t.user
            + t.nice
            + t.system
            + t.idle
            + t.iowait.unwrap_or(0)
            + t.irq.unwrap_or(0)
            + t.softirq.unwrap_or(0)
            + t.steal.unwrap_or(0);
        let previous = self.last_cpu.replace((total, idle));
        let (last_total, last_idle) = previous?;
        let elapsed = total.saturating_sub(last_total);
        if elapsed == 0 {
            return Some(0.0);
        }
        let busy = elapsed.saturating_sub(idle.saturating_sub(last_idle));
        Some((busy as f64 * 100.0 / elapsed as f64).clamp(0.0, 100.0))
    }
}

fn read_static_facts() -> (String, NodeInfo, u32) {
    let hostname = System::host_name().unwrap_or_else(|_| rustix::system::uname().nodename().to_string_lossy().into_owned());
    let system = System::new_with_specifics(RefreshKind::nothing().with_cpu(CpuRefreshKind::nothing()));
    let cpu_model = system
        .ok()
        .and_then(|s| s.cpus().first().map(|c| c.brand().to_string()))
        .map(|b| b.trim().to_string())
        .filter(|b| !b.is_empty())
        .unwrap_or_default();
    let cpus = rustix::thread::sched_getaffinity(None)
        .map(|set| set.count())
        .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
    let info = NodeInfo {
        machine_id: read_trimmed("/etc/machine-id"),
        system_uuid: read_trimmed("/sys/class/dmi/id/product_uuid"),
        boot_id: read_trimmed("/proc/sys/kernel/random/boot_id"),
        kernel_version: rustix::system::uname().release().to_string_lossy().into_owned(),
        os_image: std::fs::read_to_string("/etc/os-release")
            .ok()
            .and_then(|text| os_release_pretty_name(&text))
            .unwrap_or_else(|| "Linux".to_string()),
        operating_system: std::env::consts::OS.to_string(),
        architecture: kubernetes_arch(std::env::consts::ARCH).to_string(),
        cpu_model,
        agent_version: String::new(),
        runtime_version: String::new(),
    };
    (hostname, info, cpus)
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

/// PRETTY_NAME from os-release(5), unquoted.
pub fn os_release_pretty_name(text: &str) -> Option<String> {
    text.lines().find_map(|line| {
        let value = line.trim().strip_prefix("PRETTY_NAME=")?;
        let value = value.trim();
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .or_else(|| value.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
            .unwrap_or(value);
        Some(unquoted.replace("\\\"", "\"").replace("\\\\", "\\"))
    })
}

/// Rust's architecture names as Kubernetes and Go spell them.
pub fn kubernetes_arch(rust_arch: &str) -> &str {
    match rust_arch {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "x86" => "386",
        "riscv64" | "riscv64gc" => "riscv64",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        other => other,
    }
}

fn read_memory() -> MemoryUsage {
    match procfs::Meminfo::current() {
        Ok(m) => {
            let available = m.mem_available.unwrap_or(m.mem_free + m.cached);
            MemoryUsage { total_bytes: m.mem_total, used_bytes: m.mem_total.saturating_sub(available), available_bytes: available }
        }
        Err(_) => MemoryUsage::default(),
    }
}

fn read_disk(dir: &Path) -> Result<DiskUsage, String> {
    // The data dir may not exist yet; its nearest existing ancestor is on the same filesystem.
    let existing = dir.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"));
    let st = rustix::fs::statvfs(existing).map_err(|e| format!("statvfs {}: {e}", existing.display()))?;
    let block = st.f_frsize.max(1);
    let total = st.f_blocks * block;
    let free = st.f_bfree * block;
    Ok(DiskUsage {
        path: dir.display().to_string(),
        total_bytes: total,
        used_bytes: total.saturating_sub(free),
        available_bytes: st.f_bavail * block,
        inodes_total: st.f_files,
        inodes_used: st.f_files.saturating_sub(st.f_ffree),
        inodes_free: st.f_favail,
    })
}

fn read_pids() -> PidUsage {
    let used = procfs::LoadAverage::current().map(|l| u64::from(l.max)).unwrap_or(0);
    let max = procfs::sys::kernel::pid_max().map(|m| m.max(0) as u64).unwrap_or(0);
    PidUsage { used, max }
}

/// Reads `/proc/pressure/{cpu,memory,io}`. Absent files mean a kernel without
/// PSI, which is reported as unavailable rather than as zero stall.
pub fn read_pressure(dir: &Path) -> Pressure {
    fn parse(text: &str) -> Option<ResourcePressure> {
        let mut some = None;
        let mut full = None;
        for line in text.lines() {
            let mut fields = line.split_whitespace();
            let kind = fields.next()?;
            let mut avg = PressureAverages::default();
            for field in fields {
                match field.split_once('=') {
                    Some(("avg10", v)) => avg.avg10 = v.parse().ok()?,
                    Some(("avg60", v)) => avg.avg60 = v.parse().ok()?,
                    _ => {}
                }
            }
            match kind {
                "some" => some = Some(avg),
                "full" => full = Some(avg),
                _ => {}
            }
        }
        Some(ResourcePressure { some: some?, full })
    }
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (cpu, memory, io) = (read("cpu"), read("memory"), read("io"));
    if cpu.is_none() && memory.is_none() && io.is_none() {
        return Pressure {
            available: false,
            reason: Some(format!(
                "{} is not present: the kernel has no pressure stall information (CONFIG_PSI off or booted with psi=0)",
                dir.display()
            )),
            ..Default::default()
        };
    }
    Pressure {
        available: true,
        reason: None,
        cpu: cpu.as_deref().and_then(parse),
        memory: memory.as_deref().and_then(parse),
        io: io.as_deref().and_then(parse),
    }
}

/// A probe that returns whatever the test last stored in it.
#[cfg(any(test, feature = "testing"))]
#[derive(Clone, Default)]
pub struct FixedProbe(pub std::sync::Arc<std::sync::Mutex<Facts>>);

#[cfg(any(test, feature = "testing"))]
impl FixedProbe {
    pub fn new(facts: Facts) -> Self {
        FixedProbe(std::sync::Arc::new(std::sync::Mutex::new(facts)))
    }

    pub fn update(&self, change: impl FnOnce(&mut Facts)) {
        change(&mut self.0.lock().expect("probe lock"));
    }
}

#[cfg(any(test, feature = "testing"))]
impl Facts {
    /// A healthy two-CPU machine with 8 GiB, half its disk free and one network interface.
    pub fn healthy_example() -> Facts {
        Facts {
            hostname: "edge-1".into(),
            cpus: 2,
            cpu_percent: Some(12.5),
            memory: MemoryUsage { total_bytes: 8 << 30, used_bytes: 4 << 30, available_bytes: 4 << 30 },
            disk: Ok(DiskUsage {
                path: "/var/lib/wasmlet".into(),
                total_bytes: 100 << 30,
                used_bytes: 50 << 30,
                available_bytes: 50 << 30,
                inodes_total: 1000,
                inodes_used: 100,
                inodes_free: 900,
            }),
            pids: PidUsage { used: 300, max: 32768 },
            interfaces: vec![Interface {
                name: "eth0".into(),
                up: true,
                loopback: false,
                addresses: vec![IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2))],
            }],
            ..Default::default()
        }
    }
}

#[cfg(any(test, feature = "testing"))]
impl Probe for FixedProbe {
    fn read(&mut self) -> Facts {
        self.0.lock().expect("probe lock").clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_name_is_unquoted() {
        let text = "NAME=\"Debian GNU/Linux\"\nPRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\nID=debian\n";
        assert_eq!(os_release_pretty_name(text).as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
        assert_eq!(os_release_pretty_name("PRETTY_NAME=Alpine").as_deref(), Some("Alpine"));
        assert_eq!(os_release_pretty_name("ID=x"), None);
    }

    #[test]
    fn architectures_use_kubernetes_names() {
        assert_eq!(kubernetes_arch("x86_64"), "amd64");
        assert_eq!(kubernetes_arch("aarch64"), "arm64");
        assert_eq!(kubernetes_arch("riscv64"), "riscv64");
    }

    #[test]
    fn pressure_files_parse_and_absence_is_not_zero() {
        let dir = tempfile::tempdir().unwrap();
        let absent = read_pressure(&dir.path().join("missing"));
        assert!(!absent.available);
        assert!(absent.reason.unwrap().contains("not present"));

        std::fs::write(dir.path().join("cpu"), "some avg10=1.50 avg60=0.75 avg300=0.10 total=123\n").unwrap();
        std::fs::write(
            dir.path().join("memory"),
            "some avg10=0.00 avg60=0.00 avg300=0.00 total=0\nfull avg10=2.00 avg60=1.00 avg300=0.00 total=0\n",
        )
        .unwrap();
        let p = read_pressure(dir.path());
        assert!(p.available);
        assert_eq!(p.cpu.unwrap().some.avg10, 1.5);
        assert_eq!(p.cpu.unwrap().full, None);
        assert_eq!(p.memory.unwrap().full.unwrap().avg60, 1.0);
        assert_eq!(p.io, None, "a missing io file stays unknown");
    }
}

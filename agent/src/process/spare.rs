//! A spare instance process: forked ahead of the next process-isolated run
//! from the template process ([`super::template`]), already in a cgroup of
//! its own, waiting for its spec.
//!
//! Moving a process into a cgroup makes the kernel wait for an RCU grace
//! period the first time after a quiet spell (the cgroup core's threadgroup
//! lock switches to its writer mode): 10 to 20 ms on a small machine, most of
//! a start. The spare pays it ahead, off any start's path. A run claims it by
//! setting its own limits on the spare's cgroup and writing its spec file's
//! path to the spare's stdin; the next spare is then made in the background.
//! There is at most one, made after a process run started, and kept while
//! process runs are kept and for [`LINGER`] after the last one ended: an agent
//! that runs no process instances has none. A spare whose agent went away
//! reads the end of its stdin and exits.

use std::io::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::os::fd::OwnedFd;

use tokio::io::unix::AsyncFd;

use super::Inner;
use super::cgroup::{InstanceCgroup, Limits};
use super::template::Template;

/// How long a spare is kept after the last process run ended.
pub(super) const LINGER: std::time::Duration = std::time::Duration::from_secs(600);

/// The last run ended: the spare goes after [`LINGER`] unless a run started meanwhile.
pub(super) fn linger(inner: Arc<Inner>) {
    let kept = inner.runs_kept.load(Ordering::Relaxed);
    let stopping = inner.detached.clone();
    // Not a keeper: the agent's shutdown does not wait for it.
    tokio::spawn(async move {
        tokio::select! {
            () = tokio::time::sleep(LINGER) => {}
            // The agent ends the spare itself when it stops.
            () = stopping.cancelled() => return,
        }
        if inner.live.load(Ordering::Relaxed) == 0 && inner.runs_kept.load(Ordering::Relaxed) == kept {
            let _ = tokio::task::spawn_blocking(move || inner.spare.discard()).await;
        }
    });
}

/// Where the spare is; `made` wakes a claim that waits for one being made.
#[derive(Default)]
pub(super) struct Slot {
    state: Mutex<State>,
    made: std::sync::Condvar,
    /// Forks the spares; started with the first, ended with the last.
    template: Mutex<Option<Template>>,
}

/// How long a claim waits for a spare being made: less than starting a process itself would take.
const WAIT_FOR_MAKING: std::time::Duration = std::time::Duration::from_millis(50);

#[derive(Default)]
enum State {
    #[default]
    Empty,
    Making,
    Ready(Box<Spare>),
}

struct Spare {
    cgroup: InstanceCgroup,
    pid: u32,
    /// The template's child, not the agent's: watched and signalled through this.
    pidfd: OwnedFd,
    /// The write end of its stdin.
    claim: std::fs::File,
}

/// A spare a run claimed: its cgroup, its PID and its pidfd, registered to be awaited.
pub(super) struct Claimed {
    pub cgroup: InstanceCgroup,
    pub pid: u32,
    pub pidfd: AsyncFd<OwnedFd>,
}

impl Slot {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The spare for the run whose spec file is `spec`, its cgroup set to
    /// `limits`; None when there is none ready (or it could not be claimed:
    /// the run then starts a process of its own).
    #[allow(unsafe_code)]
    pub(super) fn claim(&self, spec: &Path, limits: &Limits) -> Option<Claimed> {
        let mut spare = {
            let state = self.state();
            // One being made is ready within moments; starting another would take as long.
            let (mut state, _) = self
                .made
                .wait_timeout_while(state, WAIT_FOR_MAKING, |state| matches!(state, State::Making))
                .unwrap_or_else(|p| p.into_inner());
            match std::mem::take(&mut *state) {
                State::Ready(spare) => *spare,
                other => {
                    *state = other;
                    return None;
                }
            }
        };
        let path = spec.to_str().filter(|p| !p.contains('\n'));
        let claimed = match path {
            None => Err(format!("the spec path {} cannot be passed on a line", spec.display())),
            Some(path) => spare
                .cgroup
                .limit(limits)
                .and_then(|()| writeln!(spare.claim, "{path}").map_err(|e| format!("cannot pass the spec to the spare: {e}"))),
        };
        let claimed = claimed.and_then(|()| {
            let pidfd = spare.pidfd.try_clone().map_err(|e| format!("cannot hold the spare's pidfd: {e}"))?;
            // SAFETY: the pidfd is an open descriptor the AsyncFd owns for as long as it is registered.
            unsafe { AsyncFd::register_with_interest(pidfd, tokio::io::Interest::READABLE) }
                .map_err(|e| format!("cannot watch the spare: {}", e.into_parts().1))
        });
        match claimed {
            Ok(pidfd) => Some(Claimed { cgroup: spare.cgroup, pid: spare.pid, pidfd }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot claim the spare instance process; starting one for the run");
                end(spare);
                None
            }
        }
    }

    /// Ends the spare, if one is ready (one being made ends when it is).
    pub(super) fn discard(&self) {
        let taken = std::mem::take(&mut *self.state());
        match taken {
            State::Ready(spare) => end(*spare),
            // Being made: it is ended when made, as no run is kept then.
            State::Making => *self.state() = State::Making,
            State::Empty => {}
        }
        drop(self.template.lock().unwrap_or_else(|p| p.into_inner()).take());
    }
}

/// Makes the next spare in the background, unless there is one or the agent stops.
pub(super) fn prepare(inner: &Arc<Inner>) {
    if inner.detached.is_cancelled() {
        return;
    }
    {
        let mut state = inner.spare.state();
        if !matches!(*state, State::Empty) {
            return;
        }
        *state = State::Making;
    }
    let inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        let made = make(&inner);
        let mut state = inner.spare.state();
        let ended = match made {
            Ok(spare) if !inner.detached.is_cancelled() => {
                *state = State::Ready(Box::new(spare));
                None
            }
            Ok(spare) => {
                *state = State::Empty;
                Some(spare)
            }
            Err(e) => {
                *state = State::Empty;
                tracing::warn!(error = %e, "cannot start a spare instance process; runs start their own");
                None
            }
        };
        drop(state);
        inner.spare.made.notify_all();
        if let Some(spare) = ended {
            end(spare);
        }
    });
}

fn make(inner: &Inner) -> Result<Spare, String> {
    static SPARES: AtomicU64 = AtomicU64::new(0);
    let name = format!("spare-{}-{}", std::process::id(), SPARES.fetch_add(1, Ordering::Relaxed));
    let settings = &inner.settings;
    let mut template = inner.spare.template.lock().unwrap_or_else(|p| p.into_inner());
    if !template.as_mut().is_some_and(Template::running) {
        *template = Some(Template::start(&settings.exe).map_err(|e| format!("cannot start the template process: {e}"))?);
    }
    let Some(template) = template.as_mut() else { return Err("no template process".to_string()) };
    // Idle it needs little; the run that claims it sets its own limits.
    let limits = Limits { cpu_millis: None, memory_max: Some(settings.memory_overhead), pids_max: Some(settings.pids_max) };
    let cgroup = inner.cgroups.create(&name, &limits)?;
    let forked = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC)
        .map_err(std::io::Error::from)
        .and_then(|(read, write)| Ok((template.fork(read)?, write)))
        .and_then(|(pid, write)| {
            let pidfd = rustix::process::Pid::from_raw(pid as i32)
                .ok_or_else(|| std::io::Error::other("the template answered PID 0"))
                .and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).map_err(std::io::Error::from))?;
            Ok((pid, pidfd, write))
        });
    let (pid, pidfd, write) = match forked {
        Ok(forked) => forked,
        Err(e) => {
            let _ = cgroup.remove();
            return Err(format!("cannot fork it: {e}"));
        }
    };
    let spare = Spare { cgroup, pid, pidfd, claim: std::fs::File::from(write) };
    // The move into its cgroup, which may wait for the kernel: here, ahead of any start.
    if let Err(e) = spare.cgroup.move_in(pid) {
        end(spare);
        return Err(format!("cannot move it into its cgroup: {e}"));
    }
    Ok(spare)
}

/// Ends a spare: the end of its stdin, a kill for good measure, and its cgroup removed.
fn end(spare: Spare) {
    let Spare { cgroup, pidfd, claim, .. } = spare;
    drop(claim);
    let _ = rustix::process::pidfd_send_signal(&pidfd, rustix::process::Signal::KILL);
    let _ = cgroup.kill();
    if let Err(e) = cgroup.remove() {
        tracing::warn!(cgroup = %cgroup.name(), error = %e, "cannot remove a spare's cgroup");
    }
}

//! The template process: one `wasmlet-agent instance --template`, which forks
//! every spare instance process on the agent's request.
//!
//! A process of a position-independent binary relocates its read-only data
//! (`.data.rel.ro`, the GOT) when it starts: for the agent's binary about
//! 0.9 MiB that every exec'd process holds as its own dirty pages. A process
//! forked from one that did this already shares them with it, copy-on-write,
//! and never writes them again. The template is single-threaded, does nothing
//! but fork, and its children are reaped by the kernel (SIGCHLD ignored). The
//! agent watches each child through a pidfd, as it watches a run it adopted.
//!
//! The request is one byte on the template's stdin (a Unix socket) carrying
//! the read end of the spare's claim pipe (SCM_RIGHTS); the answer is the
//! child's PID, four bytes, little-endian (0: the fork failed). At the end of
//! its stdin (the agent gone) the template exits.

use std::io::{IoSlice, IoSliceMut, Read as _};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd as _, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

/// How long the agent waits for the template to answer a fork.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// The agent's side: the template process and the socket to it.
pub(super) struct Template {
    child: std::process::Child,
    control: UnixStream,
}

impl Template {
    /// Starts `<exe> instance --template`, in the agent's own cgroup.
    pub(super) fn start(exe: &Path) -> std::io::Result<Template> {
        let (control, theirs) = UnixStream::pair()?;
        control.set_read_timeout(Some(ANSWER_TIMEOUT))?;
        let child = std::process::Command::new(exe)
            .args(["instance", "--template"])
            .env_clear()
            .stdin(Stdio::from(OwnedFd::from(theirs)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Template { child, control })
    }

    /// Forks a spare that reads its claim from `claim`; its PID.
    pub(super) fn fork(&mut self, claim: OwnedFd) -> std::io::Result<u32> {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        let fds = [claim.as_fd()];
        control.push(SendAncillaryMessage::ScmRights(&fds));
        rustix::net::sendmsg(&self.control, &[IoSlice::new(b"f")], &mut control, SendFlags::empty())?;
        drop(claim);
        let mut pid = [0u8; 4];
        self.control.read_exact(&mut pid)?;
        match u32::from_le_bytes(pid) {
            0 => Err(std::io::Error::other("the template process could not fork")),
            pid => Ok(pid),
        }
    }

    /// Whether it still runs (a fork request to a dead one would fail).
    pub(super) fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Template {
    fn drop(&mut self) {
        // Its children are instances (or spares, which end with the agent's pipes): they run on.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// How [`serve_forks`] returns.
pub(super) enum Served {
    /// In the template, which exits with this code (at the end of its stdin: the agent is gone).
    Exit(std::process::ExitCode),
    /// In a forked child: a spare, its stdin its claim pipe.
    Spare,
}

/// The template's side: serves fork requests on stdin until its end.
#[allow(unsafe_code)]
pub(super) fn serve_forks() -> Served {
    // SAFETY: setting a signal disposition; nothing else runs in this process.
    unsafe {
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    let control = std::io::stdin();
    loop {
        let mut byte = [0u8; 1];
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut ancillary = RecvAncillaryBuffer::new(&mut space);
        let received = rustix::net::recvmsg(&control, &mut [IoSliceMut::new(&mut byte)], &mut ancillary, RecvFlags::CMSG_CLOEXEC);
        let claim: Option<OwnedFd> = match received {
            Ok(msg) if msg.bytes == 0 => return Served::Exit(std::process::ExitCode::SUCCESS),
            Ok(_) => ancillary.drain().find_map(|message| match message {
                RecvAncillaryMessage::ScmRights(mut fds) => fds.next(),
                _ => None,
            }),
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => return Served::Exit(std::process::ExitCode::from(2)),
        };
        drop(ancillary);
        let Some(claim) = claim else {
            answer(&control, 0);
            continue;
        };
        // SAFETY: this process has a single thread, so the child starts in a
        // consistent state (no lock held by another thread), as after exec.
        match unsafe { libc::fork() } {
            0 => {
                // The child: a spare, its stdin the claim pipe, in a session of its own.
                // SAFETY: restoring the default disposition in the new process.
                unsafe {
                    libc::signal(libc::SIGCHLD, libc::SIG_DFL);
                }
                let _ = rustix::process::setsid();
                if rustix::stdio::dup2_stdin(&claim).is_err() {
                    std::process::exit(2);
                }
                drop(claim);
                return Served::Spare;
            }
            pid => {
                drop(claim);
                if !answer(&control, u32::try_from(pid).unwrap_or(0)) {
                    return Served::Exit(std::process::ExitCode::from(2));
                }
            }
        }
    }
}

/// Tells the agent the PID forked (0: none); false when it cannot be told.
fn answer(control: &std::io::Stdin, pid: u32) -> bool {
    rustix::io::write(control, &pid.to_le_bytes()).is_ok_and(|n| n == 4)
}

//! The directories a guest is granted, and how they are opened at every start.
//!
//! A grant is checked once, at admission, and remembered as a trusted root and
//! the names beneath it. The root is the operator's: an allowed host path from
//! the agent's configuration (the outermost one holding the grant), or the
//! data dir for scratch dirs. What lies beneath a root is the guests' to
//! change, since guests write inside their grants: a guest may swap a granted
//! directory, its own or another workload's, for a symbolic link to `/`.
//!
//! So at every start each grant is opened again from its root, one name at a
//! time, each relative to the directory opened before it with
//! `O_NOFOLLOW | O_DIRECTORY`. A symbolic link, a file or anything else that is
//! not a directory anywhere beneath the root fails the start with a message
//! naming the grant and what was found; nothing is ever followed. The runtime
//! is then handed `/proc/self/fd/N`: a magic link that resolves to the very
//! directory held open, not to a path looked up again by name.
//!
//! Races are out of reach by construction: every step resolves a single name
//! inside a directory already held open, so renaming or replacing anything
//! after it was opened changes nothing about what is held; and nothing a
//! guest controls is ever resolved as a path.

use std::ffi::OsString;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Component, Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

/// A directory granted to the guest.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Preopen {
    /// Checked against the agent's allow-list at admission; opened anew at every start.
    pub dir: GrantedDir,
    pub guest: String,
    pub read_only: bool,
}
/// A directory beneath a trusted root, opened anew for every run (also by
/// an instance's own process, which gets it from the agent in its spec file).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GrantedDir {
    /// Trusted: an allowed host path of the agent's configuration, or its data dir.
    root: PathBuf,
    /// The names from the root down to the directory, each a single component.
    beneath: Vec<OsString>,
    /// How the manifest names the grant, for messages: `spec.dirs[1].hostPath /srv/a/b`.
    label: String,
    /// Missing directories beneath the root are created (scratch dirs).
    create: bool,
}

/// Why a grant could not be opened. The message names the grant and what was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{label}: {problem}")]
pub struct GrantError {
    pub label: String,
    pub problem: String,
}

/// A granted directory, held open until it is handed to the runtime.
#[derive(Debug)]
pub struct OpenedDir(OwnedFd);

impl OpenedDir {
    /// A path naming exactly this open directory (the `/proc/self/fd` magic
    /// link), for APIs that take a path. Valid while `self` lives.
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.0.as_raw_fd()))
    }
}

impl AsRawFd for OpenedDir {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.0.as_raw_fd()
    }
}

/// Directories beneath a root are opened only for lookups (`O_PATH`): no read
/// permission is needed to pass through them, and nothing is followed.
const STEP: OFlags = OFlags::PATH.union(OFlags::DIRECTORY).union(OFlags::NOFOLLOW).union(OFlags::CLOEXEC);

impl GrantedDir {
    /// The host directory `beneath` the allowed `root`, granted as `dirs[index]`.
    pub fn host(index: usize, host_path: &str, root: PathBuf, beneath: &Path) -> Result<GrantedDir, String> {
        let label = format!("spec.dirs[{index}].hostPath {host_path}");
        let names = beneath
            .components()
            .map(|c| match c {
                Component::Normal(name) => Ok(name.to_os_string()),
                other => Err(format!("{label}: `{}` is not a plain name beneath {}", other.as_os_str().to_string_lossy(), root.display())),
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(GrantedDir { root, beneath: names, label, create: false })
    }

    /// A scratch dir of an instance: `names` beneath the data dir, created when missing.
    pub fn scratch(index: usize, guest: &str, data_dir: &Path, names: &[&str]) -> GrantedDir {
        GrantedDir {
            root: data_dir.to_path_buf(),
            beneath: names.iter().map(OsString::from).collect(),
            label: format!("spec.dirs[{index}] (scratch dir {guest})"),
            create: true,
        }
    }

    /// Where the directory is on the host (for messages and for measuring it).
    pub fn path(&self) -> PathBuf {
        self.beneath.iter().fold(self.root.clone(), |path, name| path.join(name))
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Opens the directory from its root without following anything beneath it.
    pub fn open(&self) -> Result<OpenedDir, GrantError> {
        let fail = |problem: String| GrantError { label: self.label.clone(), problem };
        // The root and the path to it are the operator's: followed as configured.
        let mut dir = rustix::fs::open(&self.root, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())
            .map_err(|e| fail(format!("cannot open its root {}: {e}", self.root.display())))?;
        let mut at = self.root.clone();
        for name in &self.beneath {
            at.push(name);
            if self.create {
                match rustix::fs::mkdirat(&dir, name.as_os_str(), Mode::RWXU) {
                    Ok(()) | Err(Errno::EXIST) => {}
                    Err(e) => return Err(fail(format!("cannot create {}: {e}", at.display()))),
                }
            }
            dir = match rustix::fs::openat(&dir, name.as_os_str(), STEP, Mode::empty()) {
                Ok(next) => next,
                Err(e) => return Err(fail(self.describe_refusal(&dir, name, &at, e))),
            };
            // O_PATH with O_NOFOLLOW may hand back the link itself on some kernels: check what was opened.
            match rustix::fs::fstat(&dir).map(|st| FileType::from_raw_mode(st.st_mode)) {
                Ok(FileType::Directory) => {}
                Ok(other) => return Err(fail(self.refusal(&at, &format!("is {}", kind(other))))),
                Err(e) => return Err(fail(format!("cannot inspect {}: {e}", at.display()))),
            }
        }
        Ok(OpenedDir(dir))
    }

    /// Says what stands at `name` instead of a directory.
    fn describe_refusal(&self, parent: &OwnedFd, name: &OsString, at: &Path, error: Errno) -> String {
        let found = rustix::fs::statat(parent, name.as_os_str(), AtFlags::SYMLINK_NOFOLLOW);
        match found.map(|st| FileType::from_raw_mode(st.st_mode)) {
            Ok(FileType::Symlink) => {
                let target = rustix::fs::readlinkat(parent, name.as_os_str(), Vec::new())
                    .map(|t| format!(" (to {})", t.to_string_lossy()))
                    .unwrap_or_default();
                self.refusal(at, &format!("is a symbolic link{target}"))
            }
            Ok(FileType::Directory) => format!("cannot open {}: {error}", at.display()),
            Ok(other) => self.refusal(at, &format!("is {}", kind(other))),
            Err(Errno::NOENT) => format!("{} does not exist; create it or change the grant", at.display()),
            Err(e) => format!("cannot open {}: {e}", at.display()),
        }
    }

    fn refusal(&self, at: &Path, found: &str) -> String {
        format!(
            "no longer resolves inside {}: {} {found}, not a directory; grants are opened without following symbolic links: \
             put the directory back or change the grant",
            self.root.display(),
            at.display()
        )
    }
}

fn kind(file_type: FileType) -> &'static str {
    match file_type {
        FileType::RegularFile => "a regular file",
        FileType::Directory => "a directory",
        FileType::Symlink => "a symbolic link",
        FileType::Fifo => "a named pipe",
        FileType::Socket => "a socket",
        FileType::CharacterDevice => "a character device",
        FileType::BlockDevice => "a block device",
        FileType::Unknown => "of an unknown type",
    }
}

/// Which host directories workloads may be granted: those inside the
/// agent's `--allowed-host-paths`, except the agent's own directories, any
/// directory holding one of them and any directory inside one. An allowed
/// directory may well hold the agent's (`/var/lib` holds `/var/lib/wasmlet`);
/// a grant of the data dir would hand a guest the node's credential, the
/// compiled code the agent runs natively and the other workloads' files, a
/// grant of the manifests dir the workloads the agent runs.
#[derive(Debug, Clone, Default)]
pub struct HostPathPolicy {
    /// `--allowed-host-paths`, as configured (resolved at each admission).
    pub allowed: Vec<PathBuf>,
    /// The agent's own directories, each with what it is for messages: never granted.
    pub own: Vec<(&'static str, PathBuf)>,
}

impl HostPathPolicy {
    /// The policy of an agent with `allowed` host paths, its data dir and its manifests dir, if any.
    pub fn new(allowed: &[PathBuf], data_dir: &Path, manifests_dir: Option<&Path>) -> HostPathPolicy {
        let mut own = vec![("the agent's data dir", data_dir.to_path_buf())];
        own.extend(manifests_dir.map(|dir| ("the agent's manifests dir", dir.to_path_buf())));
        HostPathPolicy { allowed: allowed.to_vec(), own }
    }

    /// Resolves a workload's host directory grants against the policy, at
    /// admission. Scratch grants (no host path) are left to the supervisor.
    /// The error names the field and the allowed directories, or the agent's
    /// directory the grant touches. The allow-list is resolved here, at each
    /// admission, so a directory created after the agent started counts.
    ///
    /// Each grant is remembered beneath the outermost allowed directory that
    /// holds it: a guest granted an outer directory can change what lies
    /// beneath it, including the path to an inner allowed directory.
    pub fn resolve(&self, dirs: &[wasmlet_api::DirGrant]) -> Result<Vec<Preopen>, String> {
        if dirs.iter().all(|d| d.host_path.is_none()) {
            return Ok(Vec::new());
        }
        let allowed: Vec<PathBuf> = self.allowed.iter().filter_map(|p| p.canonicalize().ok()).collect();
        let own: Vec<(&str, PathBuf)> = self.own.iter().map(|(what, dir)| (*what, resolved(dir))).collect();
        let mut out = Vec::new();
        for (i, grant) in dirs.iter().enumerate() {
            let Some(host) = &grant.host_path else { continue };
            let canonical = Path::new(host).canonicalize().map_err(|e| format!("spec.dirs[{i}].hostPath: {host}: {e}"))?;
            // Every allowed directory holding the grant lies on one chain; the shortest is the outermost.
            let root = allowed.iter().filter(|a| canonical.starts_with(a)).min_by_key(|a| a.components().count());
            let Some(root) = root else {
                let allowed = if allowed.is_empty() {
                    "none are allowed; the agent's --allowed-host-paths lists the directories workloads may be granted".to_string()
                } else {
                    let list: Vec<String> = allowed.iter().map(|p| p.display().to_string()).collect();
                    format!("allowed: {}", list.join(", "))
                };
                return Err(format!("spec.dirs[{i}].hostPath: {host} is outside the agent's allowed host paths ({allowed})"));
            };
            for (what, dir) in &own {
                let relation = if &canonical == dir {
                    "is"
                } else if dir.starts_with(&canonical) {
                    "holds"
                } else if canonical.starts_with(dir) {
                    "lies inside"
                } else {
                    continue;
                };
                return Err(format!(
                    "spec.dirs[{i}].hostPath: {host} {relation} {what} {}, which is never granted (nor a directory holding it or inside it); \
                     grant a directory apart from it",
                    dir.display()
                ));
            }
            let beneath = canonical.strip_prefix(root).unwrap_or(Path::new(""));
            let dir = GrantedDir::host(i, host, root.clone(), beneath)?;
            out.push(Preopen { dir, guest: grant.path.clone(), read_only: grant.read_only });
        }
        Ok(out)
    }

    /// Warns about allow-list entries that do not exist (yet): they count only
    /// once they do; and about those that hold or lie inside the agent's own
    /// directories, of which only the parts apart from them can be granted.
    pub fn check_allow_list(&self) {
        for path in &self.allowed {
            let Ok(canonical) = path.canonicalize() else {
                tracing::warn!(path = %path.display(), "an allowed host path cannot be resolved; it counts once it exists");
                continue;
            };
            for (what, dir) in &self.own {
                let dir = resolved(dir);
                if dir.starts_with(&canonical) || canonical.starts_with(&dir) {
                    tracing::warn!(
                        path = %path.display(),
                        own = %dir.display(),
                        "an allowed host path overlaps {what}: grants of it, or of a directory holding it or inside it, are refused"
                    );
                }
            }
        }
    }
}

/// A directory of the agent's, resolved like the grants compared with it; as
/// given (made absolute) while it does not exist.
fn resolved(dir: &Path) -> PathBuf {
    dir.canonicalize().or_else(|_| std::path::absolute(dir)).unwrap_or_else(|_| dir.to_path_buf())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, symlink};

    use super::*;

    fn grant(root: &Path, beneath: &str) -> GrantedDir {
        GrantedDir::host(1, &root.join(beneath).display().to_string(), root.to_path_buf(), Path::new(beneath)).unwrap()
    }

    fn identity(path: &Path) -> (u64, u64) {
        let m = std::fs::metadata(path).unwrap();
        (m.dev(), m.ino())
    }

    #[test]
    fn a_directory_beneath_its_root_opens_and_is_that_directory() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/b")).unwrap();
        let opened = grant(root.path(), "a/b").open().unwrap();
        assert_eq!(identity(&opened.proc_path()), identity(&root.path().join("a/b")));
        // The root itself may be granted.
        let whole = GrantedDir::host(0, "/x", root.path().to_path_buf(), Path::new("")).unwrap().open().unwrap();
        assert_eq!(identity(&whole.proc_path()), identity(root.path()));
    }

    #[test]
    fn a_symlink_anywhere_beneath_the_root_is_refused_and_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("a/real")).unwrap();
        // The last component swapped for a link out of the root, and for a link that stays inside it.
        symlink("../../..", root.path().join("a/b")).unwrap();
        let err = grant(root.path(), "a/b").open().unwrap_err().to_string();
        assert!(err.starts_with(&format!("spec.dirs[1].hostPath {}", root.path().join("a/b").display())), "{err}");
        assert!(err.contains("is a symbolic link (to ../../..)") && err.contains("no longer resolves inside"), "{err}");
        symlink("real", root.path().join("a/inside")).unwrap();
        let err = grant(root.path(), "a/inside").open().unwrap_err().to_string();
        assert!(err.contains("is a symbolic link (to real)"), "{err}");
        // An intermediate component.
        std::fs::create_dir_all(root.path().join("x/y/z")).unwrap();
        std::fs::rename(root.path().join("x/y"), root.path().join("x/y-moved")).unwrap();
        symlink("y-moved", root.path().join("x/y")).unwrap();
        let err = grant(root.path(), "x/y/z").open().unwrap_err().to_string();
        assert!(err.contains(&format!("{} is a symbolic link (to y-moved)", root.path().join("x/y").display())), "{err}");
    }

    #[test]
    fn files_and_missing_directories_are_named() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("file"), b"x").unwrap();
        let err = grant(root.path(), "file").open().unwrap_err().to_string();
        assert!(err.contains("is a regular file, not a directory"), "{err}");
        let err = grant(root.path(), "gone").open().unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }

    #[test]
    fn scratch_dirs_are_created_but_a_planted_link_is_not_followed() {
        let data = tempfile::tempdir().unwrap();
        let scratch = GrantedDir::scratch(0, "/data", data.path(), &["instances", "w-0", "scratch", "0"]);
        let opened = scratch.open().unwrap();
        assert_eq!(identity(&opened.proc_path()), identity(&data.path().join("instances/w-0/scratch/0")));
        let other = GrantedDir::scratch(1, "/tmp", data.path(), &["instances", "w-0", "scratch", "1"]);
        symlink("/", data.path().join("instances/w-0/scratch/1")).unwrap();
        let err = other.open().unwrap_err().to_string();
        assert!(err.starts_with("spec.dirs[1] (scratch dir /tmp): ") && err.contains("symbolic link (to /)"), "{err}");
    }

    /// The runtime opens the path it is given the way wasmtime-wasi does
    /// (`O_PATH | O_DIRECTORY`, following links): the magic link must lead to
    /// the directory held open even when the grant's path was swapped meanwhile.
    #[test]
    fn the_magic_link_names_the_open_directory_not_its_path() {
        use std::os::unix::fs::OpenOptionsExt;
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("grant")).unwrap();
        std::fs::create_dir_all(root.path().join("elsewhere")).unwrap();
        let original = identity(&root.path().join("grant"));
        let opened = grant(root.path(), "grant").open().unwrap();
        std::fs::rename(root.path().join("grant"), root.path().join("moved")).unwrap();
        symlink("elsewhere", root.path().join("grant")).unwrap();
        let reopened = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags((OFlags::DIRECTORY | OFlags::PATH).bits() as i32)
            .open(opened.proc_path())
            .unwrap();
        let m = reopened.metadata().unwrap();
        assert_eq!((m.dev(), m.ino()), original);
        assert_ne!((m.dev(), m.ino()), identity(&root.path().join("elsewhere")));
    }

    #[test]
    fn grants_are_kept_beneath_the_outermost_allowed_directory() {
        let top = tempfile::tempdir().unwrap();
        let outer = top.path().join("outer");
        std::fs::create_dir_all(outer.join("inner/dir")).unwrap();
        let allowed = [outer.join("inner"), outer.clone()];
        let dirs =
            [wasmlet_api::DirGrant { path: "/g".into(), host_path: Some(outer.join("inner/dir").display().to_string()), read_only: false }];
        let preopens = HostPathPolicy { allowed: allowed.to_vec(), own: Vec::new() }.resolve(&dirs).unwrap();
        let outer = outer.canonicalize().unwrap();
        assert_eq!(preopens[0].dir.root, outer);
        assert_eq!(preopens[0].dir.beneath, [OsString::from("inner"), OsString::from("dir")]);
        // Swapping the inner allowed directory for a link is caught, as it lies beneath the outer one.
        std::fs::rename(outer.join("inner"), top.path().join("inner-moved")).unwrap();
        symlink(top.path().join("inner-moved"), outer.join("inner")).unwrap();
        let err = preopens[0].dir.open().unwrap_err().to_string();
        assert!(err.contains(&format!("{} is a symbolic link", outer.join("inner").display())), "{err}");
    }
}

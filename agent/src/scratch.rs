//! The instances' scratch dirs: where they live in the data dir, and how much
//! they hold, for `limits.ephemeralStorage`.
//!
//! Like the kubelet for emptyDir volumes, the agent measures periodically and
//! evicts: there is no quota a process can set on a directory without root-only
//! tools (project quotas, a filesystem per instance). A guest can therefore go
//! past its limit by what it writes between two measurements, not further.
//!
//! A measurement walks the tree without following links (each directory is
//! opened relative to its parent with `O_NOFOLLOW`), counts the space each
//! entry takes on disk, and never less than [`MIN_ENTRY_BYTES`] per entry, so
//! that millions of empty files (inodes) count too. It stops as soon as the
//! count passes the limit: its cost is bounded by the limit, whatever the
//! guest wrote.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags};
use rustix::io::Errno;

/// What one file or directory costs at least, whatever it holds: a block.
pub const MIN_ENTRY_BYTES: u64 = 4096;

/// Directories nested deeper than this are not measured: the instance counts
/// as over its limit (a walk holds one descriptor per level).
pub const MAX_DEPTH: usize = 256;

/// `<data-dir>/instances/<instance>`: everything of an instance but its log.
pub fn instance_dir(data_dir: &Path, instance: &str) -> PathBuf {
    data_dir.join("instances").join(instance)
}

/// The names, beneath the data dir, of the scratch dir granted as `dirs[index]`.
pub fn dir_names(instance: &str, index: usize) -> [String; 4] {
    ["instances".to_string(), instance.to_string(), "scratch".to_string(), index.to_string()]
}

/// What a measurement found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Measured {
    /// The scratch dirs hold this many bytes, within the limit.
    Within(u64),
    /// Over the limit: at least this many bytes (counting stopped there).
    Over(u64),
    /// Nested deeper than [`MAX_DEPTH`]: counted as over the limit.
    TooDeep,
}

/// Measures all scratch dirs of `instance` against `limit`. A missing dir holds nothing.
pub fn measure(data_dir: &Path, instance: &str, limit: u64) -> std::io::Result<Measured> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::open(data_dir, OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    for name in ["instances", instance, "scratch"] {
        dir = match rustix::fs::openat(&dir, name, flags, Mode::empty()) {
            Ok(next) => next,
            Err(Errno::NOENT) => return Ok(Measured::Within(0)),
            Err(e) => return Err(e.into()),
        };
    }
    let mut count = Count { bytes: 0, limit };
    Ok(match count.tree(dir, 0)? {
        Walk::Done if count.bytes <= limit => Measured::Within(count.bytes),
        Walk::Done | Walk::Over => Measured::Over(count.bytes),
        Walk::TooDeep => Measured::TooDeep,
    })
}

struct Count {
    bytes: u64,
    limit: u64,
}

enum Walk {
    Done,
    Over,
    TooDeep,
}

impl Count {
    fn tree(&mut self, fd: OwnedFd, depth: usize) -> std::io::Result<Walk> {
        if depth > MAX_DEPTH {
            return Ok(Walk::TooDeep);
        }
        let mut dir = Dir::new(fd)?;
        while let Some(entry) = dir.read() {
            let entry = entry?;
            let name = entry.file_name();
            if name == c"." || name == c".." {
                continue;
            }
            let parent = dir.fd()?;
            let stat = match rustix::fs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                // Removed by the guest meanwhile: it holds nothing now.
                Err(Errno::NOENT) => continue,
                Err(e) => return Err(e.into()),
            };
            self.bytes = self.bytes.saturating_add((stat.st_blocks as u64).saturating_mul(512).max(MIN_ENTRY_BYTES));
            if self.bytes > self.limit {
                return Ok(Walk::Over);
            }
            if FileType::from_raw_mode(stat.st_mode) == FileType::Directory {
                let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
                let child = match rustix::fs::openat(parent, name, flags, Mode::empty()) {
                    Ok(child) => child,
                    // Replaced by something else meanwhile (a link is not followed): counted as what it was.
                    Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => continue,
                    Err(e) => return Err(e.into()),
                };
                match self.tree(child, depth + 1)? {
                    Walk::Done => {}
                    stop => return Ok(stop),
                }
            }
        }
        Ok(Walk::Done)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(data: &Path) -> PathBuf {
        let dir = data.join("instances/w-0/scratch/0");
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn bytes_and_entries_are_counted_without_following_links() {
        let data = tempfile::tempdir().unwrap();
        assert_eq!(measure(data.path(), "w-0", 1 << 20).unwrap(), Measured::Within(0), "no scratch dir holds nothing");
        let dir = scratch(data.path());
        std::fs::write(dir.join("a"), vec![1u8; 100_000]).unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/empty"), b"").unwrap();
        // A link to a big tree outside is one small entry, not what it points at.
        std::os::unix::fs::symlink("/usr", dir.join("usr")).unwrap();
        let Measured::Within(bytes) = measure(data.path(), "w-0", 1 << 20).unwrap() else { panic!("within") };
        // scratch/0, a (about 100 kB), sub, sub/empty and the link.
        assert!((100_000 + 4 * MIN_ENTRY_BYTES..200_000).contains(&bytes), "{bytes}");
    }

    #[test]
    fn counting_stops_past_the_limit_and_deep_trees_count_as_over() {
        let data = tempfile::tempdir().unwrap();
        let dir = scratch(data.path());
        for i in 0..100 {
            std::fs::write(dir.join(i.to_string()), b"").unwrap();
        }
        // 101 entries of at least 4 KiB each: over 256 KiB, found before all are counted.
        match measure(data.path(), "w-0", 256 << 10).unwrap() {
            Measured::Over(bytes) => assert!(bytes > 256 << 10 && bytes < 400 << 10, "{bytes}"),
            other => panic!("{other:?}"),
        }
        let mut deep = data.path().join("instances/w-1/scratch");
        for _ in 0..=MAX_DEPTH + 1 {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        assert_eq!(measure(data.path(), "w-1", u64::MAX).unwrap(), Measured::TooDeep);
    }
}

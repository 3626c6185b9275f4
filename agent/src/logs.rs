//! Per-instance logs: what a guest writes to stdout and stderr, one
//! timestamped, stream-tagged line at a time, in size-bounded files under the
//! data dir (`logs/<instance>/current.log`, rotated to `current.log.1`).
//!
//! Line format: `<RFC 3339 time> <stdout|stderr> <text>`. A line longer than
//! [`MAX_LINE`] is split; a partial last line is written when the guest exits.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use chrono::{SecondsFormat, Utc};
use tokio::sync::broadcast;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept whole; longer output is split into several lines.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    fn tag(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// The log of one instance, shared by its two streams and by readers.
///
/// A process-isolated instance's process writes the same files itself; while
/// it does, [`InstanceLog::follow_file`] feeds followers from the file, and
/// both writers notice when the other rotated it.
#[derive(Clone)]
pub struct InstanceLog {
    inner: Arc<Mutex<LogFile>>,
    /// Lines as they are written, for `follow` readers.
    lines: broadcast::Sender<Arc<str>>,
    /// Tailers feeding `lines` from the file: then the agent's own lines reach followers through it.
    tailers: Arc<std::sync::atomic::AtomicUsize>,
}

struct LogFile {
    path: PathBuf,
    file: Option<File>,
    size: u64,
    max_size: u64,
    /// Unfinished line per stream.
    partial: [Vec<u8>; 2],
}

impl InstanceLog {
    /// Opens (appending) the log in `dir`, rotating when it passes `max_size` bytes.
    pub fn open(dir: &Path, max_size: u64) -> std::io::Result<InstanceLog> {
        std::fs::create_dir_all(dir)?;
        let path = dir.join("current.log");
        let file = OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        // Small: every instance has one, and a follower that falls behind is told how many lines it missed.
        let (lines, _) = broadcast::channel(64);
        Ok(InstanceLog {
            inner: Arc::new(Mutex::new(LogFile { path, file: Some(file), size, max_size, partial: [Vec::new(), Vec::new()] })),
            lines,
            tailers: Default::default(),
        })
    }

    /// The directory the log's files are in.
    pub fn dir(&self) -> PathBuf {
        self.lock().path.parent().map(Path::to_path_buf).unwrap_or_default()
    }

    /// A sink for one of the guest's output streams.
    pub fn sink(&self, stream: Stream) -> LogSink {
        LogSink { log: self.clone(), stream }
    }

    /// A line from the agent itself about the instance (start, exit, back-off).
    pub fn agent_line(&self, text: &str) {
        self.write_line(Stream::Stderr, format!("[wasmlet] {text}").as_bytes());
    }

    fn write(&self, stream: Stream, bytes: &[u8]) {
        let mut complete = Vec::new();
        {
            let mut guard = self.lock();
            let partial = &mut guard.partial[stream as usize];
            let mut rest = bytes;
            while !rest.is_empty() {
                let (chunk, newline) = match rest.iter().position(|&b| b == b'\n') {
                    Some(i) => (&rest[..i], Some(i)),
                    None => (rest, None),
                };
                partial.extend_from_slice(chunk);
                while partial.len() > MAX_LINE || (newline.is_none() && partial.len() == MAX_LINE) {
                    let tail = partial.split_off(MAX_LINE);
                    complete.push(std::mem::replace(partial, tail));
                }
                match newline {
                    Some(i) => {
                        complete.push(std::mem::take(partial));
                        rest = &rest[i + 1..];
                    }
                    None => rest = &[],
                }
            }
        }
        for line in complete {
            self.write_line(stream, &line);
        }
    }

    /// Writes what is left of unfinished lines (the guest exited).
    pub fn flush_partial(&self) {
        for stream in [Stream::Stdout, Stream::Stderr] {
            let line = std::mem::take(&mut self.lock().partial[stream as usize]);
            if !line.is_empty() {
                self.write_line(stream, &line);
            }
        }
    }

    fn write_line(&self, stream: Stream, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim_end_matches('\r');
        let entry = format!("{} {} {text}\n", Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true), stream.tag());
        let mut guard = self.lock();
        guard.append(entry.as_bytes());
        drop(guard);
        if self.tailers.load(std::sync::atomic::Ordering::Relaxed) == 0 {
            let _ = self.lines.send(Arc::from(entry.trim_end_matches('\n')));
        }
    }

    /// Feeds followers from the file, which another process writes too,
    /// until `stop`: every line appended after now, across rotations.
    pub async fn follow_file(&self, stop: tokio_util::sync::CancellationToken) {
        use std::io::{Read as _, Seek as _};
        use std::os::unix::fs::MetadataExt as _;
        let path = self.lock().path.clone();
        let open = |path: &Path| -> Option<(File, u64)> {
            let file = File::open(path).ok()?;
            let inode = file.metadata().ok()?.ino();
            Some((file, inode))
        };
        self.tailers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut current = open(&path).and_then(|(mut file, inode)| {
            file.seek(std::io::SeekFrom::End(0)).ok()?;
            Some((file, inode))
        });
        let mut pending = Vec::new();
        let send = |pending: &mut Vec<u8>, lines: &broadcast::Sender<Arc<str>>| {
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = pending.drain(..=i).collect();
                let _ = lines.send(Arc::from(String::from_utf8_lossy(&line[..line.len() - 1]).as_ref()));
            }
        };
        loop {
            if let Some((file, inode)) = &mut current {
                let _ = file.read_to_end(&mut pending);
                send(&mut pending, &self.lines);
                let rotated = std::fs::metadata(&path).map(|m| m.ino() != *inode).unwrap_or(true);
                if rotated {
                    // Finish the old file (now `.1`, still open here), then start the new one from its start.
                    let _ = file.read_to_end(&mut pending);
                    send(&mut pending, &self.lines);
                    pending.clear();
                    current = open(&path);
                }
            } else {
                current = open(&path);
            }
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
        if let Some((file, _)) = &mut current {
            let _ = file.read_to_end(&mut pending);
            send(&mut pending, &self.lines);
        }
        self.tailers.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, LogFile> {
        // A panic while holding the lock leaves a consistent file; keep logging.
        self.inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The last `n` lines (all when None), oldest first, from the rotated and the current file.
    pub fn tail(&self, n: Option<usize>) -> Vec<String> {
        let path = self.lock().path.clone();
        tail_files(&path, n)
    }

    /// New lines as they are written.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<str>> {
        self.lines.subscribe()
    }
}

impl LogFile {
    fn append(&mut self, entry: &[u8]) {
        self.reopen_if_rotated();
        if self.size + entry.len() as u64 > self.max_size && self.size > 0 {
            self.rotate();
        }
        if let Some(file) = &mut self.file
            && file.write_all(entry).is_ok()
        {
            self.size += entry.len() as u64;
        }
    }

    /// Another writer (an instance's own process) may have rotated the file:
    /// then write to the new one, and count its size.
    fn reopen_if_rotated(&mut self) {
        use std::os::unix::fs::MetadataExt as _;
        let Some(file) = &self.file else { return };
        let ours = file.metadata().map(|m| m.ino()).ok();
        let now = std::fs::metadata(&self.path).map(|m| m.ino()).ok();
        if ours != now
            && let Ok(file) = OpenOptions::new().create(true).append(true).open(&self.path)
        {
            self.size = file.metadata().map(|m| m.len()).unwrap_or(0);
            self.file = Some(file);
        }
    }

    fn rotate(&mut self) {
        self.file = None;
        let rotated = rotated_path(&self.path);
        let _ = std::fs::rename(&self.path, rotated);
        self.file = OpenOptions::new().create(true).append(true).open(&self.path).ok();
        self.size = 0;
    }
}

fn rotated_path(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// Reads the last `n` lines of a rotated pair of log files.
pub fn tail_files(current: &Path, n: Option<usize>) -> Vec<String> {
    let mut lines: VecDeque<String> = VecDeque::new();
    for path in [rotated_path(current), current.to_path_buf()] {
        let Ok(file) = File::open(&path) else { continue };
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            lines.push_back(line);
            if let Some(n) = n
                && lines.len() > n
            {
                lines.pop_front();
            }
        }
    }
    lines.into()
}

/// One of a guest's output streams, writing into its instance's log.
#[derive(Clone)]
pub struct LogSink {
    log: InstanceLog,
    stream: Stream,
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl tokio::io::AsyncWrite for LogSink {
    fn poll_write(self: Pin<&mut Self>, _cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.log.write(self.stream, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_stamped_tagged_and_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::open(dir.path(), 1 << 20).unwrap();
        log.write(Stream::Stdout, b"one\ntw");
        log.write(Stream::Stderr, b"oops\n");
        log.write(Stream::Stdout, b"o\nthree");
        log.flush_partial();
        let lines = log.tail(None);
        assert_eq!(lines.len(), 4, "{lines:?}");
        assert!(lines[0].ends_with(" stdout one"), "{}", lines[0]);
        assert!(lines[1].ends_with(" stderr oops"));
        assert!(lines[2].ends_with(" stdout two"));
        assert!(lines[3].ends_with(" stdout three"));
        assert!(chrono::DateTime::parse_from_rfc3339(lines[0].split(' ').next().unwrap()).is_ok());
        assert_eq!(log.tail(Some(2)).len(), 2);
    }

    #[test]
    fn files_rotate_at_the_size_bound() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::open(dir.path(), 1000).unwrap();
        for i in 0..100 {
            log.write(Stream::Stdout, format!("line {i:03} {}\n", "x".repeat(20)).as_bytes());
        }
        let current = std::fs::metadata(dir.path().join("current.log")).unwrap().len();
        let rotated = std::fs::metadata(dir.path().join("current.log.1")).unwrap().len();
        assert!(current <= 1000 && rotated <= 1000, "{current} {rotated}");
        let tail = log.tail(Some(3));
        assert!(tail[2].contains("line 099"), "{tail:?}");
    }

    #[tokio::test]
    async fn followers_get_what_another_process_writes_across_rotations() {
        let dir = tempfile::tempdir().unwrap();
        // 20 lines of about 43 bytes: the process rotates the file once.
        let agent = InstanceLog::open(dir.path(), 600).unwrap();
        let mut followed = agent.subscribe();
        let stop = tokio_util::sync::CancellationToken::new();
        let tailer = tokio::spawn({
            let (agent, stop) = (agent.clone(), stop.clone());
            async move { agent.follow_file(stop).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        // The instance's own process: the same files, its own handle.
        let process = InstanceLog::open(dir.path(), 600).unwrap();
        for i in 0..20 {
            process.write(Stream::Stdout, format!("line {i:02}\n").as_bytes());
        }
        agent.agent_line("from the agent");
        let mut seen = Vec::new();
        while seen.len() < 21 {
            let line = tokio::time::timeout(std::time::Duration::from_secs(5), followed.recv()).await.expect("a line").expect("open");
            seen.push(line.to_string());
        }
        stop.cancel();
        tailer.await.unwrap();
        for i in 0..20 {
            assert!(seen.iter().filter(|l| l.ends_with(&format!("stdout line {i:02}"))).count() == 1, "line {i} once: {seen:#?}");
        }
        assert!(seen.iter().any(|l| l.ends_with("[wasmlet] from the agent")), "{seen:#?}");
        assert!(dir.path().join("current.log.1").exists(), "the process rotated the file");
    }

    #[test]
    fn very_long_lines_are_split() {
        let dir = tempfile::tempdir().unwrap();
        let log = InstanceLog::open(dir.path(), 1 << 20).unwrap();
        log.write(Stream::Stdout, &vec![b'a'; MAX_LINE * 2 + 10]);
        log.flush_partial();
        assert_eq!(log.tail(None).len(), 3);
    }
}

//! The sandbox of one instance: exactly what its manifest grants and nothing
//! of the agent's own — no inherited environment, stdin closed, stdout and
//! stderr into the instance's log, only the granted directories, no sockets.
//! Clocks and randomness are available.

use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, ResourceTable, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};

use super::limits::MemoryLimiter;
use crate::grants::Preopen;
use crate::logs::{InstanceLog, Stream};

/// Store data of a WASI preview 1 core module.
pub struct CoreState {
    pub wasi: WasiP1Ctx,
    pub limiter: MemoryLimiter,
}

/// Store data of a component.
pub struct ComponentState {
    pub ctx: WasiCtx,
    pub table: ResourceTable,
    pub limiter: MemoryLimiter,
}

impl WasiView for ComponentState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

/// The WASI context for one run. Every granted directory is opened now,
/// from its root and without following links ([`GrantedDir::open`]); the
/// error names the grant that could not be.
pub fn wasi_builder(
    program: &str,
    args: &[String],
    env: &[(String, String)],
    dirs: &[Preopen],
    log: &InstanceLog,
) -> anyhow::Result<WasiCtxBuilder> {
    let mut builder = WasiCtxBuilder::new();
    builder.arg(program).args(args).envs(env).stdout(log.sink(Stream::Stdout)).stderr(log.sink(Stream::Stderr));
    // Explicit, although these are wasmtime's defaults too: a workload gets no
    // network unless a later, deliberate grant says otherwise.
    builder.allow_tcp(false).allow_udp(false).allow_ip_name_lookup(false);
    for dir in dirs {
        let perms = if dir.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        let opened = dir.dir.open()?;
        // wasmtime-wasi takes a path: the magic link names the directory just
        // opened, whatever the grant's path leads to by now. Our descriptor is
        // closed once wasmtime holds its own.
        builder.preopened_dir(opened.proc_path(), &dir.guest, perms).map_err(|e| {
            anyhow::anyhow!("{}: cannot hand {} to the guest at {}: {e:#}", dir.dir.label(), dir.dir.path().display(), dir.guest)
        })?;
        drop(opened);
    }
    Ok(builder)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::symlink;
    use std::path::Path;

    use wasmtime::{Engine, Linker, Module, Store};

    use super::*;
    use crate::grants::GrantedDir;

    /// Runs a WASI program that opens `name` in its first preopen and exits
    /// with the errno (0: it could).
    async fn open_in_guest(builder: &mut WasiCtxBuilder, name: &str) -> i32 {
        let engine = Engine::new(&super::super::base_config(1 << 30)).unwrap();
        let wat = format!(
            r#"(module
                (import "wasi_snapshot_preview1" "path_open"
                    (func $open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
                (import "wasi_snapshot_preview1" "proc_exit" (func $exit (param i32)))
                (memory (export "memory") 1)
                (data (i32.const 16) "{name}")
                (func (export "_start")
                    (call $exit (call $open (i32.const 3) (i32.const 0) (i32.const 16) (i32.const {len})
                        (i32.const 0) (i64.const 2) (i64.const 0) (i32.const 0) (i32.const 0)))))"#,
            len = name.len()
        );
        let module = Module::new(&engine, wat::parse_str(&wat).unwrap()).unwrap();
        let mut linker = Linker::<CoreState>::new(&engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut linker, |s| &mut s.wasi).unwrap();
        let state = CoreState { wasi: builder.build_p1(), limiter: MemoryLimiter::new(None, Default::default()) };
        let mut store = Store::new(&engine, state);
        store.set_epoch_deadline(u64::MAX / 2);
        let instance = linker.instantiate_async(&mut store, &module).await.unwrap();
        let start = instance.get_typed_func::<(), ()>(&mut store, "_start").unwrap();
        let error = start.call_async(&mut store, ()).await.unwrap_err();
        error.downcast_ref::<wasmtime_wasi::I32Exit>().expect("the guest exits").0
    }

    /// The grant's path is swapped for a link after the agent opened it and
    /// before wasmtime opens the `/proc/self/fd` path it is handed: the guest
    /// still gets the directory that was opened. At the next start, the swap
    /// fails the start, naming the grant.
    #[tokio::test]
    async fn the_guest_gets_the_directory_that_was_opened_and_a_swap_fails_the_next_start() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(root.path().join("grant")).unwrap();
        std::fs::write(root.path().join("grant/original"), b"o").unwrap();
        std::fs::create_dir_all(root.path().join("elsewhere")).unwrap();
        std::fs::write(root.path().join("elsewhere/elsewhere"), b"e").unwrap();
        let host = root.path().join("grant").display().to_string();
        let dir = GrantedDir::host(2, &host, root.path().to_path_buf(), Path::new("grant")).unwrap();
        let preopen = Preopen { dir, guest: "/g".into(), read_only: true };

        let (first, second) = (preopen.dir.open().unwrap(), preopen.dir.open().unwrap());
        std::fs::rename(root.path().join("grant"), root.path().join("moved")).unwrap();
        symlink("elsewhere", root.path().join("grant")).unwrap();
        for (opened, name, errno) in [(first, "original", 0), (second, "elsewhere", 44)] {
            let mut builder = WasiCtxBuilder::new();
            builder.preopened_dir(opened.proc_path(), "/g", FsPerms::ReadOnly).unwrap();
            drop(opened);
            // 44 is WASI's ENOENT: nothing of the link's target is visible.
            assert_eq!(open_in_guest(&mut builder, name).await, errno, "{name}: the guest sees the directory that was opened");
        }

        let logs = tempfile::tempdir().unwrap();
        let log = InstanceLog::open(logs.path(), 1 << 20).unwrap();
        let err = wasi_builder("probe", &[], &[], std::slice::from_ref(&preopen), &log).err().expect("the next start fails");
        let err = format!("{err:#}");
        assert!(err.starts_with(&format!("spec.dirs[2].hostPath {host}: no longer resolves inside")), "{err}");
        assert!(err.contains("is a symbolic link (to elsewhere)"), "{err}");
    }
}

//! One run of a program: a fresh store with its limits, instantiation, the
//! program's entry point, and a clear account of how it ended.

use std::sync::Arc;
use std::time::Duration;

use wasmtime::{ResourceLimiter, Store, Trap, UpdateDeadline, WasmBacktrace};
use wasmtime_wasi::{I32Exit, ResourceTable};

use super::Runtime;
use super::limits::{CpuTimeLimitExceeded, Fenced, MemoryLimiter};
use super::module::{LoadedModule, Program};
use super::sandbox::{ComponentState, CoreState, wasi_builder};
use crate::executor::{CpuMeter, Exit, ExitReason, Fence, RunSpec, Usage};
use crate::logs::InstanceLog;

impl Runtime {
    /// Runs the program to its end. Dropping the returned future stops the
    /// guest at its next epoch tick.
    pub async fn run(&self, module: &LoadedModule, spec: &RunSpec, log: &InstanceLog, usage: &Usage) -> Exit {
        let mut builder = match wasi_builder(&spec.program, &spec.args, &spec.env, &spec.dirs, log) {
            Ok(b) => b,
            Err(e) => return Exit::start_error(format!("{e:#}")),
        };
        let limiter = MemoryLimiter::new(spec.memory_limit, usage.memory.clone());
        let cpu = usage.cpu.clone();
        match &module.program {
            Program::Proxy(_) => {
                Exit::start_error("this component is an HTTP service (it exports wasi:http/incoming-handler): give it `type: service`")
            }
            Program::Core(pre) => {
                let mut store = Store::new(self.engine(), CoreState { wasi: builder.build_p1(), limiter });
                configure_store(&mut store, |s| &mut s.limiter, cpu.clone(), spec.cpu_time_limit, spec.fence.clone());
                let result = cpu
                    .meter(async {
                        let instance = pre.instantiate_async(&mut store).await?;
                        let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                        start.call_async(&mut store, ()).await
                    })
                    .await;
                let refused = store.data().limiter.refused;
                outcome(result.map(|()| 0), refused, spec.memory_limit)
            }
            Program::Command(pre) => {
                let state = ComponentState { ctx: builder.build(), table: ResourceTable::new(), limiter };
                let mut store = Store::new(self.engine(), state);
                configure_store(&mut store, |s| &mut s.limiter, cpu.clone(), spec.cpu_time_limit, spec.fence.clone());
                let result = cpu
                    .meter(async {
                        let command = pre.instantiate_async(&mut store).await?;
                        command.wasi_cli_run().call_run(&mut store).await
                    })
                    .await;
                let refused = store.data().limiter.refused;
                // `run` returning its error variant is the component's way of exiting non-zero.
                outcome(result.map(|r| if r.is_ok() { 0 } else { 1 }), refused, spec.memory_limit)
            }
        }
    }
}

fn configure_store<T: Send + 'static>(
    store: &mut Store<T>,
    limiter: fn(&mut T) -> &mut MemoryLimiter,
    cpu: Arc<CpuMeter>,
    cpu_time_limit: Option<Duration>,
    fence: Fence,
) {
    store.limiter(move |state| limiter(state) as &mut dyn ResourceLimiter);
    // Every epoch tick: over the CPU limit ends the run, otherwise yield so
    // other guests and the agent get their turn.
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(move |_| {
        if fence.expired() {
            return Err(Fenced.into());
        }
        if let Some(limit) = cpu_time_limit
            && cpu.used() > limit
        {
            return Err(CpuTimeLimitExceeded { limit }.into());
        }
        Ok(UpdateDeadline::Yield(1))
    });
}

/// Turns the end of a run into an [`Exit`].
fn outcome(result: wasmtime::Result<i32>, memory_refused: bool, memory_limit: Option<u64>) -> Exit {
    let memory_note = || {
        format!(
            "memory growth beyond the limit of {} was refused",
            memory_limit.map_or_else(|| "the pool's slot".to_string(), |l| wasmlet_api::Bytes::new(l).human())
        )
    };
    let error = match result {
        Ok(0) => return Exit { code: Some(0), reason: ExitReason::Completed, message: "exited with code 0".into() },
        Ok(code) => return exit_code(code, memory_refused, memory_note),
        Err(e) => e,
    };
    if let Some(exit) = error.downcast_ref::<I32Exit>() {
        return if exit.0 == 0 {
            Exit { code: Some(0), reason: ExitReason::Completed, message: "exited with code 0".into() }
        } else {
            exit_code(exit.0, memory_refused, memory_note)
        };
    }
    if let Some(fenced) = error.downcast_ref::<Fenced>() {
        return Exit { code: None, reason: ExitReason::StoppedOnDisconnect, message: fenced.to_string() };
    }
    if let Some(cpu) = error.downcast_ref::<CpuTimeLimitExceeded>() {
        return Exit { code: None, reason: ExitReason::CpuTimeLimitExceeded, message: format!("stopped: {cpu}") };
    }
    let trap = error.downcast_ref::<Trap>();
    let mut message = match trap {
        Some(trap) => format!("wasm trap: {trap}"),
        None => format!("{error:#}"),
    };
    if let Some(backtrace) = error.downcast_ref::<WasmBacktrace>() {
        let text = backtrace.to_string();
        if !text.trim().is_empty() {
            message = format!("{message}\n{}", text.trim_end());
        }
    }
    if memory_refused {
        return Exit { code: None, reason: ExitReason::MemoryLimitExceeded, message: format!("{}; then {message}", memory_note()) };
    }
    let reason = if trap.is_some() { ExitReason::Trap } else { ExitReason::StartError };
    Exit { code: None, reason, message }
}

fn exit_code(code: i32, memory_refused: bool, memory_note: impl Fn() -> String) -> Exit {
    if memory_refused {
        Exit {
            code: Some(code),
            reason: ExitReason::MemoryLimitExceeded,
            message: format!("{}; then exited with code {code}", memory_note()),
        }
    } else {
        Exit { code: Some(code), reason: ExitReason::Error, message: format!("exited with code {code}") }
    }
}

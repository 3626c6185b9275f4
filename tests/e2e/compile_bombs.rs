//! Compile bombs: modules made to cost the compiler (and so the agent) as
//! much as possible. They are generated here, as an adversary would: very
//! many functions (the 41 MB of 200,000 functions), blocks nested a
//! million deep, one huge function, very many locals; and modules within those
//! limits that still cost too much memory or time to compile.
//!
//! What must hold: each is refused with a reason naming the limit and the
//! value found, or compiled in a child process that is stopped at its memory
//! limit, at its time budget, or when its manifest is removed; the agent's
//! memory stays near where it was; other workloads keep running and starting.

use std::path::Path;
use std::time::Duration;

use wasm_encoder::{BlockType, CodeSection, ExportKind, ExportSection, Function, FunctionSection, TypeSection, ValType};
use wasmlet_api::Phase;
use wasmlet_tests::{Agent, place_file, rss_bytes, sha256, wait_for, workload_manifest};

const WAIT: Duration = Duration::from_secs(120);

/// How far the agent's memory may grow over the bombs: modules are held as
/// bytes while their manifests exist, and freed with them; a compile's working
/// set (gigabytes for these) must never arrive.
const RSS_GROWTH_BOUND: u64 = 96 << 20;

/// A core module exporting `_start` (function 0, empty) and `functions` more, each with
/// `locals` i32 locals and a body written by `body`.
fn module(functions: u32, locals: u32, body: impl Fn(&mut Function)) -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 0], [ValType::I32; 0]);
    let mut declared = FunctionSection::new();
    let mut code = CodeSection::new();
    for i in 0..=functions {
        declared.function(0);
        let mut f = Function::new(if i == 0 || locals == 0 { vec![] } else { vec![(locals, ValType::I32)] });
        if i > 0 {
            body(&mut f);
        }
        f.instructions().end();
        code.function(&f);
    }
    let mut exports = ExportSection::new();
    exports.export("_start", ExportKind::Func, 0);
    let mut module = wasm_encoder::Module::new();
    module.section(&types).section(&declared).section(&exports).section(&code);
    module.finish()
}

/// `n` additions: a body of about `3 * n` bytes that keeps the compiler busy.
fn arithmetic(n: u32) -> impl Fn(&mut Function) {
    move |f| {
        let mut sink = f.instructions();
        sink.i32_const(1);
        for k in 0..n {
            sink.i32_const(k as i32 & 0x3f).i32_add();
        }
        sink.drop();
    }
}

/// Blocks nested `depth` deep.
fn nested(depth: u32) -> impl Fn(&mut Function) {
    move |f| {
        let mut sink = f.instructions();
        for _ in 0..depth {
            sink.block(BlockType::Empty);
        }
        for _ in 0..depth {
            sink.end();
        }
    }
}

/// Writes the module into `dir` and a job manifest running it.
fn place_bomb(dir: &Path, name: &str, bytes: &[u8]) {
    let module = dir.join(format!("{name}.wasm"));
    std::fs::write(&module, bytes).expect("write module");
    let manifest = format!(
        "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: {name}\nspec:\n  type: job\n  restartPolicy: Never\n  module:\n    source: {}\n    digest: {}\n",
        module.display(),
        sha256(bytes)
    );
    place_file(dir, &format!("{name}.yaml"), &manifest);
}

fn manifests_agent(dir: &Path, extra: &[&str]) -> Agent {
    let mut args = vec!["--manifests-dir", dir.to_str().expect("utf-8"), "--manifests-poll-interval", "100ms"];
    args.extend_from_slice(extra);
    Agent::start(&args).expect("agent starts")
}

/// The instance once it failed, with its message.
fn failed(agent: &Agent, name: &str) -> String {
    let instance = wait_for(WAIT, &format!("{name} to fail"), || agent.instance(name).filter(|i| i.status.phase == Phase::Failed));
    assert_eq!(instance.status.reason.as_deref(), Some("InvalidModule"), "{name}: {:?}", instance.status);
    instance.status.message.unwrap_or_default()
}

/// The agent's compiler processes: its children running `compile`, zombies aside.
fn compile_children(agent: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        let Some((_, rest)) = stat.rsplit_once(") ") else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let (state, ppid) = (fields.first().copied(), fields.get(1).and_then(|p| p.parse::<u32>().ok()));
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let compiles = cmdline.split(|b| *b == 0).any(|arg| arg == b"compile");
        if ppid == Some(agent) && state != Some("Z") && compiles {
            out.push(pid);
        }
    }
    out
}

fn wait_for_rss_near(agent: &Agent, baseline: u64) -> u64 {
    // Freed module bytes leave the process at once; give the allocator a moment all the same.
    let mut last = 0;
    let settled = wait_for(WAIT, "the agent's memory to return near its baseline", || {
        last = rss_bytes(agent.pid()).expect("rss");
        (last < baseline + RSS_GROWTH_BOUND).then_some(last)
    });
    eprintln!("agent RSS: baseline {} MiB, after the bombs {} MiB", baseline >> 20, settled >> 20);
    settled
}

#[test]
fn compile_bombs_are_refused_by_name_before_compiling() {
    let dir = tempfile::tempdir().expect("tempdir");
    place_file(dir.path(), "sensor.yaml", &workload_manifest("sensor", "sensor", "daemon", "  args: [\"--interval\", \"100\"]\n"));
    let agent = manifests_agent(dir.path(), &[]);
    agent.wait_phase("sensor-0", Phase::Running, WAIT);
    let node: wasmlet_api::Node = agent.get_json("/status").expect("status");
    let runtime = node.status.runtime.expect("status.runtime");
    assert_eq!(runtime.compiler, "process", "{runtime:?}");
    let baseline = rss_bytes(agent.pid()).expect("rss");

    // The bomb: 200,000 functions in 41 MB.
    place_bomb(dir.path(), "functions", &module(200_000, 0, arithmetic(68)));
    // A million nested blocks (3 MB in one function), and 20,000 (60 kB, within the function size).
    place_bomb(dir.path(), "nesting", &module(1, 0, nested(1_000_000)));
    place_bomb(dir.path(), "nesting-small", &module(1, 0, nested(20_000)));
    place_bomb(dir.path(), "huge", &module(1, 0, arithmetic(3_000_000)));
    place_bomb(dir.path(), "locals", &module(1, 40_000, |_| {}));

    let message = failed(&agent, "functions-0");
    assert!(message.contains("the module has 200001 functions") && message.contains("--max-module-functions 100000"), "{message}");
    let message = failed(&agent, "nesting-0");
    assert!(message.contains("--max-function-size 2Mi"), "a million blocks are too big a function before they are too deep: {message}");
    let message = failed(&agent, "nesting-small-0");
    assert!(message.contains("function 1 nests blocks 20000 deep") && message.contains("--max-function-nesting 10000"), "{message}");
    let message = failed(&agent, "huge-0");
    assert!(message.contains("function 1 is") && message.contains("--max-function-size 2Mi"), "{message}");
    let message = failed(&agent, "locals-0");
    assert!(message.contains("function 1 declares 40000 locals") && message.contains("--max-function-locals 10000"), "{message}");
    let loads = agent.metric("wasmlet_module_loads{result=\"compiled\"}");
    assert_eq!(loads, Some(1.0), "only the sensor was compiled");

    for name in ["functions", "nesting", "nesting-small", "huge", "locals"] {
        std::fs::remove_file(dir.path().join(format!("{name}.yaml"))).expect("remove");
    }
    wait_for(WAIT, "the bombs' instances to be gone", || agent.instance("functions-0").is_none().then_some(()));
    wait_for_rss_near(&agent, baseline);
    let sensor = agent.instance("sensor-0").expect("sensor");
    assert_eq!((sensor.status.phase, sensor.status.restarts), (Phase::Running, 0));
}

#[test]
fn a_compile_past_its_memory_limit_or_time_budget_is_stopped() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Within every static limit, yet gigabytes and many seconds of Cranelift's work.
    let costly = module(90_000, 0, arithmetic(60));
    place_bomb(dir.path(), "costly", &costly);
    let agent = manifests_agent(dir.path(), &["--compile-memory-limit", "64Mi"]);
    let message = failed(&agent, "costly-0");
    assert!(message.contains("compiling needed more memory than --compile-memory-limit (64Mi) allows"), "{message}");
    assert!(compile_children(agent.pid()).is_empty());
    drop(agent);

    let agent = manifests_agent(dir.path(), &["--compile-timeout", "500ms"]);
    let message = failed(&agent, "costly-0");
    assert!(message.contains("compiling took longer than --compile-timeout (500ms)"), "{message}");
    wait_for(WAIT, "the stopped compiler to be gone", || compile_children(agent.pid()).is_empty().then_some(()));
    // Nothing half-written was cached: the next agent on this data dir would compile afresh.
    let cached: Vec<_> = std::fs::read_dir(agent.data_dir.path().join("cache/compiled")).into_iter().flatten().flatten().collect();
    assert!(cached.is_empty(), "{cached:?}");
}

#[test]
fn removing_the_manifest_stops_its_compile_while_other_workloads_run_and_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    place_file(dir.path(), "sensor.yaml", &workload_manifest("sensor", "sensor", "daemon", "  args: [\"--interval\", \"100\"]\n"));
    let agent = manifests_agent(dir.path(), &[]);
    agent.wait_phase("sensor-0", Phase::Running, WAIT);
    let baseline = rss_bytes(agent.pid()).expect("rss");

    place_bomb(dir.path(), "costly", &module(90_000, 0, arithmetic(60)));
    let compiler = wait_for(WAIT, "the agent to compile in a child process", || compile_children(agent.pid()).first().copied());
    // Meanwhile another workload is compiled and runs to its end, and the sensor runs on.
    place_file(dir.path(), "hello.yaml", &workload_manifest("hello", "hello", "job", "  restartPolicy: Never\n"));
    agent.wait_phase("hello-0", Phase::Succeeded, WAIT);
    assert!(compile_children(agent.pid()).contains(&compiler), "the costly compile is still under way");
    assert_eq!(agent.instance("costly-0").expect("costly").status.phase, Phase::Starting);

    std::fs::remove_file(dir.path().join("costly.yaml")).expect("remove");
    wait_for(WAIT, "the compiler process to be stopped", || {
        (!Path::new(&format!("/proc/{compiler}")).exists() || compile_children(agent.pid()).is_empty()).then_some(())
    });
    wait_for(WAIT, "the instance to be gone", || agent.instance("costly-0").is_none().then_some(()));
    assert_eq!(agent.metric("wasmlet_module_loads{result=\"compiled\"}"), Some(2.0), "sensor and hello; the costly one never finished");
    wait_for_rss_near(&agent, baseline);
    let sensor = agent.instance("sensor-0").expect("sensor");
    assert_eq!((sensor.status.phase, sensor.status.restarts), (Phase::Running, 0));
}

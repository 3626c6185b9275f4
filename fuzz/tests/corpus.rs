//! Replays every input of the checked-in fuzzing corpus (`fuzz/corpus/<target>/`)
//! through its target's properties: what the fuzzers once found stays fixed.

use std::path::PathBuf;

fn corpus_dir(target: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target)
}

#[test]
fn every_corpus_input_holds_its_properties() {
    let mut replayed = 0;
    for (target, check) in wasmlet_fuzz_targets::TARGETS {
        let dir = corpus_dir(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
        let mut inputs = 0;
        for entry in entries {
            let path = entry.expect("a corpus entry").path();
            let data = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            if let Err(panic) = std::panic::catch_unwind(|| check(&data)) {
                let why = panic.downcast_ref::<String>().cloned().or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()));
                panic!("{target}: {} fails: {}", path.display(), why.unwrap_or_default());
            }
            inputs += 1;
        }
        assert!(inputs > 0, "the corpus of `{target}` is empty: {}", dir.display());
        replayed += inputs;
    }
    eprintln!("replayed {replayed} corpus inputs");
}

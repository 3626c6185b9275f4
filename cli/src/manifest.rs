//! Workload manifests as `apply` and `delete` read them: files, directories
//! (their `*.yaml`, `*.yml`, `*.json`, in name order) or `-` for stdin; YAML
//! files may hold several documents. Everything is decoded and validated, and
//! local module files are checked against their digests, before anything is
//! sent: a bad manifest changes nothing.

use std::io::Read as _;
use std::path::{Path, PathBuf};

use serde::Deserialize as _;
use sha2::Digest as _;
use wasmlet_api::{WORKLOAD_KIND, Workload};

use crate::{Error, Result};

/// One decoded document.
#[derive(Debug, Clone)]
pub struct Document {
    /// Where it came from, for messages: `FILE: document N`.
    pub origin: String,
    pub workload: Workload,
    pub module: ModuleFile,
}

/// Where the bytes of a workload's module are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleFile {
    /// An `https://` URL: the nodes fetch it, nothing to upload.
    Remote,
    /// A local file whose sha256 matches `spec.module.digest`.
    Local { path: PathBuf, size: u64 },
    /// No such file here: fine if the master already has the digest.
    Missing { path: PathBuf },
}

/// Reads every manifest; all problems are gathered, one line each.
pub fn read(sources: &[String], check_modules: bool) -> Result<Vec<Document>> {
    let mut problems = Vec::new();
    let mut documents = Vec::new();
    for source in sources {
        for (name, text, base) in inputs(source, &mut problems) {
            parse_file(&name, &text, &base, check_modules, &mut documents, &mut problems);
        }
    }
    let mut seen = std::collections::BTreeMap::new();
    for doc in &documents {
        if let Some(first) = seen.insert(doc.workload.metadata.name.clone(), doc.origin.clone()) {
            problems.push(format!("{}: metadata.name: workload `{}` is also defined in {first}", doc.origin, doc.workload.metadata.name));
        }
    }
    if documents.is_empty() && problems.is_empty() {
        problems.push(format!("no workloads found in {}", sources.join(", ")));
    }
    if problems.is_empty() { Ok(documents) } else { Err(Error::Manifest(problems)) }
}

/// The files behind one `-f` argument: (name for messages, text, directory relative paths start from).
fn inputs(source: &str, problems: &mut Vec<String>) -> Vec<(String, String, PathBuf)> {
    let cwd = PathBuf::from(".");
    if source == "-" {
        let mut text = String::new();
        return match std::io::stdin().read_to_string(&mut text) {
            Ok(_) => vec![("<stdin>".into(), text, cwd)],
            Err(e) => {
                problems.push(format!("<stdin>: cannot read: {e}"));
                Vec::new()
            }
        };
    }
    let path = Path::new(source);
    let files = if path.is_dir() {
        match std::fs::read_dir(path) {
            Ok(entries) => {
                let mut files: Vec<PathBuf> = entries
                    .filter_map(|e| e.ok().map(|e| e.path()))
                    .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "yaml" || x == "yml" || x == "json"))
                    .collect();
                files.sort();
                files
            }
            Err(e) => {
                problems.push(format!("{source}: cannot list the directory: {e}"));
                return Vec::new();
            }
        }
    } else {
        vec![path.to_path_buf()]
    };
    let mut out = Vec::new();
    for file in files {
        match std::fs::read_to_string(&file) {
            Ok(text) => {
                let base = file.parent().map(Path::to_path_buf).filter(|p| !p.as_os_str().is_empty()).unwrap_or_else(|| cwd.clone());
                out.push((file.display().to_string(), text, base));
            }
            Err(e) => problems.push(format!("{}: cannot read: {e}", file.display())),
        }
    }
    out
}

fn parse_file(name: &str, text: &str, base: &Path, check_modules: bool, documents: &mut Vec<Document>, problems: &mut Vec<String>) {
    let is_json = name.ends_with(".json") || text.trim_start().starts_with('{');
    if is_json {
        let origin = format!("{name}: document 1");
        match wasmlet_api::from_json::<serde_yaml::Value>(text.as_bytes()) {
            Ok(value) => accept(origin, value, base, check_modules, documents, problems),
            Err(e) => problems.push(format!("{origin}: {e}")),
        }
        return;
    }
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let origin = format!("{name}: document {}", i + 1);
        match serde_yaml::Value::deserialize(doc) {
            Ok(serde_yaml::Value::Null) => {}
            Ok(value) => accept(origin, value, base, check_modules, documents, problems),
            Err(e) => {
                // After a syntax error the rest of the stream cannot be trusted.
                problems.push(format!("{origin}: {e}"));
                return;
            }
        }
    }
}

/// Decodes one document into a Workload, validates it and locates its module.
fn accept(
    origin: String,
    value: serde_yaml::Value,
    base: &Path,
    check_modules: bool,
    documents: &mut Vec<Document>,
    problems: &mut Vec<String>,
) {
    let kind = value.get("kind").and_then(|k| k.as_str()).unwrap_or(WORKLOAD_KIND);
    if kind != WORKLOAD_KIND {
        problems.push(format!("{origin}: kind: `{kind}` cannot be applied; only {WORKLOAD_KIND} objects can"));
        return;
    }
    let workload: Workload = match wasmlet_api::decode::strict(value) {
        Ok(w) => w,
        Err(e) => {
            problems.push(format!("{origin}: {e}"));
            return;
        }
    };
    if let Err(e) = workload.validate() {
        problems.extend(e.errors.iter().map(|f| format!("{origin}: {f}")));
        return;
    }
    let module = if check_modules {
        match locate_module(&workload, base) {
            Ok(m) => m,
            Err(problem) => {
                problems.push(format!("{origin}: spec.module.source: {problem}"));
                return;
            }
        }
    } else {
        ModuleFile::Remote
    };
    documents.push(Document { origin, workload, module });
}

fn locate_module(workload: &Workload, base: &Path) -> std::result::Result<ModuleFile, String> {
    let module = &workload.spec.module;
    if module.is_remote() {
        return Ok(ModuleFile::Remote);
    }
    let given = Path::new(module.source.strip_prefix("file://").unwrap_or(&module.source));
    let path = if given.is_absolute() { given.to_path_buf() } else { base.join(given) };
    let mut file = match std::fs::File::open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(ModuleFile::Missing { path }),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut hasher = sha2::Sha256::new();
    let size = std::io::copy(&mut file, &mut hasher).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let actual = format!("sha256:{:x}", hasher.finalize());
    if actual != module.digest {
        return Err(format!(
            "{} has digest {actual}, but spec.module.digest says {}: rebuild the module or correct the digest",
            path.display(),
            module.digest
        ));
    }
    Ok(ModuleFile::Local { path, size })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: wasmlet.io/v1\nkind: Workload\nmetadata:\n  name: NAME\nspec:\n  type: daemon\n  module:\n    source: https://example.invalid/m.wasm\n    digest: sha256:2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824\n";

    fn write(dir: &Path, name: &str, text: &str) -> String {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    }

    #[test]
    fn several_documents_and_directories() {
        let dir = tempfile::tempdir().unwrap();
        let text = format!("{}---\n{}---\n", GOOD.replace("NAME", "a"), GOOD.replace("NAME", "b"));
        write(dir.path(), "ab.yaml", &text);
        write(dir.path(), "ignored.txt", "not yaml");
        let docs = read(&[dir.path().display().to_string()], true).unwrap();
        let names: Vec<_> = docs.iter().map(|d| d.workload.metadata.name.as_str()).collect();
        assert_eq!(names, ["a", "b"]);
        assert!(docs[1].origin.ends_with("ab.yaml: document 2"), "{}", docs[1].origin);
        assert_eq!(docs[0].module, ModuleFile::Remote);
    }

    #[test]
    fn errors_name_file_document_and_field() {
        let dir = tempfile::tempdir().unwrap();
        let bad = GOOD.replace("NAME", "b").replace("  type: daemon\n", "  type: daemon\n  replicas: lots\n");
        let file = write(dir.path(), "w.yaml", &format!("{}---\n{bad}", GOOD.replace("NAME", "a")));
        let err = read(std::slice::from_ref(&file), true).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{file}: document 2: spec.replicas: ")), "{err}");

        // Strict, in YAML and JSON alike: an unknown field is named with its path.
        let typo = write(dir.path(), "t.yaml", &GOOD.replace("NAME", "t").replace("    digest:", "    digestt: x\n    digest:"));
        let err = read(std::slice::from_ref(&typo), true).unwrap_err().to_string();
        assert_eq!(err, format!("{typo}: document 1: spec.module: unknown field `digestt`"));
        let json = write(dir.path(), "t.json", r#"{"metadata": {"name": "t", "colour": "red"}, "spec": {"type": "daemon", "module": {}}}"#);
        let err = read(std::slice::from_ref(&json), true).unwrap_err().to_string();
        assert_eq!(err, format!("{json}: document 1: metadata: unknown field `colour`"));

        let invalid = write(dir.path(), "v.yaml", &GOOD.replace("NAME", "Bad_Name"));
        let err = read(std::slice::from_ref(&invalid), true).unwrap_err().to_string();
        assert!(err.starts_with(&format!("{invalid}: document 1: metadata.name: ")), "{err}");
    }

    #[test]
    fn local_modules_must_match_their_digest() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.wasm"), b"hello").unwrap();
        let manifest = GOOD.replace("NAME", "a").replace("https://example.invalid/m.wasm", "m.wasm");
        let file = write(dir.path(), "w.yaml", &manifest);
        let docs = read(std::slice::from_ref(&file), true).unwrap();
        assert_eq!(docs[0].module, ModuleFile::Local { path: dir.path().join("m.wasm"), size: 5 });

        std::fs::write(dir.path().join("m.wasm"), b"changed").unwrap();
        let err = read(&[file], true).unwrap_err().to_string();
        assert!(err.contains("spec.module.source") && err.contains("but spec.module.digest says"), "{err}");
    }
}

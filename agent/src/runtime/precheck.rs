//! What a module may ask of the compiler, measured before compiling.
//!
//! Cranelift's time and memory grow with the number of functions, the size of
//! each, the locals it declares and, worse than linearly, how deeply its
//! blocks nest. One pass over the module's bytes (linear, without compiling
//! anything) measures each against the agent's limits, so a compile bomb is
//! refused in milliseconds, naming the limit and the value found. Nested core
//! modules of a component count together: they are compiled together.

use wasmparser::{Operator, Parser, Payload};

/// The largest module the agent compiles and what its code may contain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompileLimits {
    /// Bytes of the module or component.
    pub module_size: u64,
    /// Function bodies, over all core modules of a component.
    pub functions: u64,
    /// Bytes of one function body.
    pub function_size: u64,
    /// Blocks, loops, ifs and try blocks open at once in one function.
    pub nesting: u64,
    /// Locals one function declares (parameters not included).
    pub locals: u64,
}

/// Refuses `bytes` if compiling them would ask more than `limits` allows.
/// The message names what was found, the limit and the flag that sets it.
/// Malformed input is left to the compiler, which names the problem better.
pub fn check(bytes: &[u8], limits: &CompileLimits) -> Result<(), String> {
    let refuse = |found: String, flag: &str, limit: String| {
        Err(format!("{found}, more than this agent compiles ({flag} {limit}); make the module smaller or raise the limit"))
    };
    let bytes_of = |n: u64| wasmlet_api::Bytes::new(n).human();
    if bytes.len() as u64 > limits.module_size {
        let size = bytes.len() as u64;
        return refuse(format!("the module is {} ({size} bytes)", bytes_of(size)), "--max-module-size", bytes_of(limits.module_size));
    }
    let mut functions = 0u64;
    for payload in Parser::new(0).parse_all(bytes) {
        let Ok(payload) = payload else { return Ok(()) };
        match payload {
            Payload::CodeSectionStart { count, .. } if functions + u64::from(count) > limits.functions => {
                let total = functions + u64::from(count);
                return refuse(format!("the module has {total} functions"), "--max-module-functions", limits.functions.to_string());
            }
            Payload::CodeSectionEntry(body) => {
                let index = functions;
                functions += 1;
                let size = body.range().len() as u64;
                if size > limits.function_size {
                    let found = format!("function {index} is {} ({size} bytes) long", bytes_of(size));
                    return refuse(found, "--max-function-size", bytes_of(limits.function_size));
                }
                let Ok(locals) = body.get_locals_reader() else { return Ok(()) };
                let mut declared = 0u64;
                for group in locals {
                    let Ok((count, _)) = group else { return Ok(()) };
                    declared += u64::from(count);
                }
                if declared > limits.locals {
                    return refuse(
                        format!("function {index} declares {declared} locals"),
                        "--max-function-locals",
                        limits.locals.to_string(),
                    );
                }
                let Ok(mut operators) = body.get_operators_reader() else { return Ok(()) };
                let (mut depth, mut deepest) = (0u64, 0u64);
                while !operators.eof() {
                    let Ok(op) = operators.read() else { return Ok(()) };
                    match op {
                        Operator::Block { .. }
                        | Operator::Loop { .. }
                        | Operator::If { .. }
                        | Operator::TryTable { .. }
                        | Operator::Try { .. } => {
                            depth += 1;
                            deepest = deepest.max(depth);
                        }
                        Operator::End => depth = depth.saturating_sub(1),
                        _ => {}
                    }
                }
                if deepest > limits.nesting {
                    let found = format!("function {index} nests blocks {deepest} deep");
                    return refuse(found, "--max-function-nesting", limits.nesting.to_string());
                }
            }
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: CompileLimits = CompileLimits { module_size: 1 << 20, functions: 10, function_size: 1000, nesting: 5, locals: 20 };

    fn module(text: &str) -> Vec<u8> {
        wat::parse_str(text).unwrap()
    }

    #[test]
    fn ordinary_modules_pass() {
        let wasm = module("(module (func (local i32 i64) (block (loop (br 1)))) (func))");
        check(&wasm, &LIMITS).unwrap();
        check(b"not wasm at all", &LIMITS).unwrap();
    }

    #[test]
    fn each_limit_is_named_with_the_value_found() {
        let many = format!("(module {})", "(func)".repeat(11));
        let err = check(&module(&many), &LIMITS).unwrap_err();
        assert!(err.contains("the module has 11 functions") && err.contains("--max-module-functions 10"), "{err}");

        let deep = format!("(module (func {} {}))", "(block ".repeat(6), ")".repeat(6));
        let err = check(&module(&deep), &LIMITS).unwrap_err();
        assert!(err.contains("function 0 nests blocks 6 deep") && err.contains("--max-function-nesting 5"), "{err}");
        let shallow = format!("(module (func {}))", "(block)".repeat(50));
        check(&module(&shallow), &LIMITS).unwrap();

        let locals = format!("(module (func {}))", "(local i32)".repeat(21));
        let err = check(&module(&locals), &LIMITS).unwrap_err();
        assert!(err.contains("function 0 declares 21 locals") && err.contains("--max-function-locals 20"), "{err}");

        let big = format!("(module (func {}))", "(drop (i32.const 0))".repeat(400));
        let err = check(&module(&big), &LIMITS).unwrap_err();
        assert!(err.contains("function 0 is") && err.contains("bytes) long") && err.contains("--max-function-size 1000"), "{err}");

        let limits = CompileLimits { module_size: 8, ..LIMITS };
        let err = check(&module("(module (func))"), &limits).unwrap_err();
        assert!(err.contains("--max-module-size 8"), "{err}");
    }

    #[test]
    fn core_modules_inside_a_component_count_together() {
        let inner = "(core module (func) (func) (func) (func) (func) (func))";
        let component = format!("(component {inner} {inner})");
        let err = check(&module(&component), &LIMITS).unwrap_err();
        assert!(err.contains("the module has 12 functions"), "{err}");
    }
}

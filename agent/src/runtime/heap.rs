//! Handing memory the allocator keeps back to the operating system.
//!
//! glibc's malloc keeps freed memory in its arenas for reuse; after a compile
//! in the agent's own process (the fallback of [`super::compiler`]) that can be
//! a gigabyte of Cranelift's working set, held for good. `malloc_trim(0)`
//! releases what is free. The one call that needs `unsafe` in the agent lives
//! here, alone.

/// Returns the allocator's free memory to the OS (glibc only; a no-op elsewhere).
#[allow(unsafe_code)]
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointers and only walks glibc's own arenas
    // under their locks; it is safe to call at any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

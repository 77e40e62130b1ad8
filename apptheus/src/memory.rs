//! Returning freed heap memory to the system.

/// Asks the allocator to return free heap pages to the kernel. After start-up
/// (parsing the kernel's BTF peaks at tens of MiB) glibc would otherwise
/// keep them mapped for the life of the daemon.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator has marked
    // free; it takes no pointers and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

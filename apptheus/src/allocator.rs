//! The allocator (glibc's malloc) tuned to give freed heap memory back to
//! the system: `mallopt` at start-up, `malloc_trim` after large frees.

/// Asks the allocator to return free heap pages to the kernel. After start-up
/// (parsing the kernel's BTF peaks at tens of MiB) glibc would otherwise
/// keep them mapped for the life of the daemon.
pub(crate) fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases memory the allocator has marked
    // free; it takes no pointers and is safe to call at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Keeps the allocator from holding on to what the agent frees: at most two
/// arenas (the tokio workers would otherwise each get one, and the
/// snapshot and a scrape's output, tens of MiB with 10,000 containers,
/// land in whichever ran them), and blocks of 256 KiB and more always
/// mapped apart and given back when freed (glibc otherwise raises that
/// threshold to the largest block freed, and keeps the next ones).
pub(crate) fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes the allocator's parameters; called at
    // start-up, before the runtime's threads allocate.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
    }
}

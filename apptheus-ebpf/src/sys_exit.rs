//! sys_exit (file I/O collector): bytes that read-like and write-like
//! syscalls of a container's tasks moved to or from regular files, page
//! cache hits included (block I/O statistics see only what reaches a disk).
//! sys_exit fires for every syscall of every task: the cheapest tests come
//! first.
use apptheus_common::{IoDirection, Offsets, S_IFMT, S_IFREG, Stat, x86_64_io_syscall};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::raw_tracepoint,
    programs::RawTracePointContext,
};

use crate::{
    kernel::{atomic_add, bump, config, container_of, read_at},
    maps::CONTAINERS,
};

/// TP_PROTO(struct pt_regs *regs, long ret)
#[raw_tracepoint(tracepoint = "sys_exit")]
pub fn apptheus_fsio(ctx: RawTracePointContext) -> i32 {
    if try_sys_exit(&ctx).is_err() {
        bump(Stat::FsioErrors);
    }
    0
}

fn try_sys_exit(ctx: &RawTracePointContext) -> Result<(), i64> {
    let ret: i64 = ctx.arg(1);
    if ret <= 0 {
        return Ok(());
    }
    let off = config().offsets;
    let regs: *const u8 = ctx.arg(0);
    let nr: u64 = read_at(regs, off.regs_orig_ax)?;
    let Some(dir) = x86_64_io_syscall(nr) else {
        return Ok(());
    };
    let tid = bpf_get_current_pid_tgid() as u32;
    let Some(cid) = container_of(tid) else {
        return Ok(());
    };
    // Every counted syscall takes the descriptor first.
    let fd: u64 = read_at(regs, off.regs_di)?;
    if !is_regular_file(fd, &off)? {
        return Ok(());
    }
    let Some(st) = CONTAINERS.get_ptr_mut(&cid) else {
        return Ok(());
    };
    // SAFETY: st points into a live map value.
    unsafe {
        match dir {
            IoDirection::Read => atomic_add(&raw mut (*st).fs_read_bytes, ret as u64),
            IoDirection::Write => atomic_add(&raw mut (*st).fs_write_bytes, ret as u64),
        }
    }
    Ok(())
}

/// current->files->fdt->fd[fd]->f_inode->i_mode is a regular file's. (A
/// descriptor closed by another thread meanwhile is not one.)
fn is_regular_file(fd: u64, off: &Offsets) -> Result<bool, i64> {
    // SAFETY: a helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let files: *const u8 = read_at(task, off.task_files)?;
    let fdt: *const u8 = read_at(files, off.files_fdt)?;
    let max_fds: u32 = read_at(fdt, off.fdt_max_fds)?;
    if fd >= u64::from(max_fds) {
        return Ok(false);
    }
    let fds: *const u8 = read_at(fdt, off.fdt_fd)?;
    // fd < max_fds, which the kernel keeps far below 2^29.
    let file: *const u8 = read_at(fds, (fd as u32).wrapping_mul(8))?;
    if file.is_null() {
        // Closed by another thread meanwhile.
        return Ok(false);
    }
    let inode: *const u8 = read_at(file, off.file_inode)?;
    let mode: u16 = read_at(inode, off.inode_mode)?;
    Ok(mode & S_IFMT == S_IFREG)
}

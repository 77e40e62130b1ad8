//! sched_process_exit: a container's task is gone; the last one ends the
//! container.
use apptheus_common::{Event, EventKind, Stat};
use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_get_current_task},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    kernel::{atomic_add, boot_ns, bump, container_of, emit, offset, read_at, unattribute},
    maps::{CONTAINERS, WATCHED},
};

/// TP_PROTO(struct task_struct *p) (6.16+ adds `bool group_dead`, unused)
#[btf_tracepoint(function = "sched_process_exit")]
pub fn apptheus_exit(_ctx: BtfTracePointContext) -> i32 {
    try_exit();
    0
}

fn try_exit() {
    let pid_tgid = bpf_get_current_pid_tgid();
    let tid = pid_tgid as u32;
    let tgid = (pid_tgid >> 32) as u32;
    let Some(cid) = container_of(tid) else {
        return;
    };
    unattribute(tid);
    // A process user space watches (one a runtime moved into a cgroup it
    // will remove once the process is gone): report its exit first, so
    // that cgroup is read before it goes.
    if tid == tgid && WATCHED.remove(&tgid).is_ok() {
        emit(&Event {
            kind: EventKind::WatchedExit as u32,
            tgid,
            container: cid,
            boot_ns: boot_ns(),
            ..Event::default()
        });
    }
    let Some(st) = CONTAINERS.get_ptr_mut(&cid) else {
        return;
    };
    // What the task used, banked before the count drops: once user space
    // sees the last task gone, the totals are complete.
    let (runtime, read, write) = used();
    // SAFETY: st points into a live map value.
    let left = unsafe {
        atomic_add(&raw mut (*st).exited_runtime_ns, runtime);
        atomic_add(&raw mut (*st).exited_read_bytes, read);
        atomic_add(&raw mut (*st).exited_write_bytes, write);
        if tid == tgid {
            atomic_add(&raw mut (*st).process_exits, 1);
        }
        atomic_add(&raw mut (*st).live_tasks, u64::MAX);
        core::ptr::read_volatile(&raw const (*st).live_tasks)
    };
    // Two CPUs retiring the last two tasks at once may both read 0 and both
    // report the end; user space takes the first. None can miss it: the last
    // decrement is always followed by a read of 0.
    if left == 0 {
        // SAFETY: as above; a plain store of a flag read by user space.
        let (uid, gid) = unsafe {
            (*st).exited = 1;
            ((*st).uid, (*st).gid)
        };
        emit(&Event {
            kind: EventKind::ContainerExited as u32,
            tgid,
            container: cid,
            boot_ns: boot_ns(),
            uid,
            gid,
            ..Event::default()
        });
    }
}

/// The exiting (current) task's CPU time in nanoseconds and its storage
/// reads and writes in bytes; 0 for what this kernel does not account.
/// A field that cannot be read counts as 0 and as an error of the program
/// (what the task used is then missing from its container's totals).
fn used() -> (u64, u64, u64) {
    // SAFETY: a helper without arguments; the pointer is only read through
    // bpf_probe_read_kernel.
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let mut failed = false;
    let mut field = |off: u32| -> u64 {
        if off == 0 {
            return 0;
        }
        read_at::<u64>(task, off).unwrap_or_else(|_| {
            failed = true;
            0
        })
    };
    let out = (
        field(offset!(task_runtime)),
        field(offset!(task_read_bytes)),
        field(offset!(task_write_bytes)),
    );
    if failed {
        bump(Stat::ExitErrors);
    }
    out
}

//! sched_process_exit: a container's task is gone; the last one ends the
//! container.
use apptheus_common::{Event, EventKind, Stat};
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    kernel::{atomic_add, boot_ns, container_of, emit, task_use, unattribute},
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
    let (runtime, read, write) = task_use(Stat::ExitErrors);
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

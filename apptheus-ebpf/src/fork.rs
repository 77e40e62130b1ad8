//! sched_process_fork: every task created by a container's task belongs to
//! the same container, before it first runs (the tracepoint fires before the
//! child is woken).
use apptheus_common::Stat;
use aya_ebpf::{
    helpers::bpf_get_current_pid_tgid, macros::btf_tracepoint, programs::BtfTracePointContext,
};

use crate::{
    kernel::{
        atomic_add, attribute, bump, config, container_of, read_at, runq_slot_of, unattribute,
    },
    maps::CONTAINERS,
};

/// TP_PROTO(struct task_struct *parent, struct task_struct *child)
#[btf_tracepoint(function = "sched_process_fork")]
pub fn apptheus_fork(ctx: BtfTracePointContext) -> i32 {
    if try_fork(&ctx).is_err() {
        bump(Stat::ForkErrors);
    }
    0
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let parent_tid = bpf_get_current_pid_tgid() as u32;
    let Some(cid) = container_of(parent_tid) else {
        return Ok(());
    };
    // Its container let go by user space (a helper run, a run refused):
    // the parent is in none any more, and neither is the child.
    let Some(st) = CONTAINERS.get_ptr_mut(&cid) else {
        unattribute(parent_tid);
        return Ok(());
    };
    let off = config().offsets;
    let child: *const u8 = ctx.arg(1);
    let child_pid: i32 = read_at(child, off.task_pid)?;
    let child_tgid: i32 = read_at(child, off.task_tgid)?;
    let child_pid = child_pid as u32;

    // A new task has waited for nothing yet (the scheduler zeroes its
    // sched_info at fork).
    if attribute(child_pid, cid, 0, runq_slot_of(parent_tid)).is_err() {
        bump(Stat::TasksMapFull);
        return Ok(());
    }
    // SAFETY: st points into a live map value.
    unsafe {
        atomic_add(&raw mut (*st).live_tasks, 1);
        if child_pid == child_tgid as u32 {
            atomic_add(&raw mut (*st).forks, 1);
        } else {
            atomic_add(&raw mut (*st).threads_created, 1);
        }
    }
    Ok(())
}

//! sched_wakeup and sched_wakeup_new (run-queue latency collector): a task
//! of a container becomes runnable; remember when, in its `TASKS` entry,
//! until it runs.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{config, read_at},
    maps::TASKS,
};

/// TP_PROTO(struct task_struct *p)
#[btf_tracepoint(function = "sched_wakeup")]
pub fn apptheus_wake(ctx: BtfTracePointContext) -> i32 {
    let _ = try_wakeup(&ctx);
    0
}

/// TP_PROTO(struct task_struct *p): a new task, woken for the first time.
#[btf_tracepoint(function = "sched_wakeup_new")]
pub fn apptheus_waken(ctx: BtfTracePointContext) -> i32 {
    let _ = try_wakeup(&ctx);
    0
}

fn try_wakeup(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let task: *const u8 = ctx.arg(0);
    let pid: i32 = read_at(task, config().offsets.task_pid)?;
    let Some(entry) = TASKS.get_ptr_mut(&(pid as u32)) else {
        return Ok(());
    };
    // SAFETY: a helper without arguments or side effects; entry points
    // into a live map value, and an aligned 8-byte store is atomic.
    unsafe { (*entry).runq_since = bpf_ktime_get_ns() };
    Ok(())
}

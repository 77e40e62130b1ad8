//! sched_wakeup and sched_wakeup_new (run-queue latency collector): a task
//! of a container becomes runnable; remember when, until it runs.
use aya_ebpf::{helpers::bpf_ktime_get_ns, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{config, read_at},
    maps::{RUNQ_START, TASKS},
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
    let tid = pid as u32;
    // SAFETY: only the presence of the entry is used.
    if unsafe { TASKS.get(&tid) }.is_none() {
        return Ok(());
    }
    // SAFETY: a helper without arguments or side effects.
    let now = unsafe { bpf_ktime_get_ns() };
    // A full map only loses this observation.
    let _ = RUNQ_START.insert(&tid, &now, 0);
    Ok(())
}

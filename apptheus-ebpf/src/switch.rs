//! sched_switch (run-queue latency collector): a task of a container that
//! waited on the run queue starts running; its wait goes into the
//! container's histogram. A task preempted while runnable starts waiting.
use apptheus_common::{RunqHistogram, Stat, runq_slot};
use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_ktime_get_ns},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};

use crate::{
    kernel::{bump, config, read_at},
    maps::{RUNQ, TASKS},
};

/// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next)
/// (5.18+ adds `unsigned int prev_state`, unused: `preempt` tells what we
/// need on every kernel).
#[btf_tracepoint(function = "sched_switch")]
pub fn apptheus_switch(ctx: BtfTracePointContext) -> i32 {
    let _ = try_switch(&ctx);
    0
}

/// CLOCK_MONOTONIC in nanoseconds, read only when a container's task is
/// involved (most switches on a node are not theirs).
#[inline(always)]
fn now() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { bpf_ktime_get_ns() }
}

fn try_switch(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let preempt: u64 = ctx.arg(0);
    if preempt != 0 {
        // `current` is still `prev` here. Preempted, it stays runnable: its
        // wait for the CPU starts now.
        let prev = bpf_get_current_pid_tgid() as u32;
        if let Some(entry) = TASKS.get_ptr_mut(&prev) {
            // SAFETY: entry points into a live map value; an aligned
            // 8-byte store is atomic.
            unsafe { (*entry).runq_since = now() };
        }
    }
    let next: *const u8 = ctx.arg(2);
    let pid: i32 = read_at(next, config().offsets.task_pid)?;
    let Some(entry) = TASKS.get_ptr_mut(&(pid as u32)) else {
        return Ok(());
    };
    // SAFETY: entry points into a live map value. A wakeup racing on
    // another CPU can only be one of a task already running: losing it
    // loses no wait.
    let (since, cid) = unsafe {
        let since = (*entry).runq_since;
        if since != 0 {
            (*entry).runq_since = 0;
        }
        (since, (*entry).container)
    };
    if since != 0 {
        observe(cid, now().saturating_sub(since));
    }
    Ok(())
}

fn observe(cid: u64, ns: u64) {
    let hist = match RUNQ.get_ptr_mut(&cid) {
        Some(h) => h,
        None => {
            // First observation of this container on any CPU creates the
            // entry (for every CPU); another CPU may have just done so.
            let _ = RUNQ.insert(&cid, &RunqHistogram::default(), BPF_NOEXIST as u64);
            match RUNQ.get_ptr_mut(&cid) {
                Some(h) => h,
                None => {
                    bump(Stat::RunqMapFull);
                    return;
                }
            }
        }
    };
    let slot = runq_slot(ns);
    // SAFETY: hist points at this CPU's copy of a live map value; only this
    // CPU writes it, and sched_switch runs with interrupts off, so nothing
    // interleaves on this CPU.
    unsafe {
        if let Some(n) = (*hist).slots.get_mut(slot) {
            *n += 1;
        }
        (*hist).sum_ns += ns;
    }
}

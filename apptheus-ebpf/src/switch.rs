//! sched_switch (run-queue latency collector): a task of a container is
//! about to run; the time it waited on the run queue goes into the
//! container's histogram.
//!
//! The wait is the kernel's own: `sched_info.last_queued` (the run queue's
//! clock when the task was queued, set by the scheduler on every wakeup and
//! preemption) subtracted from the run queue's clock now. This tracepoint
//! fires just before the kernel does the same subtraction for the task's
//! `run_delay` (/proc/<pid>/schedstat), so no wakeup hook is needed, and
//! the one program costs every other context switch on the node one array
//! lookup. A task moved to another CPU's queue while waiting has the
//! earlier part of its wait already in `run_delay`; the growth of
//! `run_delay` since the task's last observed wait adds it back.
use apptheus_common::{RunqHistogram, Stat, runq_slot, runq_wait};
use aya_ebpf::{bindings::BPF_NOEXIST, macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{bump, config, offset, runq_pid},
    maps::{RUNQ, TASKS},
};

/// TP_PROTO(bool preempt, struct task_struct *prev, struct task_struct *next)
/// (5.18+ adds `unsigned int prev_state`, unused).
#[btf_tracepoint(function = "sched_switch")]
pub fn apptheus_switch(ctx: BtfTracePointContext) -> i32 {
    let _ = try_switch(&ctx);
    0
}

/// Reads a `T` at `base + offset` of a kernel struct the program was handed
/// (or reached through one) as a BTF-typed pointer: a plain load, which the
/// verifier checks against the kernel's BTF (the offset is a constant to it:
/// CONFIG lives in a frozen read-only map) and guards against faults; no
/// helper call, which matters on a path every context switch takes.
#[inline(always)]
fn field<T: Copy>(base: *const u8, offset: u32) -> T {
    // SAFETY: base is a task_struct / cfs_rq / rq pointer typed by BTF and
    // offset a field of it resolved from the same BTF; the verifier rejects
    // the program otherwise, and the JIT turns a fault into a zero read.
    unsafe { core::ptr::read_volatile(base.wrapping_add(offset as usize) as *const T) }
}

fn try_switch(ctx: &BtfTracePointContext) -> Result<(), i64> {
    let next: *const u8 = ctx.arg(2);
    let pid: i32 = field(next, offset!(task_pid));
    let pid = pid as u32;
    // The filter: a task id past the table (kernel.pid_max raised after
    // the agent started) goes on to the attribution map's lookup.
    if runq_pid(pid) == Some(false) {
        return Ok(());
    }
    let Some(entry) = TASKS.get_ptr_mut(&pid) else {
        return Ok(());
    };
    let off = config().offsets;
    let queued: u64 = field(next, off.task_last_queued);
    if queued == 0 {
        // Not queued by the scheduler since it last ran.
        return Ok(());
    }
    let cfs_rq: *const u8 = field(next, off.task_cfs_rq);
    let rq: *const u8 = field(cfs_rq, off.cfs_rq_rq);
    let clock: u64 = field(rq, off.rq_clock);
    let run_delay: u64 = field(next, off.task_run_delay);
    // SAFETY: entry points into a live map value; the task is being
    // switched in on this CPU only, so nothing else writes its entry.
    let (cid, seen) = unsafe { ((*entry).container, (*entry).run_delay_seen) };
    let (wait, seen) = runq_wait(clock.saturating_sub(queued), run_delay, seen);
    // SAFETY: as above.
    unsafe { (*entry).run_delay_seen = seen };
    observe(cid, wait);
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

/// For the benchmark only (`scripts/bench-kernel-collectors.sh`, through
/// `examples/switch_baseline.rs`; the agent never loads it): the same hook
/// with nothing behind it, so that what any program on `sched_switch`
/// costs is measured apart from what `apptheus_switch` does.
#[btf_tracepoint(function = "sched_switch")]
pub fn apptheus_switch_baseline(_ctx: BtfTracePointContext) -> i32 {
    0
}

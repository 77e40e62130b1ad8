//! sched_switch (run-queue latency collector): a task of a container is
//! about to run; the time it waited on the run queue goes into the
//! container's histogram.
//!
//! The wait is the kernel's own: `sched_info.last_queued` (the run queue's
//! clock when the task was queued, set by the scheduler on every wakeup and
//! preemption) subtracted from the run queue's clock now. This tracepoint
//! fires just before the kernel does the same subtraction for the task's
//! `run_delay` (/proc/<pid>/schedstat), so no wakeup hook is needed. A task
//! moved to another CPU's queue while waiting has the earlier part of its
//! wait already in `run_delay`; the growth of `run_delay` since the task's
//! last observed wait adds it back.
//!
//! What every context switch on the node pays is one array element, read
//! by index: the next task's `RUNQ_TASKS` entry, which for a task in no
//! container is zero. A container's task finds there its container's slot
//! and its run delay last seen, and its histogram is this CPU's element of
//! a per-CPU array at that slot: no hash lookup on the way. Only a task
//! whose container started before user space gave it a slot looks the
//! slot up (in `TASKS`, then `RUNQ_SLOTS`), once it has one, and then never
//! again.
use apptheus_common::{
    RUNQ_SLOT_NONE, RUNQ_SLOT_UNRESOLVED, Stat, runq_entry, runq_entry_seen, runq_entry_slot,
    runq_slot, runq_wait,
};
use aya_ebpf::{macros::btf_tracepoint, programs::BtfTracePointContext};

use crate::{
    kernel::{bump, config, container_of, offset},
    maps::{RUNQ, RUNQ_SLOTS, RUNQ_TASKS},
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
    let Some(entry) = RUNQ_TASKS.get_ptr_mut(pid) else {
        return Ok(());
    };
    // SAFETY: entry points to a live array element; the task is being
    // switched in on this CPU, so nothing else writes its element now
    // (fork writes a child's before it first runs, exit the task's own).
    let e = unsafe { core::ptr::read_volatile(entry) };
    let mut slot = runq_entry_slot(e);
    if slot == RUNQ_SLOT_NONE {
        return Ok(());
    }
    if slot == RUNQ_SLOT_UNRESOLVED {
        slot = resolve(pid);
        if slot == RUNQ_SLOT_UNRESOLVED {
            return Ok(());
        }
    }
    let off = config().offsets;
    let queued: u64 = field(next, off.task_last_queued);
    let cfs_rq: *const u8 = field(next, off.task_cfs_rq);
    let rq: *const u8 = field(cfs_rq, off.cfs_rq_rq);
    let clock: u64 = field(rq, off.rq_clock);
    let run_delay: u64 = field(next, off.task_run_delay);
    if queued == 0 {
        // Not queued by the scheduler since it last ran.
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(entry, runq_entry(slot, runq_entry_seen(e))) };
        return Ok(());
    }
    let (wait, seen) = runq_wait(clock.saturating_sub(queued), run_delay, runq_entry_seen(e));
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(entry, runq_entry(slot, seen)) };
    if slot != RUNQ_SLOT_NONE {
        observe(slot, wait);
    }
    Ok(())
}

/// The slot of task `pid`'s container, from the map user space writes; the
/// slot stays unresolved while it has written none.
#[inline(never)]
fn resolve(pid: u32) -> u32 {
    let Some(cid) = container_of(pid) else {
        return RUNQ_SLOT_NONE;
    };
    // SAFETY: a u32 value, copied out at once.
    match unsafe { RUNQ_SLOTS.get(&cid) } {
        Some(&slot) => slot,
        None => RUNQ_SLOT_UNRESOLVED,
    }
}

fn observe(slot: u32, ns: u64) {
    let Some(hist) = RUNQ.get_ptr_mut(slot) else {
        bump(Stat::RunqMapFull);
        return;
    };
    let i = runq_slot(ns);
    // SAFETY: hist points at this CPU's element of a per-CPU array; only
    // this CPU writes it, and sched_switch runs with interrupts off, so
    // nothing interleaves on this CPU.
    unsafe {
        if let Some(n) = (*hist).slots.get_mut(i) {
            *n += 1;
        }
        (*hist).sum_ns += ns;
    }
}

/// For the benchmark only (`cargo xtask bench` and
/// `scripts/bench-kernel-collectors.sh`, through `examples/switch_baseline.rs`;
/// the agent never loads it): the same hook with nothing behind it, so that
/// what any program on `sched_switch` costs is measured apart from what
/// `apptheus_switch` does.
#[btf_tracepoint(function = "sched_switch")]
pub fn apptheus_switch_baseline(_ctx: BtfTracePointContext) -> i32 {
    0
}

//! Small helpers over the kernel's interfaces: reading struct fields at
//! offsets resolved from BTF, atomic counters, and events.
use apptheus_common::{
    Config, Event, RUN_DELAY_UNKNOWN, RUNQ_SEEN_UNKNOWN, RUNQ_SLOT_NONE, RUNQ_SLOT_UNRESOLVED,
    Stat, TaskEntry, runq_entry, runq_entry_slot,
};
use aya_ebpf::helpers::{bpf_get_current_task, bpf_probe_read_kernel};
use core::intrinsics::{AtomicOrdering, atomic_xadd};

use crate::maps::{CONFIG, EVENTS, RUNQ_TASKS, STATS, TASKS};

/// The configuration user space handed in.
#[inline(always)]
pub fn config() -> Config {
    // SAFETY: CONFIG is a plain static the loader rewrites before the
    // program runs; the volatile read stops the compiler from folding in the
    // compile-time zeroes.
    unsafe { core::ptr::read_volatile(&raw const CONFIG) }
}

/// One field of the configuration's offsets, read alone: copying the whole
/// [`Config`] costs a dozen loads, too many for a path every context switch
/// on the node takes.
macro_rules! offset {
    ($field:ident) => {
        // SAFETY: as in `config()`: a plain static the loader rewrites
        // before the program runs, read volatile so the compile-time zero is
        // not folded in.
        unsafe { core::ptr::read_volatile(&raw const $crate::maps::CONFIG.offsets.$field) }
    };
}
pub(crate) use offset;

/// The container task `tid` belongs to, if any.
#[inline(always)]
pub fn container_of(tid: u32) -> Option<u64> {
    // SAFETY: the value is copied out at once.
    unsafe { TASKS.get(&tid) }.map(|e| e.container)
}

/// Attributes task `tid` to container `cid`. `run_delay_seen` is the
/// task's run-queue delay so far when known (0 for a new task), else
/// `RUN_DELAY_UNKNOWN`; `slot` its container's run-queue latency slot
/// (that of the task it was forked from), or `RUNQ_SLOT_UNRESOLVED`.
#[inline(always)]
pub fn attribute(tid: u32, cid: u64, run_delay_seen: u64, slot: u32) -> Result<(), i32> {
    let entry = TaskEntry {
        container: cid,
        run_delay_seen,
    };
    TASKS.insert(&tid, &entry, 0)?;
    let seen = if run_delay_seen == RUN_DELAY_UNKNOWN {
        RUNQ_SEEN_UNKNOWN
    } else {
        run_delay_seen
    };
    set_runq_entry(tid, runq_entry(slot, seen));
    Ok(())
}

/// Forgets task `tid`'s attribution.
#[inline(always)]
pub fn unattribute(tid: u32) {
    let _ = TASKS.remove(&tid);
    set_runq_entry(tid, runq_entry(RUNQ_SLOT_NONE, 0));
}

/// Sets task `tid`'s entry in the run-queue latency collector's table;
/// nothing when the table is off (one element) or `tid` lies past its end.
#[inline(always)]
fn set_runq_entry(tid: u32, entry: u64) {
    if let Some(e) = RUNQ_TASKS.get_ptr_mut(tid) {
        // SAFETY: e points to a live 8-byte array element of task `tid`.
        unsafe { core::ptr::write_volatile(e, entry) };
    }
}

/// The run-queue latency slot of task `tid`'s container, for a task
/// forked from it: unresolved when it has none yet.
#[inline(always)]
pub fn runq_slot_of(tid: u32) -> u32 {
    match RUNQ_TASKS.get(tid).map(|e| runq_entry_slot(*e)) {
        Some(RUNQ_SLOT_NONE) | None => RUNQ_SLOT_UNRESOLVED,
        Some(slot) => slot,
    }
}

/// Reads a `T` at `base + offset` in kernel memory.
#[inline(always)]
pub fn read_at<T>(base: *const u8, offset: u32) -> Result<T, i64> {
    if base.is_null() {
        return Err(-1);
    }
    // SAFETY: bpf_probe_read_kernel copies through a fault-safe path; a bad
    // address yields an error, never a crash.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(offset as usize) as *const T) }
        .map_err(i64::from)
}

/// Atomically adds `v` to `*p`. The old value is not returned on purpose:
/// fetching it needs BPF atomics with BPF_FETCH (Linux 5.12), and 5.10 is
/// among the kernels we support; a plain atomic add works everywhere.
#[inline(always)]
pub fn atomic_add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value returned by the kernel for this
    // program's lifetime; an atomic add is what concurrent CPUs need.
    unsafe {
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v);
    }
}

/// Adds one to an agent-level counter.
#[inline(always)]
pub fn bump(stat: Stat) {
    if let Some(p) = STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU value, only this CPU writes it, and programs are
        // not preempted by themselves on one CPU.
        unsafe { *p += 1 };
    }
}

/// CLOCK_BOOTTIME in nanoseconds.
#[inline(always)]
pub fn boot_ns() -> u64 {
    // SAFETY: a helper without arguments or side effects.
    unsafe { aya_ebpf::helpers::bpf_ktime_get_boot_ns() }
}

/// Sends an event to user space, counting it as lost if the ring is full.
#[inline(always)]
pub fn emit(ev: &Event) {
    if EVENTS.output(ev, 0).is_err() {
        bump(Stat::EventsLost);
    }
}

/// The current task's CPU time in nanoseconds
/// (`task_struct.se.sum_exec_runtime`) and its storage reads and writes in
/// bytes (`task_struct.ioac`); 0 for what this kernel does not account. A
/// field that cannot be read counts as 0 and as an error of the program
/// (`errors`: what the task used is then missing from, or not subtracted
/// from, its container's totals).
#[inline(always)]
pub fn task_use(errors: Stat) -> (u64, u64, u64) {
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
        bump(errors);
    }
    out
}

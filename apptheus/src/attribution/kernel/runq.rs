//! The run-queue latency collector's user-space side: a slot for each
//! container (each starter run the kernel follows), the histograms read
//! back by slot, and the task entries of adopted tasks.
//!
//! The kernel's switch program finds a task's container slot in the task's
//! `RUNQ_TASKS` entry, which a forked task inherits from its parent; a
//! container's first tasks, started before the agent heard of it, carry
//! an unresolved slot, which the program looks up in `RUNQ_SLOTS` (written
//! here) at their next switch, once.
use std::collections::BTreeMap;

use apptheus_common::{
    RUNQ_SEEN_UNKNOWN, RUNQ_SLOT_NONE, RUNQ_SLOT_UNRESOLVED, RunqHistogram, runq_entry,
};
use aya::maps::PerCpuValues;

use super::Kernel;
use crate::model::collectors::Collector;

/// Slots given to containers, and those free.
#[derive(Debug)]
pub struct Slots {
    free: Vec<u32>,
    of: BTreeMap<u64, u32>,
}

impl Slots {
    /// Slots 1 to `max` (0 means none).
    pub fn new(max: u32) -> Self {
        Slots {
            free: (1..=max).rev().collect(),
            of: BTreeMap::new(),
        }
    }

    /// Container `cid`'s slot, given now if it has none; None when every
    /// slot is taken.
    pub fn take(&mut self, cid: u64) -> Option<u32> {
        if let Some(s) = self.of.get(&cid) {
            return Some(*s);
        }
        let s = self.free.pop()?;
        self.of.insert(cid, s);
        Some(s)
    }

    pub fn get(&self, cid: u64) -> Option<u32> {
        self.of.get(&cid).copied()
    }

    /// Frees container `cid`'s slot, and says which it was.
    pub fn release(&mut self, cid: u64) -> Option<u32> {
        let s = self.of.remove(&cid)?;
        self.free.push(s);
        Some(s)
    }
}

impl Kernel {
    /// Gives container `cid` a run-queue latency slot, and tells the
    /// kernel (nothing when the collector is off). With none free, its
    /// tasks are not observed.
    pub fn runq_track(&mut self, cid: u64) {
        if !self.active.contains(Collector::Runqlat) {
            return;
        }
        let slot = match self.runq_slots_given.take(cid) {
            Some(s) => s,
            None => {
                // Counted, and said once (see app::drops).
                self.runq_unobserved += 1;
                RUNQ_SLOT_NONE
            }
        };
        let _ = self.runq_slots.insert(&cid, &slot, 0);
    }

    /// Frees container `cid`'s slot (its histogram emptied for the next).
    pub(super) fn runq_release(&mut self, cid: u64) {
        let _ = self.runq_slots.remove(&cid);
        if let Some(slot) = self.runq_slots_given.release(cid)
            && let Ok(n) = aya::util::nr_cpus()
            && let Ok(zeros) =
                PerCpuValues::try_from(vec![RunqHistogram::default(); n.get() as usize])
        {
            let _ = self.runq.set(slot, zeros, 0);
        }
    }

    /// A container's run-queue latency histogram, summed over CPUs; None
    /// when the collector is off. A container that has not waited yet (or
    /// has no slot) has an empty histogram.
    pub fn runq_histogram(&self, cid: u64) -> Option<RunqHistogram> {
        if !self.active.contains(Collector::Runqlat) {
            return None;
        }
        let mut sum = RunqHistogram::default();
        if let Some(slot) = self.runq_slots_given.get(cid)
            && let Ok(per_cpu) = self.runq.get(&slot, 0)
        {
            for h in per_cpu.iter() {
                for (s, v) in sum.slots.iter_mut().zip(h.slots) {
                    *s += v;
                }
                sum.sum_ns += h.sum_ns;
            }
        }
        Some(sum)
    }

    /// Marks task `tid` as container `cid`'s in the run-queue latency
    /// collector's table (nothing past its end, or when it is off); its
    /// run delay so far is unknown.
    pub(super) fn runq_mark(&mut self, tid: u32, cid: u64) {
        let slot = self
            .runq_slots_given
            .get(cid)
            .unwrap_or(RUNQ_SLOT_UNRESOLVED);
        let _ = self
            .runq_tasks
            .set(tid, &runq_entry(slot, RUNQ_SEEN_UNKNOWN), 0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_given_once_and_reused_after_release() {
        let mut s = Slots::new(2);
        assert_eq!(s.take(10), Some(1));
        assert_eq!(s.take(10), Some(1), "the same container keeps its slot");
        assert_eq!(s.take(20), Some(2));
        assert_eq!(s.take(30), None, "none left");
        assert_eq!(s.release(10), Some(1));
        assert_eq!(s.release(10), None);
        assert_eq!(s.take(30), Some(1));
        assert_eq!(s.get(20), Some(2));
        assert_eq!(s.get(10), None);
    }
}

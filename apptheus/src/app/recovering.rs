//! Runs the agent missed. Runs of a newly trusted starter that began
//! before the kernel knew its identity: between a package upgrade's rename
//! of the new file over the old and the agent's re-resolution (a
//! millisecond with the directory watch, up to the periodic re-check
//! without), the kernel compares execs with the old identity and lets them
//! go. Each re-resolution that trusts new files looks for their runs in
//! /proc and follows them from then on, as a run found through the
//! monitoring socket is. At start-up, the runs of every trusted starter
//! that no marked cgroup let the agent adopt (a Slurm job's container,
//! which gets no cgroup of apptheus', or one that began before the agent
//! first ran) are found the same way. And containers whose start the event
//! stream lost: the kernel's map of starter runs is compared with the
//! registry now and then ([`Agent::reconcile`]).
use std::collections::BTreeSet;

use apptheus_common::{ContainerState, FileId};

use super::{Agent, StartFacts};
use crate::error_chain::chain;
use crate::{
    host::{clock, proctree},
    model::container::FoundBy,
};

/// Why the agent looks for starter runs among the processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Search {
    /// Their starters were just trusted: runs that began before.
    NewlyTrusted,
    /// The agent starts: runs that began before, which it did not adopt.
    AtStartUp,
}

impl Agent {
    /// Follows the runs of the starters `ids` (trusted identities) that no
    /// container holds yet.
    pub(super) fn recover_runs(&mut self, ids: &BTreeSet<FileId>, search: Search) {
        if ids.is_empty() || self.kernel.is_none() {
            return;
        }
        let procfs = self.procfs.root().to_path_buf();
        let Ok(entries) = std::fs::read_dir(&procfs) else {
            return;
        };
        let runs_new = |pid: u32| {
            self.procfs
                .exe_identity(pid)
                .ok()
                .filter(|id| ids.contains(id))
        };
        let mut found = Vec::new();
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let Some(exe) = runs_new(pid) else {
                continue;
            };
            // A run's topmost starter: the others are its own.
            let nested = self
                .procfs
                .ppid(pid)
                .is_some_and(|pp| runs_new(pp).is_some());
            let known = self
                .kernel
                .as_ref()
                .and_then(|k| k.container_of(pid))
                .is_some();
            if !nested && !known {
                found.push((pid, exe));
            }
        }
        for (pid, exe) in found {
            self.recover(pid, exe, search);
        }
    }

    /// Follows the run of starter process `pid` (executing `exe`) from now,
    /// under a new id. A newly trusted starter's run began moments ago:
    /// what its processes used counts. One found at start-up may have run
    /// for hours, its starter's process as Apptainer's tool first, and its
    /// ended processes are not there to count: its counters start from
    /// here, as an adopted container's kernel counters do.
    fn recover(&mut self, pid: u32, exe: FileId, search: Search) {
        let procs = proctree::tree(self.procfs.root(), pid);
        let tids: Vec<u32> = procs.iter().flat_map(|p| self.threads(*p)).collect();
        // Whether it runs something of its own already (see `admission`).
        let ran = procs
            .iter()
            .any(|p| self.procfs.exe_identity(*p).is_ok_and(|id| id != exe));
        let uid = self.procfs.uid(pid).unwrap_or(0);
        let now = clock::boot_time_now().as_nanos() as u64;
        let mut key = now;
        while self.registry.container_of(key).is_some()
            || self
                .kernel
                .as_ref()
                .is_some_and(|k| k.container(key).is_some())
        {
            key += 1;
        }
        let (used, found_by, said) = match search {
            Search::NewlyTrusted => (
                Default::default(),
                FoundBy::Kernel,
                "a run of a newly trusted starter began before it was trusted; followed from now on",
            ),
            Search::AtStartUp => (
                crate::host::procstats::used_by(self.procfs.root(), &tids),
                FoundBy::Running,
                "a starter run found running at start-up, with no cgroup of apptheus' to adopt it by; followed from now on, under a new id",
            ),
        };
        let state = ContainerState {
            start_boot_ns: now,
            starter_tgid: pid,
            uid,
            starter: exe,
            execs: if ran { 2 } else { 1 },
            start_runtime_ns: used.runtime_ns,
            start_read_bytes: used.read_bytes,
            start_write_bytes: used.write_bytes,
            ..ContainerState::default()
        };
        if let Some(k) = self.kernel.as_mut()
            && let Err(e) = k.adopt(key, &state, &tids)
        {
            tracing::warn!(pid, error = %chain(&e), "cannot hand a starter run found among the processes to the kernel programs");
            return;
        }
        tracing::info!(pid, uid, tasks = tids.len(), "{said}");
        self.on_start(StartFacts {
            key,
            starter_pid: pid,
            uid,
            boot_ns: now,
            file: Some(exe),
            parent_launcher: None,
            arg0: None,
            found_by,
            socket: None,
            cgroups: None,
        });
        // Refused by a cap, or a helper run: the kernel lets it go.
        if self.registry.container_of(key).is_none()
            && let Some(k) = self.kernel.as_mut()
        {
            k.forget(key);
        }
    }

    /// The threads of process `pid`.
    fn threads(&self, pid: u32) -> Vec<u32> {
        std::fs::read_dir(self.procfs.root().join(pid.to_string()).join("task"))
            .map(|d| {
                d.flatten()
                    .filter_map(|t| t.file_name().to_str()?.parse().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Recovers from lost events: the kernel's map is the truth.
    pub(super) fn reconcile(&mut self) {
        let Some(k) = &self.kernel else { return };
        let states = k.containers();
        for (key, st) in &states {
            if self.registry.container_of(*key).is_none() && st.exited == 0 {
                tracing::warn!(
                    key,
                    "container missed by the event stream; recovered from the kernel's map"
                );
                if let Some(k) = self.kernel.as_mut() {
                    k.runq_track(*key);
                }
                self.on_start(StartFacts {
                    key: *key,
                    starter_pid: st.starter_tgid,
                    uid: st.uid,
                    boot_ns: st.start_boot_ns,
                    file: Some(st.starter),
                    parent_launcher: None,
                    arg0: None,
                    found_by: FoundBy::Kernel,
                    socket: None,
                    cgroups: None,
                });
            }
        }
    }
}

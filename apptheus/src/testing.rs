//! What the integration tests, the benchmarks, the examples and the xtask
//! use of the daemon's insides, re-exported on purpose: everything else
//! is private to the crate. (How a test skips is apptheus-testkit's
//! `skip`.)

pub use crate::host::rlimit::raise_fd_limit;

/// Reading a container's cgroup statistics (fixture-tree tests).
pub mod cgroup {
    pub use crate::cgroup::{
        layout::Layout,
        mark::{DIR_PREFIX, Mark},
        placement::{Created, Placer},
        policy::NoOwnCgroup,
        read::{MAX_DEVICES, Problem, StatWarning, read, read_with, user_hz},
    };
    pub use crate::model::{
        cgroups::ContainerCgroups,
        stats::{BlkioDevice, CgroupStats, CpuStats, MemoryStats, PidsStats, Pressure},
    };

    /// The directories `placer` finds marked as apptheus' own (what a
    /// restarted agent adopts or removes).
    pub fn find_marked(
        placer: &Placer,
    ) -> std::collections::BTreeMap<Mark, crate::model::cgroups::ContainerCgroups> {
        crate::cgroup::leftovers::find_marked(placer.hierarchies())
    }

    /// Where `placer` found cgroup2 mounted, if it is.
    pub fn v2_root(placer: &Placer) -> Option<&std::path::Path> {
        placer.hierarchies().v2_root()
    }

    /// The `slurm_job_id` of a process whose `/proc/<pid>/cgroup` is
    /// `proc_cgroup`, with cgroup2 at `v2_root` and /proc at `procfs` (a
    /// fixture tree's).
    pub fn slurm_job_of(
        proc_cgroup: &str,
        v2_root: Option<&std::path::Path>,
        procfs: &std::path::Path,
    ) -> Option<String> {
        crate::cgroup::slurm_job::job_of(
            proc_cgroup,
            v2_root,
            &crate::host::procfs::Procfs::new(procfs),
        )
    }
}

/// The monitoring socket, run on its own (socket tests).
pub mod socket {
    pub use crate::attribution::{
        socket::{ConnId, ConnectionCaps, SocketEvent, bind, serve_with, verify},
        trust::{TrustedFile, TrustedSet, file_id},
    };
    pub use crate::export::metrics::AgentMetrics;
}

/// The kernel programs (the switch-hook baseline of the benchmark).
pub mod kernel {
    pub use crate::attribution::kernel::Kernel;
}

/// The metric catalogue (docs, dashboards and rules are checked against
/// it) and the exposition of containers' statistics.
pub mod export {
    pub use crate::export::{
        catalogue::{ALL as CATALOGUE, Kind, Metric, SECTIONS, Section, find},
        exposition::Format,
        metrics::AgentMetrics,
        protos::families,
        snapshot::{Info, Row, Snapshot},
    };
    pub use crate::model::container::{FsCounters, KernelCounters, NetCounters, Sample};
}

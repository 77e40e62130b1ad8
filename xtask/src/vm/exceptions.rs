//! Cells of the matrix where a promise of the agent does not hold, and why.
//! A failure listed here is reported but does not fail `vm-test`; README's
//! "Compatibility" section says the same in prose.
use super::Layout;

#[derive(Debug)]
pub struct Exception {
    /// Matrix rows ("5.10", "6.1", "6.12", "host").
    pub kernels: &'static [&'static str],
    pub layouts: &'static [Layout],
    /// `binary::test`, as the report names failures.
    pub test: &'static str,
    pub why: &'static str,
}

impl Exception {
    pub fn covers(&self, kernel: &str, layout: Layout, what: &str) -> bool {
        self.kernels.contains(&kernel) && self.layouts.contains(&layout) && self.test == what
    }
}

const EVERY_KERNEL: &[&str] = &["5.10", "6.1", "6.12", "host"];

/// Why a short-lived container started from an occupied cgroup has no
/// memory peak on pure v2.
const V2_OCCUPIED: &str = "pure v2: this test runs its starter in the test's own cgroup \
     (the VM's \"session\" cgroup), which keeps holding the test process after placement, \
     like a login session's scope. cgroup v2 lets a cgroup with processes give its children \
     no controller, and the agent moves nothing that is not the container's, so the \
     container's cgroup has cpu.stat, PSI and cgroup.threads but no memory files, and its \
     memory comes from its processes (in the usual families) instead. This container \
     lives between two samples (5 s apart): its processes are gone before anything reads \
     them, and no cgroup kept its memory peak, which the test checks. A container that \
     lives across a sample has its memory from its processes (the shared_cgroups tests \
     check it beside a login shell and beside a Slurm batch script), and where the starter \
     is alone in its cgroup outside Slurm (a service) the agent enables the controllers";

/// Why Debian's 6.12 has no v1 memory statistics.
const NO_MEMCG_V1: &str = "Linux 6.12 as Debian builds it has no v1 memory controller \
     (CONFIG_MEMCG_V1 is not set; the same for cpuset, CONFIG_CPUSETS_V1): under a v1 or \
     hybrid layout there is no memory hierarchy to place containers in or read";

/// Why Slurm does not run under Debian's 6.12 with v1 hierarchies.
const NO_MEMCG_V1_SLURM: &str = "Linux 6.12 as Debian builds it has no v1 memory controller \
     (CONFIG_MEMCG_V1 is not set), which Slurm's cgroup/v1 plugin needs for its task/cgroup \
     memory constraint, and Slurm's cgroup/v2 plugin wants cgroup2 on /sys/fs/cgroup: the \
     test's Slurm cluster cannot start there (a site running 6.12 runs pure v2, where the \
     test runs)";

pub static EXCEPTIONS: &[Exception] = &[
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V2],
        test: "shared_cgroups::a_batch_scripts_container_counts_only_itself",
        why: "seen once on 6.12's busybox v2 cell (left out of the whole matrix, run when \
              named): 2.276 s of CPU for a container tree whose rusage was 2.449 s, 7 % short, \
              beyond the check's 3 % and the exec's allowance; on 5.10 v2 and on the host it \
              passes. Not yet explained; a likely share is what a task's exit does after the \
              exit tracepoint (where the kernel program banks its runtime), freeing the \
              workload's 200 MiB, which rusage counts and which is slow under emulation",
    },
    Exception {
        kernels: EVERY_KERNEL,
        layouts: &[Layout::V2],
        test: "lifecycle::a_short_lived_container_shows_its_final_values_then_its_series_go",
        why: V2_OCCUPIED,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "cgroups::container_lands_beneath_its_original_cgroup_whose_limit_still_holds",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "lifecycle::a_short_lived_container_shows_its_final_values_then_its_series_go",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "kernel_metrics::oom_kill_is_counted_by_the_kernel_and_logged",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "cgroups::memory_of_a_200_mib_workload_is_reported_within_5_percent",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "shared_cgroups::a_batch_scripts_container_in_a_slurm_job_is_read_from_its_processes",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "shared_cgroups::a_slurm_jobs_memory_limit_holds_for_a_batch_scripts_container",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "shared_cgroups::srun_apptainer_alone_in_its_task_is_read_from_the_tasks_cgroup",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "shared_cgroups::a_login_sessions_container_keeps_its_limit_and_gets_its_memory",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "cgroups::with_controllers_left_alone_a_v2_containers_memory_comes_from_its_processes",
        why: NO_MEMCG_V1,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "slurm_jobs::a_cancelled_jobs_container_goes_with_it_and_slurm_removes_its_cgroups",
        why: NO_MEMCG_V1_SLURM,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "slurm_jobs::a_batch_script_that_execs_apptainer_is_read_from_its_task_cgroup",
        why: NO_MEMCG_V1_SLURM,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "slurm_jobs::a_jobs_memory_limit_holds_and_slurm_tells_it_ran_out_of_memory",
        why: NO_MEMCG_V1_SLURM,
    },
    Exception {
        kernels: &["6.12"],
        layouts: &[Layout::V1, Layout::Hybrid],
        test: "slurm_jobs::slurms_cgroup_v2_plugin_loses_a_process_moved_below_its_task",
        why: NO_MEMCG_V1_SLURM,
    },
];

/// A test left out of the VMs, and why.
#[derive(Debug)]
pub struct Skip {
    /// `binary::test`.
    pub test: &'static str,
    pub why: &'static str,
}

/// Never run under software emulation (unless `--all-tests`): its limits
/// are real time, and nothing in it depends on the kernel version or the
/// cgroup layout that the other tests of its binary do not cover.
pub static UNDER_EMULATION: &[Skip] = &[
    Skip {
        test: "lifecycle::two_hundred_starts_a_second_with_fork_storms_lose_nothing",
        why: "a throughput test (200 container starts a second with fork storms) that takes \
              5 minutes per VM and fails on time alone under emulation; the lifecycle it \
              drives is checked by the other tests in every cell",
    },
    Skip {
        test: "socket::abuse_leaves_the_server_serving_without_leaked_descriptors",
        why: "stress test with real-time limits (a trusted caller served within 2 s during a \
          10,000-connection flood, under 0.5 s of CPU in 2 s out of descriptors) that a \
          machine emulated about ten times slower cannot meet; the socket server does not \
          touch cgroups, and the other socket tests run in every cell",
    },
];

/// Never run in the VMs: they need what the initramfs does not carry.
pub static HOST_ONLY: &[Skip] = &[Skip {
    test: "attribution::runc_as_a_trusted_launcher",
    why: "needs runc (a Go binary with its own libraries) and an OCI bundle built on the \
          host's /usr, which the busybox initramfs does not have; attribution by file \
          identity and whole-tree tracking are checked by the other attribution tests in \
          every cell, and runc itself adds nothing kernel-specific",
}];

/// Left out with `--quick` (CI), for time.
pub static SLOW: &[Skip] = &[Skip {
    test: "cgroups::a_thousand_container_cycles_leave_no_cgroup_behind",
    why: "1,000 containers take 4-5 minutes per VM under emulation (seconds natively); \
          the cgroup layouts' clean-up is also checked by the restart test in every cell",
}];

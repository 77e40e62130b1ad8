//! cgroups: the host's layout, a cgroup per container, and its statistics.
pub(crate) mod delegation;
pub(crate) mod hierarchies;
pub(crate) mod layout;
pub(crate) mod leftovers;
pub(crate) mod mark;
pub(crate) mod placement;
pub(crate) mod policy;
pub(crate) mod prewarm;
pub(crate) mod proc_cgroup;
pub(crate) mod read;
pub(crate) mod slurm_job;
pub(crate) mod tasks;

//! Reading the host: /proc, users, the kernel's clock, start-up checks,
//! Slurm's job ids.
pub(crate) mod clock;
pub(crate) mod dirwatch;
pub(crate) mod limits;
pub(crate) mod preflight;
pub(crate) mod procfs;
pub(crate) mod procstats;
pub(crate) mod proctree;
pub(crate) mod slurmjob;
pub(crate) mod users;

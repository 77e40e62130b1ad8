//! Reading the host: /proc, users, the kernel's clock, the descriptor
//! limit; and the pacing its servers share.
pub(crate) mod clock;
pub(crate) mod dirwatch;
pub(crate) mod pacing;
pub(crate) mod procfs;
pub(crate) mod procstats;
pub(crate) mod proctree;
pub(crate) mod rlimit;
pub(crate) mod users;

//! The agent's data, pure: containers and their life, samples, metadata.
//! Nothing here touches the kernel, the file system or the network.
pub(crate) mod caps;
pub(crate) mod cgroups;
pub(crate) mod collectors;
pub(crate) mod container;
pub(crate) mod drops;
pub(crate) mod event;
pub(crate) mod lifecycle;
pub(crate) mod metadata;
pub(crate) mod processes;
pub(crate) mod programs;
pub(crate) mod registry;
pub(crate) mod slurm;
pub(crate) mod source;
pub(crate) mod stats;

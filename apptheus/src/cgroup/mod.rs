//! cgroups: the host's layout, a cgroup per container, and its statistics.
pub mod families;
pub mod layout;
pub mod placement;
pub mod procfile;
pub mod stats;

//! cgroups: the host's layout, a cgroup per container, and its statistics.
pub mod delegation;
pub mod families;
pub mod files;
pub mod layout;
pub mod parse;
pub mod placement;
pub mod prewarm;
pub mod procfile;
pub mod stats;
pub mod v1;
pub mod v2;

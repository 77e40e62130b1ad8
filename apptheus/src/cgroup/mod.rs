//! cgroups: the host's layout, a cgroup per container, and its statistics.
pub(crate) mod delegation;
pub(crate) mod layout;
pub(crate) mod mark;
pub(crate) mod placement;
pub(crate) mod prewarm;
pub(crate) mod procfile;
pub(crate) mod read;

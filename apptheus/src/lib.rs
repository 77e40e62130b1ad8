//! apptheus: per-container metrics for Apptainer on HPC nodes, attributed
//! in the kernel, for Prometheus.
pub mod agent;
pub mod build_info;
pub mod cgroup;
pub mod cli;
pub mod collectors;
pub mod duration;
pub mod environ;
pub mod exposition;
pub mod families;
/// The entry points fuzzers (and the fuzz regression tests) call: the
/// surface kept stable for them, whatever moves behind it.
pub mod fuzzing;
pub mod http;
pub mod kernel;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod preflight;
pub mod proctree;
pub mod push;
pub mod registry;
pub mod socket;
pub mod testing;
pub mod trust;
pub mod users;
pub mod webconfig;

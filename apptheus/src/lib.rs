//! apptheus: per-container metrics for Apptainer on HPC nodes, attributed
//! in the kernel, for Prometheus.
//!
//! The way of a container's data, one direction only (see README,
//! "Architecture"): `attribution` (kernel programs, monitoring socket)
//! finds containers; `app` drives each one's life (`model::lifecycle`),
//! has `cgroup` place it and read its statistics, and hands the samples in
//! `model` to `export`, which `http` and `push` serve.
mod app;
mod attribution;
mod build_info;
mod cgroup;
pub mod cli;
mod duration;
mod export;
/// The entry points fuzzers (and the fuzz regression tests) call: the
/// surface kept stable for them, whatever moves behind it.
#[cfg(feature = "testing")]
pub mod fuzzing;
mod host;
mod http;
pub mod logging;
mod memory;
mod model;
mod push;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod webconfig;

pub use app::run;

//! apptheus: per-container metrics for Apptainer on HPC nodes, attributed
//! in the kernel, for Prometheus.
//!
//! The way of a container's data, one direction only (see
//! docs/architecture.md): `attribution` (kernel programs, monitoring socket)
//! finds containers; `app` drives each one's life (`model::lifecycle`),
//! has `cgroup` place it and read its statistics, and hands the samples in
//! `model` to `export`, which `http` and `push` serve.
// What is `pub` is reachable from outside the crate: the daemon's entry
// points and, for the tests, benchmarks and fuzzers, the testing and fuzzing
// modules; the rest is `pub(crate)` or less. Checked with the testing
// feature on, where that surface is whole (clippy --all-targets).
#![cfg_attr(feature = "testing", warn(unreachable_pub))]
mod allocator;
mod app;
mod attribution;
mod build_info;
mod cgroup;
pub mod cli;
mod duration;
mod error_chain;
mod export;
/// The entry points fuzzers (and the fuzz regression tests) call: the
/// surface kept stable for them, whatever moves behind it.
#[cfg(feature = "testing")]
pub mod fuzzing;
mod host;
mod http;
pub mod logging;
mod model;
mod push;
mod sync;
#[cfg(feature = "testing")]
pub mod testing;
mod webconfig;

pub use app::run;

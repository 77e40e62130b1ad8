//! Empty on purpose: the kernel programs are the `apptheus` binary target
//! (src/main.rs). This library target only lets the daemon name this crate
//! as a build-dependency, so cargo rebuilds the daemon when they change.
#![no_std]

//! The daemon's layers (README, "Architecture"), in one place: which
//! module sits in which layer, which imports between modules of one layer
//! the architecture allows, and the imports that break the rules today and
//! are to go. `cargo test -p xtask --test layers` checks `apptheus/src`
//! against them.
//!
//! The rules: a module imports only modules of the layers below its own
//! (any depth); never one above; one beside it only as `SIDEWAYS` allows;
//! and no import cycle between the daemon's modules. Unit tests
//! (`#[cfg(test)]`) keep the same rules. A new top-level module goes into a
//! layer here (the check fails until it does), and into the README's
//! diagram.
use crate::check::{Allowed, Exception, Layer, Rules};

/// Top to bottom. `lib` is the crate root (`lib.rs`); `main` the binary.
pub const LAYERS: &[Layer] = &[
    Layer {
        name: "entry points",
        modules: &["main", "lib", "logging", "testing", "fuzzing"],
    },
    Layer {
        name: "wiring",
        modules: &["app"],
    },
    // The flags: what `app` is started with, gathered from the flag groups
    // the layers below define.
    Layer {
        name: "flags",
        modules: &["cli"],
    },
    Layer {
        name: "middle",
        modules: &[
            "attribution",
            "cgroup",
            "export",
            "http",
            "push",
            "host",
            "webconfig",
            "memory",
        ],
    },
    Layer {
        name: "model",
        modules: &["model", "build_info", "duration", "sync"],
    },
];

/// Imports between two modules of one layer that the architecture allows.
pub const SIDEWAYS: &[Allowed] = &[
    Allowed {
        from: "main",
        to: "lib",
        why: "the binary runs the library",
    },
    Allowed {
        from: "main",
        to: "logging",
        why: "the binary starts the logger",
    },
    Allowed {
        from: "http",
        to: "export",
        why: "http/ serves what export/ writes",
    },
    Allowed {
        from: "push",
        to: "export",
        why: "push/ sends what export/ writes",
    },
    Allowed {
        from: "http",
        to: "webconfig",
        why: "the endpoint's TLS and authentication",
    },
    Allowed {
        from: "export",
        to: "memory",
        why: "the heap goes back to the system after a large exposition",
    },
    Allowed {
        from: Allowed::ANY,
        to: "host",
        why: "host/ is the one reader of /proc, users, clock and limits",
    },
];

/// Imports that break the rules today, each to be removed (issue 26,
/// "Layers hold"). Each entry names the importing file and the module it
/// imports; the check fails when one is no longer there, so that this
/// list only shrinks.
pub const KNOWN_EXCEPTIONS: &[Exception] = &[
    Exception {
        file: "attribution/socket/server.rs",
        to: "export::metrics",
    },
    Exception {
        file: "host/preflight.rs",
        to: "cgroup::layout",
    },
];

/// Modules for the tests, benchmarks and fuzzers only: declared in lib.rs
/// under `#[cfg(feature = "testing")]`, a feature the daemon's own build
/// never turns on.
pub const TEST_ONLY: &[&str] = &["testing", "fuzzing"];

pub const RULES: Rules = Rules {
    layers: LAYERS,
    sideways: SIDEWAYS,
    exceptions: KNOWN_EXCEPTIONS,
};

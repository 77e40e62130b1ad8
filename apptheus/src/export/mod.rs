//! From samples to what readers get: the catalogue of every metric, the
//! snapshot scrapes and pushes read, the families it gives, and their
//! encodings.
pub(crate) mod cadence;
pub(crate) mod catalogue;
pub(crate) mod demand;
pub(crate) mod exposition;
pub(crate) mod families;
pub(crate) mod metrics;
pub(crate) mod prepared;
pub(crate) mod protos;
pub(crate) mod schedule;
pub(crate) mod snapshot;

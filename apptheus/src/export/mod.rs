//! From samples to what readers get: the catalogue of every metric, the
//! snapshot scrapes and pushes read, the families it gives, and their
//! encodings.
pub(crate) mod catalogue;
pub(crate) mod exposition;
pub(crate) mod families;
pub(crate) mod metrics;
pub(crate) mod on_demand;
pub(crate) mod prepared;
pub(crate) mod protos;
pub(crate) mod self_metrics;
pub(crate) mod snapshot;
pub(crate) mod store;

//! From samples to metric families and their text and protobuf encodings.
pub(crate) mod exposition;
pub(crate) mod families;
pub(crate) mod metrics;

//! Which processes are which container's: the kernel programs, Apptainer's
//! monitoring socket, and the trusted starters both rely on.
pub(crate) mod apptainer;
pub(crate) mod kernel;
pub(crate) mod socket;
pub(crate) mod trust;

//! Apptainer's monitoring socket: a drop-in for `allow monitoring = yes`.
//!
//! With that setting, Apptainer's starter "master" process connects to a
//! unix stream socket (apptainer.conf key `apptheus communication socket
//! path`, default `/run/apptheus/gateway.sock`), sends nothing, and keeps the
//! connection open for the container's life. The caller is identified by
//! its credentials alone:
//!
//! 1. `SO_PEERCRED` gives the pid, uid and gid of the connecting process;
//! 2. a pidfd pins that process (`SO_PEERPIDFD` on Linux 6.5 and later,
//!    `pidfd_open` before);
//! 3. `/proc/<pid>/exe` is stat'ed: the link leads to the executable file
//!    actually running, even in another mount namespace, and its device and
//!    inode are compared with the trusted set;
//! 4. the process start time is read before and after, and the pidfd must
//!    still refer to a live process afterwards, so the pid was not reused
//!    while `/proc` was read.
//!
//! A trusted caller yields [`SocketEvent::Connected`], and
//! [`SocketEvent::Disconnected`] when it closes the connection. Anything else
//! is closed at once and counted. Nothing is ever read from a caller
//! (bytes it sends are discarded), so no client input is parsed.
//!
//! Resources are bounded whatever local users do: see [`Limits`].

pub(crate) mod limits;
mod listener;
mod server;
pub mod verify;

use std::path::PathBuf;

use apptheus_common::FileId;

pub use crate::host::limits::raise_fd_limit;
pub use limits::Limits;
pub use listener::{SocketListenerHandle, bind};
pub use server::serve;
#[cfg(feature = "testing")]
pub use server::serve_with;

/// Identifies one accepted connection for the life of one [`serve`] call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(pub u64);

/// What the socket reports to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketEvent {
    /// A trusted starter connected.
    Connected {
        conn: ConnId,
        /// The starter's pid, in the daemon's pid namespace.
        pid: u32,
        uid: u32,
        gid: u32,
        /// The identity of the executable the caller runs (one of the
        /// trusted set).
        exe: FileId,
        /// The caller's start time in clock ticks since boot (field 22 of
        /// `/proc/<pid>/stat`); with `pid` it names the process uniquely for
        /// the life of the host.
        start_time: u64,
    },
    /// The trusted starter of `conn` closed its connection (its container
    /// ended), or the connection failed.
    Disconnected { conn: ConnId },
}

/// Why the socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("socket path {path} has no parent directory; choose --socket.path")]
    NoParent { path: PathBuf },
    #[error("cannot create the socket directory {dir}: {source}")]
    CreateDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing to serve in {dir}: {reason}, so another user could replace the socket; \
         make it owned by root and not group- or world-writable, or choose --socket.path"
    )]
    UnsafeDir { dir: PathBuf, reason: &'static str },
    #[error("another apptheus is serving {path}; stop it or choose --socket.path")]
    InUse { path: PathBuf },
    #[error("{path} exists and is not a socket; remove it or choose --socket.path")]
    NotASocket { path: PathBuf },
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot remove the stale socket {path}: {source}")]
    RemoveStale {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot bind {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot make {path} connectable by every user (mode 0666): {source}")]
    Permissions {
        path: PathBuf,
        source: std::io::Error,
    },
}

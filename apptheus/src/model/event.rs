//! What the kernel programs report, decoded.
use apptheus_common::FileId;

/// A decoded kernel event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KernelEvent {
    /// A trusted starter was executed by a task in no container.
    Started {
        container: u64,
        tgid: u32,
        uid: u32,
        gid: u32,
        boot_ns: u64,
        file: FileId,
        /// The starter's parent runs a trusted launcher.
        parent_launcher: bool,
        /// The starter's first argument (how Apptainer names the run).
        arg0: String,
    },
    Exited {
        container: u64,
        boot_ns: u64,
    },
    /// A task of the container was chosen as an OOM victim.
    OomKill {
        container: u64,
        /// The victim's task id.
        pid: u32,
        /// Its command; empty when the kernel's tracepoint gives only a pid.
        comm: String,
        boot_ns: u64,
    },
    /// A trusted launcher (Apptainer's command-line tool) was executed.
    LauncherExec {
        tgid: u32,
        boot_ns: u64,
    },
    /// Someone else moved a task of the container into another cgroup.
    TaskMoved {
        container: u64,
        tgid: u32,
        tid: u32,
    },
    /// A watched process of the container exited.
    WatchedExit {
        container: u64,
        tgid: u32,
    },
}

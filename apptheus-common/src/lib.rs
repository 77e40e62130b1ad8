//! Types shared by apptheus' kernel programs and its daemon.
//!
//! Everything here is `#[repr(C)]`, plain old data, and has its size checked
//! at compile time: the kernel and user space must agree byte for byte.
#![no_std]

/// Trusted starter binaries the kernel compares an exec against.
pub const MAX_TRUSTED_FILES: u32 = 256;
/// Tasks (threads) attributed to containers at one time, node-wide.
pub const MAX_TASKS: u32 = 262_144;
/// Containers alive (or exited, awaiting their final sample) at one time.
pub const MAX_CONTAINERS: u32 = 16_384;
/// Size of the event ring buffer. An event is 64 bytes (+8 header), so this
/// holds about 14,000 events between two reads.
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// Name of the map holding the trusted set.
pub const MAP_TRUSTED: &str = "TRUSTED";
/// Name of the map from task id to container id.
pub const MAP_TASKS: &str = "TASKS";
/// Name of the map from container id to its kernel-side state.
pub const MAP_CONTAINERS: &str = "CONTAINERS";
/// Name of the event ring buffer.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU array of agent-level counters (see [`Stat`]).
pub const MAP_STATS: &str = "STATS";
/// Name of the global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";

/// Identity of an executable file: the device of its filesystem, in the
/// kernel's internal `dev_t` encoding (`major << 20 | minor`, see
/// [`kernel_dev`]), and its inode number.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

/// Encodes a device number the way the kernel stores it in
/// `super_block.s_dev` (`MKDEV`), from the major and minor numbers that
/// user space gets from `stat(2)`.
pub const fn kernel_dev(major: u32, minor: u32) -> u64 {
    ((major as u64) << 20) | (minor as u64 & 0xfffff)
}

/// Per-container state kept by the kernel programs. Counters are only ever
/// added to with atomic adds, so they are exact across CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContainerState {
    /// Tasks (threads) of the container alive now.
    pub live_tasks: u64,
    /// execve()s by the container's tasks, the starter's own included.
    pub execs: u64,
    /// New processes (fork, vfork, clone without CLONE_THREAD).
    pub forks: u64,
    /// New threads (clone with CLONE_THREAD).
    pub threads_created: u64,
    /// Processes whose thread-group leader exited.
    pub process_exits: u64,
    /// CLOCK_BOOTTIME of the starter's exec, in nanoseconds.
    pub start_boot_ns: u64,
    /// Thread-group id of the starter.
    pub starter_tgid: u32,
    /// Real uid of the starter's caller.
    pub uid: u32,
    /// Real gid of the starter's caller.
    pub gid: u32,
    /// Non-zero once the last task has exited.
    pub exited: u32,
    /// The trusted file that was executed.
    pub starter: FileId,
}

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A trusted starter was executed by a task not yet in a container.
    ContainerStarted = 1,
    /// The last task of a container exited.
    ContainerExited = 2,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::ContainerStarted),
            2 => Some(Self::ContainerExited),
            _ => None,
        }
    }
}

/// An event from the kernel programs to user space, through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Event {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    /// Thread-group id of the task concerned.
    pub tgid: u32,
    /// Container id (the `CONTAINERS` key).
    pub container: u64,
    /// CLOCK_BOOTTIME when it happened, in nanoseconds.
    pub boot_ns: u64,
    pub uid: u32,
    pub gid: u32,
    /// For `ContainerStarted`: the trusted file.
    pub file: FileId,
    pub _reserved: [u64; 2],
}

pub const EVENT_SIZE: usize = 64;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<ContainerState>() == 80);
const _: () = assert!(core::mem::size_of::<FileId>() == 16);

/// Indexes of the per-CPU `STATS` array.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events that did not fit in the ring buffer.
    EventsLost = 0,
    /// Tasks that could not be attributed because `TASKS` was full.
    TasksMapFull = 1,
    /// Trusted execs that could not start a container because `CONTAINERS` was full.
    ContainersMapFull = 2,
}
pub const STAT_COUNT: u32 = 3;

/// Field offsets in kernel structures, resolved by user space from the
/// running kernel's BTF (there is no CO-RE for Rust eBPF programs).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Offsets {
    pub task_pid: u32,
    pub task_tgid: u32,
    pub binprm_file: u32,
    pub file_inode: u32,
    pub inode_ino: u32,
    pub inode_sb: u32,
    pub sb_dev: u32,
    pub _pad: u32,
}

/// Configuration handed to the kernel programs at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub offsets: Offsets,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), Copy, made only of integers with no
    // padding (sizes asserted above), so every bit pattern is valid.
    unsafe impl aya::Pod for super::FileId {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::ContainerState {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Event {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::Config {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_dev_matches_mkdev() {
        // /dev/vda1 is 254:1 on many VMs; MKDEV(254, 1) = 254 << 20 | 1.
        assert_eq!(kernel_dev(254, 1), 0x0fe0_0001);
        assert_eq!(kernel_dev(0, 0x2c), 0x2c);
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in [EventKind::ContainerStarted, EventKind::ContainerExited] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(99), None);
    }
}

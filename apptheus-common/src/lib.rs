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
/// Containers (starter runs) with a run-queue latency histogram at one
/// time: the slots of [`MAP_RUNQ`] (a per-CPU array: 192 bytes per slot
/// and CPU), numbered from 1.
pub const MAX_RUNQ_CONTAINERS: u32 = 1024;
/// Size of the event ring buffer. An event is 136 bytes (+8 header), so
/// this holds about 7,000 events between two reads.
pub const EVENT_RING_BYTES: u32 = 1 << 20;

/// Name of the map holding the trusted set: file identity to its role
/// ([`TRUST_STARTER`] or [`TRUST_LAUNCHER`]).
pub const MAP_TRUSTED: &str = "TRUSTED";
/// A trusted starter: its exec starts a container.
pub const TRUST_STARTER: u8 = 1;
/// Apptainer's command-line tool, which execs a starter shortly after it
/// starts: its exec is reported ([`EventKind::LauncherExec`]) so user space
/// can prepare for the placement, and attributes nothing.
pub const TRUST_LAUNCHER: u8 = 2;
/// Name of the map from task id to [`TaskEntry`] (its container).
pub const MAP_TASKS: &str = "TASKS";
/// Name of the map from container id to its kernel-side state.
pub const MAP_CONTAINERS: &str = "CONTAINERS";
/// Name of the event ring buffer.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU array of agent-level counters (see [`Stat`]).
pub const MAP_STATS: &str = "STATS";
/// Name of the global holding [`Config`].
pub const GLOBAL_CONFIG: &str = "CONFIG";
/// Name of the per-CPU array of run-queue latency histograms
/// ([`RunqHistogram`]), indexed by container slot (1 to
/// [`MAX_RUNQ_CONTAINERS`]; index 0 is unused).
pub const MAP_RUNQ: &str = "RUNQ";
/// Name of the map from container id to its run-queue latency slot (a
/// `u32`), written by user space when it learns of the container; the
/// switch program resolves a task's [`RUNQ_SLOT_UNRESOLVED`] through it.
/// [`RUNQ_SLOT_NONE`] there: no slot was free.
pub const MAP_RUNQ_SLOTS: &str = "RUNQ_SLOTS";
/// Name of the map from cgroup2 id (the inode of the container's cgroup2
/// directory) to container id (network collector).
pub const MAP_CGROUPS: &str = "CGROUPS";
/// Name of the array of run-queue latency entries, one `u64` per task id
/// ([`runq_entry`]: the task's container slot and its run delay as last
/// seen): the one lookup every context switch on the node pays is an
/// index, not a hash.
pub const MAP_RUNQ_TASKS: &str = "RUNQ_TASKS";
/// Name of the map of watched processes: thread-group id -> container id.
/// User space adds a process whose exit must be reported
/// ([`EventKind::WatchedExit`]): one a runtime moved into a cgroup of its
/// own, which the runtime removes soon after that process exits.
pub const MAP_WATCHED: &str = "WATCHED";
/// Processes watched at one time.
pub const MAX_WATCHED: u32 = 16_384;
/// Bytes of a starter's first argument carried by
/// [`EventKind::ContainerStarted`] (Apptainer names the run there, e.g.
/// `Apptainer instance: <user> [<name>]`), NUL-padded.
pub const START_ARGS_LEN: usize = 64;
/// [`Event::flags`] of a start: the starter's parent runs a trusted
/// launcher (Apptainer's command-line tool runs the starter itself, for an
/// instance or a helper run, rather than replacing itself with it).
pub const START_PARENT_LAUNCHER: u32 = 1;

/// Task ids that `RUNQ_TASKS` can hold: the kernel's PID_MAX_LIMIT on
/// 64-bit machines (`kernel.pid_max` can be raised to it, not beyond).
pub const MAX_RUNQ_TASKS: u32 = 4_194_304;

/// A `RUNQ_TASKS` entry's slot: the task is in no container (or its
/// container has no histogram).
pub const RUNQ_SLOT_NONE: u32 = 0;
/// A `RUNQ_TASKS` entry's slot: the task is a container's, whose slot is
/// looked up in `RUNQ_SLOTS` at its next switch (its container started
/// before user space gave it a slot).
pub const RUNQ_SLOT_UNRESOLVED: u32 = 0xffff;
/// Bits of a `RUNQ_TASKS` entry holding the run delay last seen (ns; the
/// entry's low bits, counted modulo 2^48: 78 hours between two waits of
/// one task).
pub const RUNQ_SEEN_BITS: u32 = 48;
const RUNQ_SEEN_MASK: u64 = (1 << RUNQ_SEEN_BITS) - 1;
/// The run delay last seen is unknown (a task adopted, or exec'd in).
pub const RUNQ_SEEN_UNKNOWN: u64 = RUNQ_SEEN_MASK;

// A slot fits in an entry, below the unresolved mark.
const _: () = assert!(MAX_RUNQ_CONTAINERS < RUNQ_SLOT_UNRESOLVED);

/// A `RUNQ_TASKS` entry: container slot (16 bits) and run delay last seen
/// (48 bits, or [`RUNQ_SEEN_UNKNOWN`]).
#[inline(always)]
pub const fn runq_entry(slot: u32, seen: u64) -> u64 {
    ((slot as u64 & 0xffff) << RUNQ_SEEN_BITS) | (seen & RUNQ_SEEN_MASK)
}

/// The slot of a `RUNQ_TASKS` entry.
#[inline(always)]
pub const fn runq_entry_slot(entry: u64) -> u32 {
    (entry >> RUNQ_SEEN_BITS) as u32
}

/// The run delay last seen of a `RUNQ_TASKS` entry (48 bits).
#[inline(always)]
pub const fn runq_entry_seen(entry: u64) -> u64 {
    entry & RUNQ_SEEN_MASK
}

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

/// What the kernel keeps per attributed task (the `TASKS` value).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskEntry {
    /// Container id (the `CONTAINERS` key).
    pub container: u64,
    /// Not read any more: the run-queue latency collector keeps a task's
    /// run delay in `RUNQ_TASKS` ([`runq_entry`]). Kept so that the map's
    /// layout stays; written as [`RUN_DELAY_UNKNOWN`] or 0.
    pub run_delay_seen: u64,
}
const _: () = assert!(core::mem::size_of::<TaskEntry>() == 16);

/// [`TaskEntry::run_delay_seen`] of a task whose earlier waits the
/// programs did not follow (attributed at exec, or adopted): its first
/// observation counts only the last piece of its wait.
pub const RUN_DELAY_UNKNOWN: u64 = u64::MAX;

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
    /// Tasks of the container chosen as OOM victims (`mark_victim`).
    pub oom_kills: u64,
    /// Bytes and packets received by the container's sockets (cgroup_skb
    /// ingress; IP headers included).
    pub net_rx_bytes: u64,
    pub net_rx_packets: u64,
    /// Bytes and packets sent by the container's sockets (cgroup_skb egress).
    pub net_tx_bytes: u64,
    pub net_tx_packets: u64,
    /// Bytes returned by read-like syscalls on regular files.
    pub fs_read_bytes: u64,
    /// Bytes returned by write-like syscalls on regular files.
    pub fs_write_bytes: u64,
    /// What the container's exited tasks used, added at each task's exit:
    /// its CPU time (task_struct.se.sum_exec_runtime, nanoseconds) and its
    /// storage I/O (task_struct.ioac.read_bytes and write_bytes; zero when
    /// the kernel has no task I/O accounting).
    pub exited_runtime_ns: u64,
    pub exited_read_bytes: u64,
    pub exited_write_bytes: u64,
    /// What the starter's task had used before it became the starter (the
    /// same quantities, read at its exec): a batch script that `exec`s
    /// Apptainer hands its own process on, and what that process used as
    /// the script is not the container's. Subtracted from the container's
    /// totals.
    pub start_runtime_ns: u64,
    pub start_read_bytes: u64,
    pub start_write_bytes: u64,
}

/// What an [`Event`] reports.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A trusted starter was executed by a task not yet in a container.
    ContainerStarted = 1,
    /// The last task of a container exited.
    ContainerExited = 2,
    /// A task of a container was chosen as an OOM victim.
    OomKill = 3,
    /// A trusted launcher (Apptainer's command-line tool) was executed by a
    /// task not in a container.
    LauncherExec = 4,
    /// A task of a container was moved into another cgroup by someone
    /// other than apptheus (a runtime's own cgroup, e.g. Apptainer's
    /// `--memory`, an instance, runc or crun).
    TaskMoved = 5,
    /// A watched process (see `MAP_WATCHED`) exited.
    WatchedExit = 6,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::ContainerStarted),
            2 => Some(Self::ContainerExited),
            3 => Some(Self::OomKill),
            4 => Some(Self::LauncherExec),
            5 => Some(Self::TaskMoved),
            6 => Some(Self::WatchedExit),
            _ => None,
        }
    }
}

/// An event from the kernel programs to user space, through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// An [`EventKind`] as u32.
    pub kind: u32,
    /// Thread-group id of the task concerned (for `OomKill`: the victim's
    /// task id).
    pub tgid: u32,
    /// Container id (the `CONTAINERS` key).
    pub container: u64,
    /// CLOCK_BOOTTIME when it happened, in nanoseconds.
    pub boot_ns: u64,
    pub uid: u32,
    pub gid: u32,
    /// For `ContainerStarted`: the trusted file.
    pub file: FileId,
    /// For `OomKill`: the victim's command (`task_struct.comm`), NUL-padded;
    /// all zeroes when the kernel's tracepoint gives only a pid.
    pub comm: [u8; TASK_COMM_LEN],
    /// For `ContainerStarted`: [`START_PARENT_LAUNCHER`] and the like.
    pub flags: u32,
    /// For `TaskMoved`: the moved task's id (`tgid` is its process).
    pub tid: u32,
    /// For `ContainerStarted`: the starter's first argument, NUL-padded.
    pub args: [u8; START_ARGS_LEN],
}

/// Length of `task_struct.comm`, the terminating NUL included.
pub const TASK_COMM_LEN: usize = 16;

impl Default for Event {
    fn default() -> Self {
        Self {
            kind: 0,
            tgid: 0,
            container: 0,
            boot_ns: 0,
            uid: 0,
            gid: 0,
            file: FileId { dev: 0, ino: 0 },
            comm: [0; TASK_COMM_LEN],
            flags: 0,
            tid: 0,
            args: [0; START_ARGS_LEN],
        }
    }
}

pub const EVENT_SIZE: usize = 136;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<ContainerState>() == 184);
const _: () = assert!(core::mem::size_of::<FileId>() == 16);

/// Indexes of the per-CPU `STATS` array: everything a program had to
/// drop, each counted (user space exports them all).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Events that did not fit in the ring buffer.
    EventsLost = 0,
    /// Tasks that could not be attributed because `TASKS` was full.
    TasksMapFull = 1,
    /// Trusted execs that could not start a container because `CONTAINERS` was full.
    ContainersMapFull = 2,
    /// Run-queue latency observations dropped because `RUNQ` was full.
    RunqMapFull = 3,
    /// Runs of a program that stopped early on a kernel read that failed
    /// (what it was handling is lost: an exec not recognised, a child not
    /// followed, an exited task's usage not banked, a move not reported, an
    /// OOM kill not counted, file bytes not counted), one per program.
    ExecErrors = 4,
    ForkErrors = 5,
    ExitErrors = 6,
    AttachErrors = 7,
    OomErrors = 8,
    FsioErrors = 9,
}
pub const STAT_COUNT: u32 = 10;

impl Stat {
    /// Every counter, in index order.
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::EventsLost,
        Stat::TasksMapFull,
        Stat::ContainersMapFull,
        Stat::RunqMapFull,
        Stat::ExecErrors,
        Stat::ForkErrors,
        Stat::ExitErrors,
        Stat::AttachErrors,
        Stat::OomErrors,
        Stat::FsioErrors,
    ];
}

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
    /// task_struct.comm (OOM collector: the victim's command).
    pub task_comm: u32,
    /// task_struct.files, files_struct.fdt, fdtable.max_fds, fdtable.fd,
    /// inode.i_mode (file I/O collector: is the descriptor a regular file?).
    pub task_files: u32,
    pub files_fdt: u32,
    pub fdt_max_fds: u32,
    pub fdt_fd: u32,
    pub inode_mode: u32,
    /// pt_regs.orig_ax and pt_regs.di (x86_64; file I/O collector: the
    /// syscall number and its first argument at syscall exit).
    pub regs_orig_ax: u32,
    pub regs_di: u32,
    /// task_struct.sched_info.last_queued, task_struct.se.cfs_rq,
    /// cfs_rq.rq, rq.clock (run-queue latency collector: when the kernel
    /// queued the task, and its run queue's clock at the switch, the two
    /// values the kernel's own run_delay accounting subtracts).
    pub task_last_queued: u32,
    /// task_struct.sched_info.run_delay.
    pub task_run_delay: u32,
    pub task_cfs_rq: u32,
    pub cfs_rq_rq: u32,
    pub rq_clock: u32,
    /// task_struct.real_parent, task_struct.mm, mm_struct.exe_file,
    /// mm_struct.arg_start (a starter's exec: who ran it, and its first
    /// argument).
    pub task_real_parent: u32,
    pub task_mm: u32,
    pub mm_exe_file: u32,
    pub mm_arg_start: u32,
    /// task_struct.se.sum_exec_runtime, task_struct.ioac.read_bytes and
    /// task_struct.ioac.write_bytes (what an exiting task used); 0 where
    /// the kernel lacks the field (no task I/O accounting), which none of
    /// them can be at.
    pub task_runtime: u32,
    pub task_read_bytes: u32,
    pub task_write_bytes: u32,
}
const _: () = assert!(core::mem::size_of::<Offsets>() == 108);

/// Configuration handed to the kernel programs at load time.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    pub offsets: Offsets,
    /// Non-zero when the `mark_victim` tracepoint's first argument is the
    /// victim's pid (`TP_PROTO(int pid)`, kernels before 6.8) rather than its
    /// `struct task_struct *`.
    pub oom_arg_is_pid: u32,
    /// apptheus' own process id: cgroup moves it makes are its placements,
    /// not a runtime's.
    pub agent_tgid: u32,
}
const _: () = assert!(core::mem::size_of::<Config>() == 116);

/// Run-queue latency histogram buckets: slot 0 holds latencies below 1 us,
/// slot `s` (1..=20) those in [2^(s-1), 2^s) us, the last slot those of
/// 2^20 us (about 1.05 s) and more. As a Prometheus histogram: `le` of slot
/// `s` is 2^s microseconds, for s in 0..=20, then +Inf.
pub const RUNQ_BUCKETS: usize = 21;
/// Slots in a [`RunqHistogram`]: the finite buckets and the overflow.
pub const RUNQ_SLOTS: usize = RUNQ_BUCKETS + 1;

/// A container's run-queue latency histogram (one per CPU in the kernel's
/// per-CPU map; user space sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RunqHistogram {
    /// Observations per slot (not cumulative), see [`RUNQ_BUCKETS`].
    pub slots: [u64; RUNQ_SLOTS],
    /// Sum of the observed latencies, in nanoseconds.
    pub sum_ns: u64,
    pub _reserved: u64,
}
const _: () = assert!(core::mem::size_of::<RunqHistogram>() == 192);

/// One observed run-queue wait of a task being switched in, and the
/// task's new run delay last seen (48 bits, for its [`runq_entry`]).
/// `last_piece` is the run queue's clock minus `sched_info.last_queued`,
/// `run_delay` the task's `sched_info.run_delay` before the kernel adds
/// `last_piece` to it, and `seen` its low 48 bits after the previous
/// observed wait (or [`RUNQ_SEEN_UNKNOWN`]): what the kernel added in
/// between is the earlier pieces of this wait (accounted when the task was
/// moved off another CPU's queue).
#[inline(always)]
pub const fn runq_wait(last_piece: u64, run_delay: u64, seen: u64) -> (u64, u64) {
    let earlier = if seen == RUNQ_SEEN_UNKNOWN {
        0
    } else {
        // Modulo 2^48: a wrap of the low bits in between is no wait.
        run_delay.wrapping_sub(seen) & RUNQ_SEEN_MASK
    };
    (
        earlier.saturating_add(last_piece),
        run_delay.wrapping_add(last_piece) & RUNQ_SEEN_MASK,
    )
}

/// The histogram slot of a latency of `ns` nanoseconds (see
/// [`RUNQ_BUCKETS`]): the bit length of the latency in whole microseconds,
/// capped at the overflow slot. Branch-light and loop-free, for the kernel.
#[inline(always)]
pub const fn runq_slot(ns: u64) -> usize {
    let mut us = ns / 1000;
    let mut bits = 0usize;
    if us >= 1 << 32 {
        us >>= 32;
        bits += 32;
    }
    if us >= 1 << 16 {
        us >>= 16;
        bits += 16;
    }
    if us >= 1 << 8 {
        us >>= 8;
        bits += 8;
    }
    if us >= 1 << 4 {
        us >>= 4;
        bits += 4;
    }
    if us >= 1 << 2 {
        us >>= 2;
        bits += 2;
    }
    if us >= 1 << 1 {
        us >>= 1;
        bits += 1;
    }
    bits += us as usize;
    if bits > RUNQ_BUCKETS {
        RUNQ_BUCKETS
    } else {
        bits
    }
}

/// Which way bytes go in a syscall the file I/O collector counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IoDirection {
    Read,
    Write,
}

/// The read-like and write-like syscalls, by their x86_64 numbers: read,
/// pread64, readv, preadv, preadv2 / write, pwrite64, writev, pwritev,
/// pwritev2.
#[inline(always)]
pub const fn x86_64_io_syscall(nr: u64) -> Option<IoDirection> {
    match nr {
        0 | 17 | 19 | 295 | 327 => Some(IoDirection::Read),
        1 | 18 | 20 | 296 | 328 => Some(IoDirection::Write),
        _ => None,
    }
}

/// `S_IFMT` and `S_IFREG` of `inode.i_mode`.
pub const S_IFMT: u16 = 0o170000;
pub const S_IFREG: u16 = 0o100000;

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
    // SAFETY: as above.
    unsafe impl aya::Pod for super::RunqHistogram {}
    // SAFETY: as above.
    unsafe impl aya::Pod for super::TaskEntry {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runq_wait_adds_the_pieces_accounted_at_a_move() {
        // Queued once: the last piece is the whole wait.
        assert_eq!(runq_wait(30, 100, 100), (30, 130));
        // Moved once while waiting: 20 ns were accounted at the move.
        assert_eq!(runq_wait(30, 120, 100), (50, 150));
        // Unknown history: the last piece only.
        assert_eq!(runq_wait(30, 5_000, RUNQ_SEEN_UNKNOWN), (30, 5_030));
        let (_, seen) = runq_wait(30, 120, 100);
        assert_eq!(runq_wait(10, seen, seen), (10, 160));
        // The low 48 bits wrap: still the difference.
        let big = (1u64 << RUNQ_SEEN_BITS) + 5;
        let seen = (1u64 << RUNQ_SEEN_BITS) - 15;
        assert_eq!(runq_wait(30, big, seen), (50, 35));
    }

    #[test]
    fn runq_entries_hold_a_slot_and_a_run_delay() {
        let e = runq_entry(7, 123_456);
        assert_eq!(runq_entry_slot(e), 7);
        assert_eq!(runq_entry_seen(e), 123_456);
        let e = runq_entry(RUNQ_SLOT_UNRESOLVED, RUNQ_SEEN_UNKNOWN);
        assert_eq!(runq_entry_slot(e), RUNQ_SLOT_UNRESOLVED);
        assert_eq!(runq_entry_seen(e), RUNQ_SEEN_UNKNOWN);
        // The run delay is kept modulo 2^48.
        assert_eq!(
            runq_entry_seen(runq_entry(1, u64::MAX - 1)),
            RUNQ_SEEN_UNKNOWN - 1
        );
        assert_eq!(runq_entry(RUNQ_SLOT_NONE, 99), 99);
    }

    #[test]
    fn kernel_dev_matches_mkdev() {
        // /dev/vda1 is 254:1 on many VMs; MKDEV(254, 1) = 254 << 20 | 1.
        assert_eq!(kernel_dev(254, 1), 0x0fe0_0001);
        assert_eq!(kernel_dev(0, 0x2c), 0x2c);
    }

    #[test]
    fn stats_are_numbered_in_order() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i);
        }
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in [
            EventKind::ContainerStarted,
            EventKind::ContainerExited,
            EventKind::OomKill,
        ] {
            assert_eq!(EventKind::from_u32(k as u32), Some(k));
        }
        assert_eq!(EventKind::from_u32(0), None);
        assert_eq!(EventKind::from_u32(99), None);
    }

    #[test]
    fn runq_slots_are_log2_microseconds() {
        assert_eq!(runq_slot(0), 0);
        assert_eq!(runq_slot(999), 0, "below 1 us");
        assert_eq!(runq_slot(1_000), 1, "[1, 2) us");
        assert_eq!(runq_slot(1_999), 1);
        assert_eq!(runq_slot(2_000), 2, "[2, 4) us");
        assert_eq!(runq_slot(3_999), 2);
        assert_eq!(runq_slot(4_000), 3);
        assert_eq!(runq_slot(1_000_000), 10, "1 ms in [512, 1024) us");
        assert_eq!(runq_slot(1_048_575_999), 20, "just below 2^20 us");
        assert_eq!(runq_slot(1_048_576_000), RUNQ_BUCKETS, "2^20 us overflows");
        assert_eq!(runq_slot(u64::MAX), RUNQ_BUCKETS);
        // Every slot s < RUNQ_BUCKETS holds only latencies below 2^s us,
        // which is what a cumulative `le` bound needs.
        for s in 0..RUNQ_BUCKETS {
            let le_ns = (1u64 << s) * 1000;
            assert_eq!(runq_slot(le_ns - 1), s, "slot {s}");
            assert!(runq_slot(le_ns) > s, "slot {s}");
        }
    }

    #[test]
    fn io_syscalls_of_x86_64() {
        assert_eq!(x86_64_io_syscall(0), Some(IoDirection::Read));
        assert_eq!(x86_64_io_syscall(1), Some(IoDirection::Write));
        assert_eq!(x86_64_io_syscall(327), Some(IoDirection::Read));
        assert_eq!(x86_64_io_syscall(328), Some(IoDirection::Write));
        // openat, close, sendfile, recvfrom, sendto: not counted.
        for nr in [257, 3, 40, 45, 44] {
            assert_eq!(x86_64_io_syscall(nr), None, "{nr}");
        }
    }
}

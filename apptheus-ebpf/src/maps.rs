//! The maps and globals shared by the programs and with user space.
use apptheus_common::{
    Config, ContainerState, EVENT_RING_BYTES, FileId, MAX_CONTAINERS, MAX_RUNQ_CONTAINERS,
    MAX_TASKS, MAX_TRUSTED_FILES, MAX_WATCHED, RunqHistogram, STAT_COUNT, TaskEntry,
};
use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, RingBuf},
};

/// The trusted starters, by file identity. Written only by user space.
#[map]
pub static TRUSTED: HashMap<FileId, u8> = HashMap::with_max_entries(MAX_TRUSTED_FILES, 0);

/// Task id (a thread's pid) -> its container (and run-queue timestamp).
#[map]
pub static TASKS: HashMap<u32, TaskEntry> = HashMap::with_max_entries(MAX_TASKS, 0);

/// Container id -> its state and counters.
#[map]
pub static CONTAINERS: HashMap<u64, ContainerState> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Container started / exited events.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENT_RING_BYTES, 0);

/// Agent-level counters, indexed by `apptheus_common::Stat`.
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

/// Where the exec program builds a new container's state before it goes
/// into [`CONTAINERS`]: on the program's stack it would take 184 of the
/// 512 bytes that the verifier allows, and Linux 5.10's verifier counts
/// the stack of the program's calls together (the program was refused
/// there: "combined stack size of 2 calls is 544").
#[map]
pub static NEW_STATE: PerCpuArray<ContainerState> = PerCpuArray::with_max_entries(1, 0);

/// Run-queue latency collector: a histogram per container slot, per CPU
/// (slot 0 unused).
#[map]
pub static RUNQ: PerCpuArray<RunqHistogram> =
    PerCpuArray::with_max_entries(MAX_RUNQ_CONTAINERS + 1, 0);

/// Run-queue latency collector: container id -> its slot, written by user
/// space when it learns of the container.
#[map]
pub static RUNQ_SLOTS: HashMap<u64, u32> = HashMap::with_max_entries(MAX_RUNQ_CONTAINERS, 0);

/// Run-queue latency collector: per task id, its container's slot and its
/// run delay last seen (`apptheus_common::runq_entry`), so that the lookup
/// every context switch on the node pays is an index, not a hash, and a
/// container's task needs no other. User space sizes it to
/// `kernel.pid_max` when the collector is on and to one element when it
/// is off; a task id past its end is not observed.
#[map]
pub static RUNQ_TASKS: Array<u64> = Array::with_max_entries(1, 0);

/// Network collector: cgroup2 id of a container's cgroup -> container id.
/// Written only by user space, when it places a container.
#[map]
pub static CGROUPS: HashMap<u64, u64> = HashMap::with_max_entries(MAX_CONTAINERS, 0);

/// Processes whose exit user space wants to hear of: thread-group id ->
/// container id. Written by user space; the exit program removes an entry
/// when it reports the exit.
#[map]
pub static WATCHED: HashMap<u32, u64> = HashMap::with_max_entries(MAX_WATCHED, 0);

/// Filled in by user space at load time (`EbpfLoader::override_global`).
#[unsafe(no_mangle)]
pub static CONFIG: Config = Config {
    offsets: apptheus_common::Offsets {
        task_pid: 0,
        task_tgid: 0,
        binprm_file: 0,
        file_inode: 0,
        inode_ino: 0,
        inode_sb: 0,
        sb_dev: 0,
        task_comm: 0,
        task_files: 0,
        files_fdt: 0,
        fdt_max_fds: 0,
        fdt_fd: 0,
        inode_mode: 0,
        regs_orig_ax: 0,
        regs_di: 0,
        task_last_queued: 0,
        task_run_delay: 0,
        task_cfs_rq: 0,
        cfs_rq_rq: 0,
        rq_clock: 0,
        task_real_parent: 0,
        task_mm: 0,
        mm_exe_file: 0,
        mm_arg_start: 0,
        task_runtime: 0,
        task_read_bytes: 0,
        task_write_bytes: 0,
    },
    oom_arg_is_pid: 0,
    agent_tgid: 0,
};

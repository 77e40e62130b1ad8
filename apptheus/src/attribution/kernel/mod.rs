//! Loading the kernel programs, and the user-space side of their maps.
pub mod collectors;
pub mod events;
pub mod offsets;
mod runq;
pub mod stats;

use std::{
    collections::{BTreeMap, BTreeSet},
    path::{Path, PathBuf},
};

use apptheus_common::{
    Config, ContainerState, FileId, GLOBAL_CONFIG, MAP_CGROUPS, MAP_CONTAINERS, MAP_EVENTS,
    MAP_RUNQ, MAP_RUNQ_SLOTS, MAP_RUNQ_TASKS, MAP_STATS, MAP_TASKS, MAP_TRUSTED, MAP_WATCHED,
    MAX_CONTAINERS, MAX_RUNQ_CONTAINERS, MAX_RUNQ_TASKS, MAX_TASKS, RUN_DELAY_UNKNOWN,
    RunqHistogram, STAT_COUNT, Stat, TRUST_LAUNCHER, TRUST_STARTER, TaskEntry,
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{Array, HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};

use crate::model::{
    collectors::{Collector, Collectors},
    container::{FsCounters, KernelCounters, NetCounters},
    drops,
    processes::{Baseline, ExitedTotals},
};

/// What to load beyond container attribution.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// The kernel collectors asked for.
    pub collectors: Collectors,
    /// Where cgroup2 is mounted (the network collector attaches to its root).
    pub cgroup2: Option<PathBuf>,
    /// Where /proc is mounted (`kernel.pid_max` sizes a collector's table).
    pub procfs: PathBuf,
    /// How many entries the maps hold.
    pub sizes: Sizes,
}

/// How many entries the kernel's maps hold (`--ebpf.max-tasks`,
/// `--ebpf.max-containers`, `--collector.runqlat.max-containers`): what
/// does not fit is counted (`apptheus_ebpf_map_full_total`) and lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sizes {
    /// Tasks (threads) attributed at once, node-wide.
    pub tasks: u32,
    /// Starter runs alive (or ended, awaiting their final sample) at once.
    pub containers: u32,
    /// Starter runs with a run-queue latency histogram at once.
    pub runq_containers: u32,
}

impl Default for Sizes {
    fn default() -> Self {
        Sizes {
            tasks: MAX_TASKS,
            containers: MAX_CONTAINERS,
            runq_containers: MAX_RUNQ_CONTAINERS,
        }
    }
}

/// The kernel object, built by build.rs from apptheus-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The programs and the tracepoints they attach to. The last sees a
/// runtime move a container's task into a cgroup of its own.
const PROGRAMS: [(&str, &str); 4] = [
    ("apptheus_exec", "sched_process_exec"),
    ("apptheus_fork", "sched_process_fork"),
    ("apptheus_exit", "sched_process_exit"),
    ("apptheus_cgroup_attach", "cgroup_attach_task"),
];

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error(transparent)]
    Offsets(#[from] offsets::OffsetError),
    #[error("loading the kernel's BTF for the programs: {0}")]
    Btf(#[source] aya::BtfError),
    #[error(
        "the kernel refused to load apptheus' programs ({0}); apptheus needs root (or CAP_BPF, \
         CAP_PERFMON and CAP_SYS_RESOURCE), and no kernel lockdown; or run with --ebpf=false"
    )]
    Load(#[source] aya::EbpfError),
    #[error("the kernel refused program {program} on tracepoint {tracepoint}: {source}")]
    Program {
        program: &'static str,
        tracepoint: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("the kernel object has no {0}: the build is broken")]
    Missing(&'static str),
    #[error("kernel map {map}: {source}")]
    Map {
        map: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

fn map_err(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> KernelError {
    move |source| KernelError::Map { map, source }
}

/// The loaded and attached programs and their maps. Dropping it detaches
/// the programs.
pub struct Kernel {
    _ebpf: Ebpf,
    trusted: HashMap<MapData, FileId, u8>,
    tasks: HashMap<MapData, u32, TaskEntry>,
    containers: HashMap<MapData, u64, ContainerState>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// Run-queue latency collector (see `runq`): histograms by slot, each
    /// task id's entry, the slots given (one element each when it is off).
    runq: PerCpuArray<MapData, RunqHistogram>,
    runq_tasks: Array<MapData, u64>,
    runq_slots: HashMap<MapData, u64, u32>,
    runq_slots_given: runq::Slots,
    /// Containers given no run-queue latency slot (every one was taken).
    runq_unobserved: u64,
    cgroups: HashMap<MapData, u64, u64>,
    watched: HashMap<MapData, u32, u64>,
    /// Container id -> the cgroup2 id registered for it in `cgroups`.
    cgroup_ids: BTreeMap<u64, u64>,
    /// The collectors whose programs are attached.
    active: Collectors,
    /// Whether the exit program banks exited tasks' CPU time, and their
    /// storage I/O (the kernel has the fields).
    banks_runtime: bool,
    banks_io: bool,
}

impl Kernel {
    /// Resolves offsets from `btf_path`, loads and attaches the programs
    /// (those of the collectors in `opts` that this kernel supports), and
    /// fills the trusted set (starters and launchers). A collector that
    /// cannot run here is left out with a warning; attribution itself
    /// failing is an error.
    pub fn load(
        btf_path: &Path,
        starters: &BTreeSet<FileId>,
        launchers: &BTreeSet<FileId>,
        opts: &Options,
    ) -> Result<Self, KernelError> {
        let btf_file = offsets::load_btf(btf_path)?;
        let mut config = Config {
            offsets: offsets::resolve(&btf_file)?,
            agent_tgid: std::process::id(),
            ..Config::default()
        };
        let mut wanted = Collectors::NONE;
        for c in opts.collectors.iter() {
            match offsets::resolve_collector(&btf_file, c) {
                Ok(needs) => {
                    offsets::merge(&mut config.offsets, &needs.offsets);
                    if c == Collector::Oom {
                        config.oom_arg_is_pid = u32::from(needs.oom_arg_is_pid);
                    }
                    wanted.insert(c);
                }
                Err(e) => {
                    tracing::warn!(collector = %c, error = %e, "kernel collector not supported by this kernel; disabled")
                }
            }
        }
        tracing::debug!(?config, "kernel struct offsets from BTF");
        let btf =
            Btf::parse_file(btf_path, aya::Endianness::default()).map_err(KernelError::Btf)?;
        let mut loader = EbpfLoader::new();
        let sizes = opts.sizes;
        loader
            .btf(&btf)
            .override_global(GLOBAL_CONFIG, &config, true)
            .map_max_entries(MAP_TASKS, sizes.tasks.max(1))
            .map_max_entries(MAP_CONTAINERS, sizes.containers.max(1))
            .map_max_entries(MAP_CGROUPS, sizes.containers.max(1))
            .map_max_entries(MAP_RUNQ, sizes.runq_containers.max(1) + 1)
            .map_max_entries(MAP_RUNQ_SLOTS, sizes.runq_containers.max(1));
        for c in Collector::ALL.into_iter().filter(|c| !wanted.contains(*c)) {
            for map in collectors::maps(c) {
                loader.map_max_entries(map, 1);
            }
        }
        if wanted.contains(Collector::Runqlat) {
            let pid_max = std::fs::read_to_string(opts.procfs.join(PID_MAX)).ok();
            let pids = runq_pid_table_size(pid_max.as_deref());
            tracing::debug!(
                task_ids = pids,
                "run-queue latency collector: task table sized to kernel.pid_max"
            );
            loader.map_max_entries(MAP_RUNQ_TASKS, pids);
        }
        let mut ebpf = loader.load(OBJECT).map_err(KernelError::Load)?;
        for (program, tracepoint) in PROGRAMS {
            attach(&mut ebpf, &btf, program, tracepoint)?;
        }
        let mut active = Collectors::NONE;
        for c in wanted.iter() {
            match collectors::attach(&mut ebpf, &btf, c, opts.cgroup2.as_deref()) {
                Ok(()) => active.insert(c),
                Err(e) => {
                    tracing::warn!(collector = %c, error = %e, "kernel collector cannot be attached; disabled")
                }
            }
        }
        tracing::info!(collectors = %active, "kernel collectors");
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(KernelError::Missing(name))
        };
        let trusted_map = take(&mut ebpf, MAP_TRUSTED)?;
        let tasks = take(&mut ebpf, MAP_TASKS)?;
        let containers = take(&mut ebpf, MAP_CONTAINERS)?;
        let stats = take(&mut ebpf, MAP_STATS)?;
        let events = take(&mut ebpf, MAP_EVENTS)?;
        let runq = take(&mut ebpf, MAP_RUNQ)?;
        let runq_tasks = take(&mut ebpf, MAP_RUNQ_TASKS)?;
        let runq_slots = take(&mut ebpf, MAP_RUNQ_SLOTS)?;
        let cgroups = take(&mut ebpf, MAP_CGROUPS)?;
        let watched = take(&mut ebpf, MAP_WATCHED)?;
        let mut kernel = Self {
            runq: PerCpuArray::try_from(runq).map_err(map_err(MAP_RUNQ))?,
            runq_tasks: Array::try_from(runq_tasks).map_err(map_err(MAP_RUNQ_TASKS))?,
            runq_slots: HashMap::try_from(runq_slots).map_err(map_err(MAP_RUNQ_SLOTS))?,
            runq_slots_given: runq::Slots::new(sizes.runq_containers.max(1)),
            runq_unobserved: 0,
            cgroups: HashMap::try_from(cgroups).map_err(map_err(MAP_CGROUPS))?,
            watched: HashMap::try_from(watched).map_err(map_err(MAP_WATCHED))?,
            cgroup_ids: BTreeMap::new(),
            active,
            banks_runtime: config.offsets.task_runtime != 0,
            banks_io: config.offsets.task_read_bytes != 0 && config.offsets.task_write_bytes != 0,
            trusted: HashMap::try_from(trusted_map).map_err(map_err(MAP_TRUSTED))?,
            tasks: HashMap::try_from(tasks).map_err(map_err(MAP_TASKS))?,
            containers: HashMap::try_from(containers).map_err(map_err(MAP_CONTAINERS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(MAP_STATS))?,
            events: Some(RingBuf::try_from(events).map_err(map_err(MAP_EVENTS))?),
            _ebpf: ebpf,
        };
        kernel.set_trusted(starters, launchers)?;
        Ok(kernel)
    }

    #[cfg(feature = "testing")]
    /// For the benchmark only: loads the kernel object with every collector
    /// map shrunk, and attaches nothing but `apptheus_switch_baseline`, a
    /// `sched_switch` program that returns at once. Detached when the
    /// returned object is dropped.
    pub fn attach_switch_baseline(btf_path: &Path) -> Result<Ebpf, KernelError> {
        let btf =
            Btf::parse_file(btf_path, aya::Endianness::default()).map_err(KernelError::Btf)?;
        let mut loader = EbpfLoader::new();
        loader.btf(&btf);
        for c in Collector::ALL {
            for map in collectors::maps(c) {
                loader.map_max_entries(map, 1);
            }
        }
        let mut ebpf = loader.load(OBJECT).map_err(KernelError::Load)?;
        attach(&mut ebpf, &btf, "apptheus_switch_baseline", "sched_switch")?;
        Ok(ebpf)
    }

    /// Takes the event ring buffer, for the event reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Makes the kernel's trusted set exactly `starters` and `launchers`
    /// (a file in both is a starter).
    pub fn set_trusted(
        &mut self,
        starters: &BTreeSet<FileId>,
        launchers: &BTreeSet<FileId>,
    ) -> Result<(), KernelError> {
        let wanted: BTreeMap<FileId, u8> = launchers
            .iter()
            .map(|id| (*id, TRUST_LAUNCHER))
            .chain(starters.iter().map(|id| (*id, TRUST_STARTER)))
            .collect();
        let current: BTreeMap<FileId, u8> = self.trusted.iter().filter_map(Result::ok).collect();
        for (id, role) in &wanted {
            if current.get(id) != Some(role) {
                self.trusted
                    .insert(id, role, 0)
                    .map_err(map_err(MAP_TRUSTED))?;
            }
        }
        for id in current.keys().filter(|id| !wanted.contains_key(id)) {
            self.trusted.remove(id).map_err(map_err(MAP_TRUSTED))?;
        }
        Ok(())
    }

    /// The kernel's state of one container.
    pub fn container(&self, cid: u64) -> Option<ContainerState> {
        self.containers.get(&cid, 0).ok()
    }

    /// The counters of container `cid`, the collectors that are off left
    /// out; None when the kernel has no such container.
    pub fn counters(&self, cid: u64) -> Option<KernelCounters> {
        let s = self.container(cid)?;
        let on = self.active;
        Some(KernelCounters {
            execs: s.execs,
            forks: s.forks,
            threads_created: s.threads_created,
            process_exits: s.process_exits,
            live_tasks: s.live_tasks,
            oom_kills: on.contains(Collector::Oom).then_some(s.oom_kills),
            network: on.contains(Collector::Network).then_some(NetCounters {
                rx_bytes: s.net_rx_bytes,
                rx_packets: s.net_rx_packets,
                tx_bytes: s.net_tx_bytes,
                tx_packets: s.net_tx_packets,
            }),
            fs: on.contains(Collector::Fsio).then_some(FsCounters {
                read_bytes: s.fs_read_bytes,
                write_bytes: s.fs_write_bytes,
            }),
            runq: self.runq_histogram(cid).map(Box::new),
            exited: self.banks_runtime.then_some(ExitedTotals {
                runtime_ns: s.exited_runtime_ns,
                io: self
                    .banks_io
                    .then_some((s.exited_read_bytes, s.exited_write_bytes)),
                before_start: Baseline {
                    runtime_ns: s.start_runtime_ns,
                    read_bytes: s.start_read_bytes,
                    write_bytes: s.start_write_bytes,
                },
            }),
        })
    }

    /// Every container the kernel knows.
    pub fn containers(&self) -> Vec<(u64, ContainerState)> {
        self.containers.iter().filter_map(Result::ok).collect()
    }

    /// Registers a container found by other means (after an agent restart,
    /// or through the monitoring socket), so the kernel follows its tasks.
    pub fn adopt(
        &mut self,
        cid: u64,
        state: &ContainerState,
        tids: &[u32],
    ) -> Result<(), KernelError> {
        let mut state = *state;
        state.live_tasks = tids.len() as u64;
        self.containers
            .insert(&cid, &state, 0)
            .map_err(map_err(MAP_CONTAINERS))?;
        self.runq_track(cid);
        for &tid in tids {
            // A task already attributed keeps its container.
            let entry = TaskEntry {
                container: cid,
                run_delay_seen: RUN_DELAY_UNKNOWN,
            };
            if self.tasks.insert(&tid, &entry, aya_noexist()).is_ok() {
                self.runq_mark(tid, cid);
            }
        }
        Ok(())
    }

    /// Forgets a container once its final sample is taken.
    pub fn forget(&mut self, cid: u64) {
        let _ = self.containers.remove(&cid);
        self.runq_release(cid);
        self.unregister_cgroup(cid);
    }

    /// Asks for an event when process `tgid` of container `cid` exits.
    pub fn watch(&mut self, tgid: u32, cid: u64) -> Result<(), KernelError> {
        self.watched
            .insert(&tgid, &cid, 0)
            .map_err(map_err(MAP_WATCHED))
    }

    /// The collectors whose programs are attached.
    pub fn collectors(&self) -> Collectors {
        self.active
    }

    /// Tells the network collector that sockets of cgroup2 id `cgroup_id`
    /// (the inode of the container's cgroup2 directory) belong to `cid`.
    pub fn register_cgroup(&mut self, cid: u64, cgroup_id: u64) -> Result<(), KernelError> {
        if !self.active.contains(Collector::Network) {
            return Ok(());
        }
        if let Some(old) = self.cgroup_ids.insert(cid, cgroup_id)
            && old != cgroup_id
        {
            let _ = self.cgroups.remove(&old);
        }
        self.cgroups
            .insert(&cgroup_id, &cid, 0)
            .map_err(map_err(MAP_CGROUPS))
    }

    fn unregister_cgroup(&mut self, cid: u64) {
        if let Some(id) = self.cgroup_ids.remove(&cid) {
            let _ = self.cgroups.remove(&id);
        }
    }

    /// The container task `tid` belongs to, if any.
    pub fn container_of(&self, tid: u32) -> Option<u64> {
        self.tasks.get(&tid, 0).ok().map(|e| e.container)
    }

    /// The tasks the kernel attributes to container `cid`.
    pub fn tasks_of(&self, cid: u64) -> Vec<u32> {
        self.tasks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, e)| e.container == cid)
            .map(|(t, _)| t)
            .collect()
    }

    /// An agent-level counter, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> u64 {
        debug_assert!((stat as u32) < STAT_COUNT);
        self.stats
            .get(&(stat as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }

    /// Everything the programs dropped so far, by kind (lost events
    /// aside), with the containers this side gave no run-queue slot.
    pub fn drops(&self) -> Vec<(drops::Drop, u64)> {
        Stat::ALL
            .into_iter()
            .filter(|s| *s != Stat::EventsLost)
            .map(|s| (drops::of(s), self.stat(s)))
            .chain(std::iter::once((
                drops::Drop::MapFull(drops::Map::Runq),
                self.runq_unobserved,
            )))
            .collect()
    }
}

/// Loads `program` from the object and attaches it to BTF tracepoint
/// `tracepoint`.
fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    program: &'static str,
    tracepoint: &'static str,
) -> Result<(), KernelError> {
    let err = |source| KernelError::Program {
        program,
        tracepoint,
        source,
    };
    let prog: &mut BtfTracePoint = ebpf
        .program_mut(program)
        .ok_or(KernelError::Missing(program))?
        .try_into()
        .map_err(err)?;
    prog.load(tracepoint, btf)
        .and_then(|()| prog.attach().map(drop))
        .map_err(err)
}

/// Where the kernel's largest task id is set, below /proc.
const PID_MAX: &str = "sys/kernel/pid_max";

/// Entries of the run-queue latency collector's task table, from the
/// contents of /proc/sys/kernel/pid_max (task ids are below it): the
/// 64-bit kernel's limit when unreadable.
fn runq_pid_table_size(pid_max: Option<&str>) -> u32 {
    pid_max
        .and_then(|s| s.trim().parse::<u32>().ok())
        .filter(|&n| n > 0)
        .map_or(MAX_RUNQ_TASKS, |n| n.min(MAX_RUNQ_TASKS))
}

/// BPF_NOEXIST, as aya's insert takes raw flags.
const fn aya_noexist() -> u64 {
    1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runq_pid_table_follows_pid_max_within_the_kernel_limit() {
        assert_eq!(runq_pid_table_size(Some("32768\n")), 32_768);
        assert_eq!(runq_pid_table_size(Some("4194304\n")), MAX_RUNQ_TASKS);
        // Unreadable or nonsense: the largest a 64-bit kernel allows.
        for bad in [None, Some(""), Some("0\n"), Some("lots"), Some("-1")] {
            assert_eq!(runq_pid_table_size(bad), MAX_RUNQ_TASKS, "{bad:?}");
        }
        assert_eq!(runq_pid_table_size(Some("99999999")), MAX_RUNQ_TASKS);
    }
}

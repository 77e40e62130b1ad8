//! Loading the kernel programs, and the user-space side of their maps.
pub mod events;
pub mod offsets;
pub mod stats;

use std::{collections::BTreeSet, path::Path};

use apptheus_common::{
    Config, ContainerState, FileId, GLOBAL_CONFIG, MAP_CONTAINERS, MAP_EVENTS, MAP_STATS,
    MAP_TASKS, MAP_TRUSTED, STAT_COUNT, Stat,
};
use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
    programs::BtfTracePoint,
};

/// The kernel object, built by build.rs from apptheus-ebpf.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/apptheus"));

/// The programs and the tracepoints they attach to.
const PROGRAMS: [(&str, &str); 3] = [
    ("apptheus_exec", "sched_process_exec"),
    ("apptheus_fork", "sched_process_fork"),
    ("apptheus_exit", "sched_process_exit"),
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
    tasks: HashMap<MapData, u32, u64>,
    containers: HashMap<MapData, u64, ContainerState>,
    stats: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
}

impl Kernel {
    /// Resolves offsets from `btf_path`, loads and attaches the programs,
    /// and fills the trusted set.
    pub fn load(btf_path: &Path, trusted: &BTreeSet<FileId>) -> Result<Self, KernelError> {
        let btf_file = offsets::load_btf(btf_path)?;
        let offsets = offsets::resolve(&btf_file)?;
        tracing::debug!(?offsets, "kernel struct offsets from BTF");
        let btf =
            Btf::parse_file(btf_path, aya::Endianness::default()).map_err(KernelError::Btf)?;
        let config = Config { offsets };
        let mut ebpf = EbpfLoader::new()
            .btf(&btf)
            .override_global(GLOBAL_CONFIG, &config, true)
            .load(OBJECT)
            .map_err(KernelError::Load)?;
        for (program, tracepoint) in PROGRAMS {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(program)
                .ok_or(KernelError::Missing(program))?
                .try_into()
                .map_err(|source| KernelError::Program {
                    program,
                    tracepoint,
                    source,
                })?;
            prog.load(tracepoint, &btf)
                .and_then(|()| prog.attach().map(drop))
                .map_err(|source| KernelError::Program {
                    program,
                    tracepoint,
                    source,
                })?;
        }
        let take = |ebpf: &mut Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(KernelError::Missing(name))
        };
        let trusted_map = take(&mut ebpf, MAP_TRUSTED)?;
        let tasks = take(&mut ebpf, MAP_TASKS)?;
        let containers = take(&mut ebpf, MAP_CONTAINERS)?;
        let stats = take(&mut ebpf, MAP_STATS)?;
        let events = take(&mut ebpf, MAP_EVENTS)?;
        let mut kernel = Self {
            trusted: HashMap::try_from(trusted_map).map_err(map_err(MAP_TRUSTED))?,
            tasks: HashMap::try_from(tasks).map_err(map_err(MAP_TASKS))?,
            containers: HashMap::try_from(containers).map_err(map_err(MAP_CONTAINERS))?,
            stats: PerCpuArray::try_from(stats).map_err(map_err(MAP_STATS))?,
            events: Some(RingBuf::try_from(events).map_err(map_err(MAP_EVENTS))?),
            _ebpf: ebpf,
        };
        kernel.set_trusted(trusted)?;
        Ok(kernel)
    }

    /// Takes the event ring buffer, for the event reader.
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Makes the kernel's trusted set exactly `wanted`.
    pub fn set_trusted(&mut self, wanted: &BTreeSet<FileId>) -> Result<(), KernelError> {
        let current: BTreeSet<FileId> = self.trusted.keys().filter_map(Result::ok).collect();
        for id in wanted.difference(&current) {
            self.trusted
                .insert(id, &1, 0)
                .map_err(map_err(MAP_TRUSTED))?;
        }
        for id in current.difference(wanted) {
            self.trusted.remove(id).map_err(map_err(MAP_TRUSTED))?;
        }
        Ok(())
    }

    /// The kernel's state of one container.
    pub fn container(&self, cid: u64) -> Option<ContainerState> {
        self.containers.get(&cid, 0).ok()
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
        for tid in tids {
            // A task already attributed keeps its container.
            let _ = self.tasks.insert(tid, &cid, aya_noexist());
        }
        Ok(())
    }

    /// Forgets a container once its final sample is taken.
    pub fn forget(&mut self, cid: u64) {
        let _ = self.containers.remove(&cid);
    }

    /// The container task `tid` belongs to, if any.
    pub fn container_of(&self, tid: u32) -> Option<u64> {
        self.tasks.get(&tid, 0).ok()
    }

    /// The tasks the kernel attributes to container `cid`.
    pub fn tasks_of(&self, cid: u64) -> Vec<u32> {
        self.tasks
            .iter()
            .filter_map(Result::ok)
            .filter(|(_, c)| *c == cid)
            .map(|(t, _)| t)
            .collect()
    }

    /// The tasks attributed to each container, from the kernel's map.
    pub fn tasks(&self) -> Vec<(u32, u64)> {
        self.tasks.iter().filter_map(Result::ok).collect()
    }

    /// Drops task entries of tasks that no longer exist (their exit was
    /// missed, e.g. attributed while the agent restarted).
    pub fn remove_task(&mut self, tid: u32) {
        let _ = self.tasks.remove(&tid);
    }

    /// An agent-level counter, summed over CPUs.
    pub fn stat(&self, stat: Stat) -> u64 {
        debug_assert!((stat as u32) < STAT_COUNT);
        self.stats
            .get(&(stat as u32), 0)
            .map(|v| v.iter().sum())
            .unwrap_or(0)
    }
}

/// BPF_NOEXIST, as aya's insert takes raw flags.
const fn aya_noexist() -> u64 {
    1
}

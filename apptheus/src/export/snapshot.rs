//! What the scrapes and pushes see between two samples: each container's
//! labels and latest statistics, compact (about a kilobyte per container),
//! encoded only when somebody reads it.
use std::{sync::Arc, time::UNIX_EPOCH};

use crate::{
    attribution::kernel::stats::ProgramStats,
    model::{container::Container, container::Sample, registry::Registry},
};

/// The labels of a container's info series, besides `container_id`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Info {
    pub starter: Box<str>,
    pub image: Box<str>,
    pub instance: Box<str>,
    pub user: Box<str>,
    pub uid: u32,
    pub slurm_job_id: Box<str>,
}

/// One container as exported.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Row {
    pub id: Box<str>,
    pub info: Info,
    /// Seconds since the Unix epoch.
    pub start_time: f64,
    /// The container's latest sample, shared with the registry.
    pub sample: Option<Arc<Sample>>,
}

impl Row {
    pub fn of(c: &Container) -> Self {
        let opt = |s: &Option<String>| s.as_deref().unwrap_or("").into();
        Row {
            id: c.id.as_str().into(),
            info: Info {
                starter: c.starter_path.display().to_string().into(),
                image: opt(&c.meta.image),
                instance: opt(&c.meta.instance),
                user: c.user.as_str().into(),
                uid: c.uid,
                slurm_job_id: opt(&c.meta.slurm_job_id),
            },
            start_time: c
                .start_time
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs_f64())
                .unwrap_or(0.0),
            sample: c.sample.clone(),
        }
    }
}

/// Every container's row, and the kernel's statistics of our programs
/// (`--ebpf.stats`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    pub rows: Vec<Row>,
    pub programs: Vec<ProgramStats>,
}

impl Snapshot {
    pub fn of(registry: &Registry, programs: Vec<ProgramStats>) -> Self {
        Snapshot {
            rows: registry.iter().map(Row::of).collect(),
            programs,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;
    use crate::{
        export::exposition::{Format, encode_with},
        model::{
            container::KernelCounters,
            stats::{BlkioDevice, CgroupStats, CpuStats, MemoryStats, PidsStats, Pressure},
        },
    };

    /// A row with every cgroup statistic of a hybrid host.
    pub(crate) fn full_row(i: usize) -> Row {
        Row {
            id: format!("{}-{}", 1000 + i, 123_456_789_000u64 + i as u64).into(),
            info: Info {
                starter: "/usr/libexec/apptainer/bin/starter".into(),
                image: "/home/alice/images/analysis.sif".into(),
                user: "alice".into(),
                uid: 1000,
                ..Info::default()
            },
            start_time: 1.8e9 + i as f64,
            sample: Some(Arc::new(Sample {
                cgroup: CgroupStats {
                    cpu: Some(CpuStats {
                        usage_seconds: 12.345678,
                        user_seconds: Some(10.5),
                        system_seconds: Some(1.845678),
                        throttled_seconds: Some(0.0),
                    }),
                    memory: Some(MemoryStats {
                        usage_bytes: 123 << 20,
                        working_set_bytes: Some(100 << 20),
                        rss_bytes: Some(90 << 20),
                        cache_bytes: Some(30 << 20),
                        max_usage_bytes: Some(200 << 20),
                        limit_bytes: Some(4 << 30),
                        oom_kills: Some(0),
                        major_faults: Some(12),
                        under_oom: Some(false),
                        ..MemoryStats::default()
                    }),
                    pids: Some(PidsStats {
                        current: 3,
                        limit: Some(512),
                    }),
                    threads: Some(3),
                    blkio: Some(vec![BlkioDevice {
                        device: "8:0".into(),
                        read_bytes: 1 << 20,
                        write_bytes: 2 << 20,
                        read_ops: 30,
                        write_ops: 40,
                    }]),
                    pressure: Some(Pressure {
                        cpu_some: Some(0.5),
                        memory_some: Some(0.0),
                        memory_full: Some(0.0),
                        io_some: Some(0.25),
                        io_full: Some(0.125),
                    }),
                },
                kernel: Some(KernelCounters {
                    execs: 5,
                    forks: 4,
                    live_tasks: 3,
                    ..KernelCounters::default()
                }),
            })),
        }
    }

    /// How long encoding 10,000 containers takes (a measurement, not a
    /// check: `cargo test --release -p apptheus --lib encoding_speed --
    /// --ignored --nocapture`).
    #[test]
    #[ignore]
    fn encoding_speed() {
        let snap = Snapshot {
            rows: (0..10_000).map(full_row).collect(),
            programs: Vec::new(),
        };
        for format in [Format::Text, Format::OpenMetrics] {
            let t = Instant::now();
            let n = encode_with(&[], &snap, format).unwrap().len();
            eprintln!("{format:?}: {n} bytes in {:?}", t.elapsed());
        }
        eprintln!(
            "Row {} bytes, Container {} bytes",
            size_of::<Row>(),
            size_of::<Container>()
        );
    }
}

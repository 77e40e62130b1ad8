//! What the scrapes and pushes see between two samples: each container's
//! labels and latest statistics, compact (about a kilobyte per container),
//! encoded only when somebody reads it.
use std::{sync::Arc, time::UNIX_EPOCH};

use crate::model::{
    container::{Container, Sample},
    processes::FromProcesses,
    programs::ProgramStats,
    registry::Registry,
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
    /// The families read from its processes: decided when it is placed,
    /// for its whole life, so known before its first sample.
    pub from_processes: FromProcesses,
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
                from_processes: c.processes.as_ref().map(|p| p.families).unwrap_or_default(),
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
            rows: registry.iter().filter(|c| c.shown).map(Row::of).collect(),
            programs,
        }
    }
}

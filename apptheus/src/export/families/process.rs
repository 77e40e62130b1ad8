//! Families of the statistics read from a container's own processes (see
//! `model::processes`), for a container whose cgroups cannot give its
//! memory: names of their own (`apptheus_container_proc_*`), never mixed
//! into a cgroup family. A container read from its cgroups has none.
use super::Scalar;
use crate::{
    export::{catalogue as cat, snapshot::Row},
    model::processes::ProcStats,
};

fn p(r: &Row) -> Option<&ProcStats> {
    r.sample.as_ref()?.processes.as_ref()
}

pub(super) const SCALARS: &[Scalar] = &[
    Scalar {
        metric: &cat::CONTAINER_PROC_PROCESSES,
        get: |r| p(r).map(|p| p.processes as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PROC_THREADS,
        get: |r| p(r).map(|p| p.threads as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PROC_MEMORY_PSS,
        get: |r| p(r)?.pss_bytes.map(|v| v as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PROC_MEMORY_RSS,
        get: |r| p(r).map(|p| p.rss_bytes as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PROC_CPU,
        get: |r| p(r)?.cpu_seconds,
    },
    Scalar {
        metric: &cat::CONTAINER_PROC_IO_READ_BYTES,
        get: |r| p(r)?.read_bytes.map(|v| v as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PROC_IO_WRITE_BYTES,
        get: |r| p(r)?.write_bytes.map(|v| v as f64),
    },
];

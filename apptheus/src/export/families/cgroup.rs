//! Families of the cgroup statistics (names from the metric contract). A
//! statistic the host could not provide is left out, never exported as 0.
use super::{Lazy, Scalar, Value, Visitor};
use crate::{
    export::{
        catalogue as cat,
        snapshot::{Row, Snapshot},
    },
    model::stats::{BlkioDevice, CgroupStats, CpuStats, MemoryStats, Pressure},
};

fn s(r: &Row) -> Option<&CgroupStats> {
    r.sample.as_ref().map(|s| &s.cgroup)
}

fn cpu(r: &Row) -> Option<&CpuStats> {
    s(r)?.cpu.as_ref()
}

fn mem(r: &Row) -> Option<&MemoryStats> {
    s(r)?.memory.as_ref()
}

fn psi(r: &Row) -> Option<&Pressure> {
    s(r)?.pressure.as_ref()
}

fn n(v: Option<u64>) -> Option<f64> {
    v.map(|v| v as f64)
}

/// The kernel's OOM kill count, when its collector runs, replaces the
/// cgroup's (which is lost with the cgroup): one family, one source per
/// container.
fn oom_kills(r: &Row) -> Option<f64> {
    let sample = r.sample.as_ref()?;
    match sample.kernel.as_ref().and_then(|k| k.oom_kills) {
        Some(k) => Some(k as f64),
        None => n(sample.cgroup.memory.as_ref()?.oom_kills),
    }
}

pub(super) const SCALARS: &[Scalar] = &[
    Scalar {
        metric: &cat::CONTAINER_CPU_USAGE,
        get: |r| cpu(r).map(|c| c.usage_seconds),
    },
    Scalar {
        metric: &cat::CONTAINER_CPU_USER,
        get: |r| cpu(r)?.user_seconds,
    },
    Scalar {
        metric: &cat::CONTAINER_CPU_SYSTEM,
        get: |r| cpu(r)?.system_seconds,
    },
    Scalar {
        metric: &cat::CONTAINER_CPU_CFS_THROTTLED,
        get: |r| cpu(r)?.throttled_seconds,
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_USAGE,
        get: |r| mem(r).map(|m| m.usage_bytes as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_WORKING_SET,
        get: |r| n(mem(r)?.working_set_bytes),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_RSS,
        get: |r| n(mem(r)?.rss_bytes),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_CACHE,
        get: |r| n(mem(r)?.cache_bytes),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_SWAP,
        get: |r| n(mem(r)?.swap_bytes),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_MAX_USAGE,
        get: |r| n(mem(r)?.max_usage_bytes),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_LIMIT,
        get: |r| n(mem(r)?.limit_bytes),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_OOM_EVENTS,
        get: |r| n(mem(r)?.oom_events),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_OOM_KILLS,
        get: oom_kills,
    },
    Scalar {
        metric: &cat::CONTAINER_MAJOR_PAGE_FAULTS,
        get: |r| n(mem(r)?.major_faults),
    },
    Scalar {
        metric: &cat::CONTAINER_MEMORY_UNDER_OOM,
        get: |r| mem(r)?.under_oom.map(|u| if u { 1.0 } else { 0.0 }),
    },
    Scalar {
        metric: &cat::CONTAINER_PIDS,
        get: |r| s(r)?.pids.as_ref().map(|p| p.current as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PIDS_LIMIT,
        get: |r| n(s(r)?.pids.as_ref()?.limit),
    },
    Scalar {
        metric: &cat::CONTAINER_THREADS,
        get: |r| n(s(r)?.threads),
    },
    Scalar {
        metric: &cat::CONTAINER_PRESSURE_CPU_WAITING,
        get: |r| psi(r)?.cpu_some,
    },
    Scalar {
        metric: &cat::CONTAINER_PRESSURE_MEMORY_WAITING,
        get: |r| psi(r)?.memory_some,
    },
    Scalar {
        metric: &cat::CONTAINER_PRESSURE_MEMORY_STALLED,
        get: |r| psi(r)?.memory_full,
    },
    Scalar {
        metric: &cat::CONTAINER_PRESSURE_IO_WAITING,
        get: |r| psi(r)?.io_some,
    },
    Scalar {
        metric: &cat::CONTAINER_PRESSURE_IO_STALLED,
        get: |r| psi(r)?.io_full,
    },
];

type DeviceValue = fn(&BlkioDevice) -> u64;

/// Block I/O, one series per device.
pub(super) fn blkio(snap: &Snapshot, v: &mut impl Visitor) {
    // A device-less entry is the container's processes' I/O, all devices
    // together: bytes, no operation counts.
    let families: [(&'static cat::Metric, DeviceValue, bool); 4] = [
        (&cat::CONTAINER_BLKIO_READ_BYTES, |d| d.read_bytes, true),
        (&cat::CONTAINER_BLKIO_WRITE_BYTES, |d| d.write_bytes, true),
        (&cat::CONTAINER_BLKIO_READ_OPERATIONS, |d| d.read_ops, false),
        (
            &cat::CONTAINER_BLKIO_WRITE_OPERATIONS,
            |d| d.write_ops,
            false,
        ),
    ];
    for (m, get, bytes) in families {
        let mut out = Lazy { v, started: false };
        for r in &snap.rows {
            let devices = s(r).and_then(|s| s.blkio.as_deref()).unwrap_or_default();
            for d in devices.iter().filter(|d| bytes || !d.device.is_empty()) {
                out.sample(
                    m,
                    &[("container_id", &r.id), ("device", &d.device)],
                    Value::Number(get(d) as f64),
                );
            }
        }
    }
}

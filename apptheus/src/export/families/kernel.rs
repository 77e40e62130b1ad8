//! Families of the kernel programs: the counters every container has, and
//! the collectors' (network, file I/O, run-queue latency). A collector that
//! is off gives no family at all. OOM kills are with the memory families
//! (one family, two sources).
use apptheus_common::{RUNQ_BUCKETS, RunqHistogram};

use super::{Histogram, Lazy, Scalar, Value, Visitor};
use crate::{
    export::{
        catalogue as cat,
        snapshot::{Row, Snapshot},
    },
    model::container::KernelCounters,
};

fn k(r: &Row) -> Option<&KernelCounters> {
    r.sample.as_ref()?.kernel.as_ref()
}

pub(super) const SCALARS: &[Scalar] = &[
    Scalar {
        metric: &cat::CONTAINER_EXECS,
        get: |r| k(r).map(|k| k.execs as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_FORKS,
        get: |r| k(r).map(|k| k.forks as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_THREADS_CREATED,
        get: |r| k(r).map(|k| k.threads_created as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_PROCESS_EXITS,
        get: |r| k(r).map(|k| k.process_exits as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_TASKS,
        get: |r| k(r).map(|k| k.live_tasks as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_NETWORK_RECEIVE_BYTES,
        get: |r| k(r)?.network.map(|n| n.rx_bytes as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_NETWORK_RECEIVE_PACKETS,
        get: |r| k(r)?.network.map(|n| n.rx_packets as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_NETWORK_TRANSMIT_BYTES,
        get: |r| k(r)?.network.map(|n| n.tx_bytes as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_NETWORK_TRANSMIT_PACKETS,
        get: |r| k(r)?.network.map(|n| n.tx_packets as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_FS_READ_BYTES,
        get: |r| k(r)?.fs.map(|f| f.read_bytes as f64),
    },
    Scalar {
        metric: &cat::CONTAINER_FS_WRITE_BYTES,
        get: |r| k(r)?.fs.map(|f| f.write_bytes as f64),
    },
];

/// A run-queue histogram as Prometheus wants it. Bucket `s` of the
/// kernel's histogram holds latencies below 2^s microseconds (see
/// `apptheus_common::RUNQ_BUCKETS`); the overflow slot is only in +Inf.
pub(super) fn runq_buckets(h: &RunqHistogram) -> Histogram {
    let mut buckets = [(0.0, 0); RUNQ_BUCKETS];
    let mut cumulative = 0u64;
    for (s, (b, n)) in buckets.iter_mut().zip(h.slots).enumerate() {
        cumulative += n;
        *b = ((1u64 << s) as f64 * 1e-6, cumulative);
    }
    Histogram {
        buckets,
        count: h.slots.iter().sum(),
        sum: h.sum_ns as f64 / 1e9,
    }
}

pub(super) fn runq(snap: &Snapshot, v: &mut impl Visitor) {
    let mut out = Lazy { v, started: false };
    for r in &snap.rows {
        if let Some(h) = k(r).and_then(|k| k.runq.as_ref()) {
            out.sample(
                &cat::CONTAINER_RUNQUEUE_LATENCY,
                &[("container_id", &r.id)],
                Value::Histogram(&runq_buckets(h)),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use apptheus_common::RUNQ_SLOTS;

    #[test]
    fn buckets_are_cumulative_powers_of_two_microseconds() {
        let mut h = RunqHistogram::default();
        h.slots[0] = 2; // < 1 us
        h.slots[3] = 5; // [4, 8) us
        h.slots[RUNQ_SLOTS - 1] = 1; // >= 2^20 us
        h.sum_ns = 1_500_000_000;
        let Histogram {
            buckets: b,
            count,
            sum,
        } = runq_buckets(&h);
        assert_eq!(b[0], (1e-6, 2));
        assert_eq!(b[2], (4e-6, 2));
        assert_eq!(b[3], (8e-6, 7));
        assert!((b[RUNQ_BUCKETS - 1].0 - 1.048576).abs() < 1e-12);
        assert_eq!(b[RUNQ_BUCKETS - 1].1, 7, "the overflow is only in +Inf");
        assert_eq!(count, 8);
        assert_eq!(sum, 1.5);
    }
}

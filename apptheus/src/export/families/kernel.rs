//! Families of the kernel collectors (OOM kills, network, file I/O,
//! run-queue latency). A collector that is off gives no family at all.
use apptheus_common::{RUNQ_BUCKETS, RunqHistogram};

use super::Families;
use crate::model::container::KernelCounters;

/// A run-queue histogram as Prometheus wants it: (upper bound in seconds,
/// cumulative count) per finite bucket, the total count, the sum in
/// seconds. Bucket `s` of the kernel's histogram holds latencies below
/// 2^s microseconds (see `apptheus_common::RUNQ_BUCKETS`).
pub fn runq_buckets(h: &RunqHistogram) -> (Vec<(f64, u64)>, u64, f64) {
    let mut cumulative = 0u64;
    let buckets = h.slots[..RUNQ_BUCKETS]
        .iter()
        .enumerate()
        .map(|(s, n)| {
            cumulative += n;
            ((1u64 << s) as f64 * 1e-6, cumulative)
        })
        .collect();
    let count = h.slots.iter().sum();
    (buckets, count, h.sum_ns as f64 / 1e9)
}

pub fn add(f: &mut Families, id: &[(&str, &str)], k: &KernelCounters) {
    if let Some(n) = k.oom_kills {
        f.counter(
            "apptheus_container_memory_oom_kills_total",
            "Tasks of the container chosen as OOM victims, counted by the kernel when it chooses them.",
            id,
            n as f64,
        );
    }
    if let Some(n) = &k.network {
        let all = [
            (
                n.rx_bytes,
                "apptheus_container_network_receive_bytes_total",
                "Bytes received by the container's sockets (IP packets, headers included).",
            ),
            (
                n.rx_packets,
                "apptheus_container_network_receive_packets_total",
                "Packets received by the container's sockets.",
            ),
            (
                n.tx_bytes,
                "apptheus_container_network_transmit_bytes_total",
                "Bytes sent by the container's sockets (IP packets, headers included).",
            ),
            (
                n.tx_packets,
                "apptheus_container_network_transmit_packets_total",
                "Packets sent by the container's sockets (segments of a TSO/GSO packet counted one by one).",
            ),
        ];
        for (v, name, help) in all {
            f.counter(name, help, id, v as f64);
        }
    }
    if let Some(fs) = &k.fs {
        f.counter(
            "apptheus_container_fs_read_bytes_total",
            "Bytes read from regular files by the container's read-like syscalls, page cache hits included.",
            id,
            fs.read_bytes as f64,
        );
        f.counter(
            "apptheus_container_fs_write_bytes_total",
            "Bytes written to regular files by the container's write-like syscalls, page cache included.",
            id,
            fs.write_bytes as f64,
        );
    }
    if let Some(h) = &k.runq {
        let (buckets, count, sum) = runq_buckets(h);
        f.histogram(
            "apptheus_container_runqueue_latency_seconds",
            "Time the container's tasks waited on a run queue between becoming runnable and running.",
            id,
            &buckets,
            count,
            sum,
        );
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
        let (b, count, sum) = runq_buckets(&h);
        assert_eq!(b.len(), RUNQ_BUCKETS);
        assert_eq!(b[0], (1e-6, 2));
        assert_eq!(b[2], (4e-6, 2));
        assert_eq!(b[3], (8e-6, 7));
        assert!((b[RUNQ_BUCKETS - 1].0 - 1.048576).abs() < 1e-12);
        assert_eq!(b[RUNQ_BUCKETS - 1].1, 7, "the overflow is only in +Inf");
        assert_eq!(count, 8);
        assert_eq!(sum, 1.5);
    }
}

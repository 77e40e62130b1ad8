//! Building the per-container metric families from the registry. Pure: the
//! registry and its samples in, Prometheus families out.
use std::{collections::BTreeMap, time::UNIX_EPOCH};

use prometheus::proto::{
    Bucket, Counter, Gauge, Histogram, LabelPair, Metric, MetricFamily, MetricType,
};

use crate::model::{container::Container, registry::Registry};

pub(crate) mod cgroup;
mod kernel;
mod process;

fn label_pairs(labels: &[(&str, &str)]) -> Vec<LabelPair> {
    labels
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name(k.to_string());
            l.set_value(v.to_string());
            l
        })
        .collect()
}

/// Accumulates samples by family name, keeping HELP and TYPE.
#[derive(Default)]
pub struct Families {
    families: BTreeMap<&'static str, MetricFamily>,
}

impl Families {
    fn family(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
    ) -> &mut MetricFamily {
        self.families.entry(name).or_insert_with(|| {
            let mut mf = MetricFamily::default();
            mf.set_name(name.to_string());
            mf.set_help(help.to_string());
            mf.set_field_type(kind);
            mf
        })
    }

    fn push(
        &mut self,
        name: &'static str,
        help: &'static str,
        kind: MetricType,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        let mf = self.family(name, help, kind);
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        match kind {
            MetricType::COUNTER => {
                let mut c = Counter::default();
                c.set_value(value);
                m.set_counter(c);
            }
            _ => {
                let mut g = Gauge::default();
                g.set_value(value);
                m.set_gauge(g);
            }
        }
        mf.mut_metric().push(m);
    }

    /// A counter sample (name ends in `_total`).
    pub fn counter(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        debug_assert!(name.ends_with("_total"));
        self.push(name, help, MetricType::COUNTER, labels, value);
    }

    /// A gauge sample.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        value: f64,
    ) {
        self.push(name, help, MetricType::GAUGE, labels, value);
    }

    /// A histogram sample: (upper bound, cumulative count) per finite
    /// bucket (+Inf is implied by `count`), the count and the sum.
    pub fn histogram(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&str, &str)],
        buckets: &[(f64, u64)],
        count: u64,
        sum: f64,
    ) {
        let mut h = Histogram::default();
        h.set_sample_count(count);
        h.set_sample_sum(sum);
        h.set_bucket(
            buckets
                .iter()
                .map(|(le, n)| {
                    let mut b = Bucket::default();
                    b.set_upper_bound(*le);
                    b.set_cumulative_count(*n);
                    b
                })
                .collect(),
        );
        let mut m = Metric::default();
        m.set_label(label_pairs(labels));
        m.set_histogram(h);
        self.family(name, help, MetricType::HISTOGRAM)
            .mut_metric()
            .push(m);
    }

    pub fn into_vec(self) -> Vec<MetricFamily> {
        self.families.into_values().collect()
    }
}

/// The kernel's statistics of our programs (`--ebpf.stats`).
pub fn program_stats(stats: &[crate::model::programs::ProgramStats]) -> Vec<MetricFamily> {
    let mut f = Families::default();
    for s in stats {
        let labels = [("program", s.program.as_str())];
        f.counter(
            "apptheus_ebpf_program_run_seconds_total",
            "Time the kernel spent running the program, from its BPF run-time statistics.",
            &labels,
            s.run_time.as_secs_f64(),
        );
        f.counter(
            "apptheus_ebpf_program_runs_total",
            "Times the kernel ran the program.",
            &labels,
            s.runs as f64,
        );
    }
    f.into_vec()
}

/// Every per-container family, for every container in the registry.
pub fn build(registry: &Registry) -> Vec<MetricFamily> {
    let mut f = Families::default();
    for c in registry.iter() {
        container(&mut f, c);
    }
    f.into_vec()
}

fn container(f: &mut Families, c: &Container) {
    let id = [("container_id", c.id.as_str())];
    let uid = c.uid.to_string();
    let starter = c.starter_path.display().to_string();
    f.gauge(
        "apptheus_container_info",
        "Metadata of a container; always 1.",
        &[
            ("container_id", &c.id),
            ("starter", &starter),
            ("image", c.meta.image.as_deref().unwrap_or("")),
            ("instance", c.meta.instance.as_deref().unwrap_or("")),
            ("user", &c.user),
            ("uid", &uid),
            ("slurm_job_id", c.meta.slurm_job_id.as_deref().unwrap_or("")),
        ],
        1.0,
    );
    let start = c
        .start_time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    f.gauge(
        "apptheus_container_start_time_seconds",
        "Start time of the container (its starter's exec), in seconds since the Unix epoch.",
        &id,
        start,
    );
    let Some(sample) = &c.sample else { return };
    if let Some(k) = &sample.kernel {
        f.counter(
            "apptheus_container_execs_total",
            "Programs executed (execve) in the container, its starter included, counted by the kernel programs.",
            &id,
            k.execs as f64,
        );
        f.counter(
            "apptheus_container_forks_total",
            "Processes created (fork, vfork, clone without CLONE_THREAD) in the container.",
            &id,
            k.forks as f64,
        );
        f.counter(
            "apptheus_container_threads_created_total",
            "Threads created (clone with CLONE_THREAD) in the container.",
            &id,
            k.threads_created as f64,
        );
        f.counter(
            "apptheus_container_process_exits_total",
            "Processes of the container that exited.",
            &id,
            k.process_exits as f64,
        );
        f.gauge(
            "apptheus_container_tasks",
            "Tasks (threads) of the container alive, as the kernel programs count them.",
            &id,
            k.live_tasks as f64,
        );
        kernel::add(f, &id, k);
    }
    // The kernel's OOM kill count, when its collector runs, replaces the
    // cgroup's (which is lost with the cgroup): one family, one source.
    let kernel_counts_oom = sample.kernel.is_some_and(|k| k.oom_kills.is_some());
    crate::export::families::cgroup::add_beside_kernel(f, &id, &sample.cgroup, kernel_counts_oom);
    if let Some(p) = &sample.processes {
        process::add(f, &id, p);
    }
}

#[cfg(test)]
mod tests {
    use std::{path::PathBuf, time::SystemTime};

    use super::*;
    use crate::model::container::{KernelCounters, Sample};

    #[test]
    fn info_and_kernel_counters() {
        let mut r = Registry::default();
        let mut c = Container::new(
            7,
            10,
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100),
        );
        c.starter_path = PathBuf::from("/usr/libexec/apptainer/bin/starter");
        c.uid = 1000;
        c.user = "alice".into();
        c.meta.image = Some("/x.sif".into());
        c.sample = Some(Sample {
            kernel: Some(KernelCounters {
                execs: 3,
                forks: 2,
                ..Default::default()
            }),
            ..Default::default()
        });
        r.insert(c);
        let text =
            crate::export::exposition::encode(&build(&r), crate::export::exposition::Format::Text)
                .unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.contains("apptheus_container_info{container_id=\"10-7\",starter=\"/usr/libexec/apptainer/bin/starter\",image=\"/x.sif\",instance=\"\",user=\"alice\",uid=\"1000\",slurm_job_id=\"\"} 1"), "{text}");
        assert!(
            text.contains("apptheus_container_start_time_seconds{container_id=\"10-7\"} 100"),
            "{text}"
        );
        assert!(
            text.contains("apptheus_container_execs_total{container_id=\"10-7\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("# TYPE apptheus_container_forks_total counter"),
            "{text}"
        );
        // No cgroup sample: no cgroup family at all, never zeros.
        assert!(
            !text.contains("apptheus_container_cpu_usage_seconds_total"),
            "{text}"
        );
    }
}

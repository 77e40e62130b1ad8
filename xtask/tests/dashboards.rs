//! The Grafana dashboard (dashboards/apptheus.json) and the alerting rules
//! (dashboards/apptheus-rules.yml) use only what the agent exports: every
//! series name and label in every query, legend and alert template is
//! checked against a catalogue produced by the agent's own exposition code
//! (see support/catalogue.rs), with Prometheus' target labels (job,
//! instance; a clashing exported label kept as exported_<name>). Prometheus'
//! own tools check the syntax (promtool check rules) and the alerts'
//! behaviour (promtool test rules).
mod support;

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use support::{
    catalogue::{self, Catalogue},
    check::{self, Query},
};

const PROMTOOL: &str = "/usr/bin/promtool";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn dashboard() -> serde_json::Value {
    let text = std::fs::read_to_string(repo().join("dashboards/apptheus.json")).unwrap();
    serde_json::from_str(&text).expect("dashboards/apptheus.json is JSON")
}

fn rules() -> serde_norway::Value {
    let text = std::fs::read_to_string(repo().join("dashboards/apptheus-rules.yml")).unwrap();
    serde_norway::from_str(&text).expect("dashboards/apptheus-rules.yml is YAML")
}

fn dashboard_queries() -> Vec<Query> {
    check::dashboard_queries(&dashboard()).unwrap_or_else(|p| panic!("{p:#?}"))
}

fn catalogue() -> Catalogue {
    let c = catalogue::exported();
    // The fixture trees gave full cgroup statistics (else the fixtures
    // moved, and the catalogue would be missing families).
    for must in [
        "apptheus_container_cpu_cfs_throttled_seconds_total",
        "apptheus_container_memory_swap_bytes",
        "apptheus_container_pressure_io_stalled_seconds_total",
        "apptheus_container_blkio_read_bytes_total",
    ] {
        assert!(
            c.labels(must).is_some(),
            "the catalogue lacks {must}: were apptheus/tests/fixtures/cgroup moved?"
        );
    }
    c
}

#[track_caller]
fn assert_no_problems(what: &str, problems: &[String], c: &Catalogue) {
    assert!(
        problems.is_empty(),
        "{what}:\n  {}\n\nexported series: {:#?}",
        problems.join("\n  "),
        c.series.keys().collect::<Vec<_>>()
    );
}

#[test]
fn dashboard_uses_only_exported_metrics_and_labels() {
    let c = catalogue();
    let queries = dashboard_queries();
    assert!(queries.len() > 30, "only {} queries", queries.len());
    assert_no_problems(
        "the dashboard uses what apptheus does not export",
        &check::check_all(&c, &queries),
        &c,
    );
}

#[test]
fn dashboard_covers_the_metric_contract() {
    let text = dashboard_queries()
        .iter()
        .map(|q| q.expr.clone())
        .collect::<Vec<_>>()
        .join("\n");
    for (area, metric) in [
        ("CPU", "apptheus_container_cpu_usage_seconds_total"),
        ("memory", "apptheus_container_memory_working_set_bytes"),
        ("block I/O", "apptheus_container_blkio_read_bytes_total"),
        (
            "CPU pressure",
            "apptheus_container_pressure_cpu_waiting_seconds_total",
        ),
        (
            "memory pressure",
            "apptheus_container_pressure_memory_stalled_seconds_total",
        ),
        (
            "I/O pressure",
            "apptheus_container_pressure_io_waiting_seconds_total",
        ),
        ("OOM kills", "apptheus_container_memory_oom_kills_total"),
        ("execs", "apptheus_container_execs_total"),
        (
            "run-queue latency",
            "apptheus_container_runqueue_latency_seconds_bucket",
        ),
        ("network", "apptheus_container_network_receive_bytes_total"),
        ("network", "apptheus_container_network_transmit_bytes_total"),
        ("the filters' join", "group_left(user, image, slurm_job_id)"),
    ] {
        assert!(text.contains(metric), "no panel shows {area} ({metric})");
    }
    let d = dashboard();
    let vars: Vec<&str> = d["templating"]["list"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["name"].as_str())
        .collect();
    let raw = std::fs::read_to_string(repo().join("dashboards/apptheus.json")).unwrap();
    for v in ["datasource", "node", "user", "image", "slurm_job"] {
        assert!(vars.contains(&v), "no template variable {v}: {vars:?}");
        assert!(
            raw.contains(&format!("${v}")) || raw.contains(&format!("${{{v}}}")),
            "variable {v} is used nowhere"
        );
    }
    // Every panel and query reads the data source chosen in the variable.
    let fixed = raw.matches("\"uid\":").count() - raw.matches("\"uid\": \"${datasource}\"").count();
    assert_eq!(fixed, 1, "only the dashboard's own uid may be fixed");
}

#[test]
fn rules_use_only_exported_metrics_and_labels() {
    let c = catalogue();
    let queries = check::rule_queries(&rules()).unwrap_or_else(|p| panic!("{p:#?}"));
    let names: BTreeSet<&str> = queries.iter().map(|q| q.origin.as_str()).collect();
    for want in [
        "rule ApptheusContainerOOMKilled",
        "rule ApptheusContainerMemoryPressure",
        "rule ApptheusContainerCPUPressure",
        "rule ApptheusAgentDown",
        "rule ApptheusKernelEventsLost",
    ] {
        assert!(names.contains(want), "no {want} in {names:?}");
    }
    assert_no_problems(
        "the alerting rules use what apptheus does not export",
        &check::check_all(&c, &queries),
        &c,
    );
}

/// The check itself: it must refuse what is not exported, or it proves
/// nothing.
#[test]
fn the_check_refuses_names_the_agent_does_not_export() {
    let c = catalogue();
    let refused = [
        // A made-up name, and near misses of real ones.
        "apptheus_container_cpu_seconds_total",
        "apptheus_container_memory_oom_kill_total",
        "container_cpu_usage_seconds_total",
        // A histogram is stored as _bucket/_sum/_count only; a counter has no _bucket.
        "rate(apptheus_container_runqueue_latency_seconds[5m])",
        "apptheus_container_cpu_usage_seconds_total_bucket",
        // Labels a series does not have.
        r#"apptheus_container_cpu_usage_seconds_total{user="alice"}"#,
        r#"apptheus_container_info{node="a"}"#,
        r#"apptheus_container_cpu_usage_seconds_total{exported_instance="x"}"#,
        "sum by (device) (rate(apptheus_container_cpu_usage_seconds_total[5m]))",
        "sum(apptheus_containers) without (container_id)",
        "apptheus_containers * on(container_id) apptheus_build_info",
        "count by (slurm_job) (apptheus_container_info)",
        r#"label_replace(apptheus_containers, "x", "$1", "image", "(.*)")"#,
        // Nothing selected at all.
        "vector(1)",
    ];
    for q in refused {
        assert!(check::check_query(&c, q).is_err(), "accepted {q:?}");
    }
    let accepted = [
        r#"histogram_quantile(0.9, sum by (le, instance) (rate(apptheus_container_placement_seconds_bucket{le!=""}[5m])))"#,
        r#"up{job="apptheus"} == 0"#,
        r#"apptheus_container_info{exported_instance="web", instance="node-a", job="apptheus"}"#,
        r#"rate(apptheus_container_blkio_read_bytes_total{device="8:0"}[5m]) * on(container_id, instance) group_left(user, image, slurm_job_id) apptheus_container_info"#,
        r#"label_replace(apptheus_containers, "node", "$1", "instance", "(.*)") > 0"#,
    ];
    for q in accepted {
        if let Err(p) = check::check_query(&c, q) {
            panic!("refused {q:?}: {p:?}");
        }
    }
    // Legends and alert templates may name only labels the result can have.
    let q = Query {
        origin: "test".into(),
        expr: "apptheus_containers".into(),
        templates: vec!["{{instance}} {{user}}".into()],
    };
    assert_eq!(check::check_all(&c, &[q]).len(), 1);
    // The dashboard's variables are the only ones a query may use.
    let vars = BTreeSet::from(["node".to_string()]);
    assert!(check::substitute("x{a=~\"$node\"}[$__rate_interval]", &vars).is_ok());
    assert!(check::substitute("x{a=~\"$nodes\"}", &vars).is_err());
}

/// Every metric README.md and the dashboard and rules name is in the
/// catalogue: a renamed or removed metric cannot linger in the docs.
#[test]
fn docs_and_dashboards_name_only_catalogued_metrics() {
    let c = catalogue();
    let known = |n: &str| c.families.contains_key(n) || c.series.contains_key(n);
    let mut problems = Vec::new();
    let mut found = 0;
    for file in [
        "README.md",
        "dashboards/apptheus.json",
        "dashboards/apptheus-rules.yml",
        "dashboards/apptheus-rules.test.yml",
    ] {
        let text = std::fs::read_to_string(repo().join(file)).unwrap();
        let (n, unknown) = check::unknown_metrics(&text, known);
        found += n;
        problems.extend(unknown.into_iter().map(|u| format!("{file}: {u}")));
    }
    assert!(found > 60, "found only {found} metric names");
    assert!(
        problems.is_empty(),
        "metrics named in the docs or dashboards but not in the catalogue \
         (apptheus/src/export/catalogue.rs): {problems:#?}"
    );
    // The check itself refuses what is not catalogued, in every form.
    let (n, unknown) = check::unknown_metrics(
        "`apptheus_container_cpu_usage_seconds_total`, `..._cpu_idle_seconds_total`, \
         `apptheus_container_pressure_{cpu,disk}_waiting_seconds_total`, \
         `apptheus_containers_total{x}`, sched_process_exec, `process_*`",
        known,
    );
    assert_eq!(n, 5);
    assert_eq!(
        unknown,
        [
            "..._cpu_idle_seconds_total (after apptheus_container_cpu_usage_seconds_total)",
            "apptheus_container_pressure_disk_waiting_seconds_total",
            "apptheus_containers_total"
        ]
    );
}

#[test]
fn promtool_accepts_the_rules_and_their_unit_tests() {
    if !Path::new(PROMTOOL).exists() {
        apptheus_testkit::skip("promtool (Debian's prometheus package: scripts/setup.sh --test)");
        return;
    }
    let dir = repo().join("dashboards");
    for args in [
        ["check", "rules", "apptheus-rules.yml"],
        ["test", "rules", "apptheus-rules.test.yml"],
    ] {
        let out = Command::new(PROMTOOL)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Prometheus' parser reads every dashboard query: they go into a rule file
/// as recording rules, which promtool parses.
#[test]
fn promtool_parses_every_dashboard_query() {
    if !Path::new(PROMTOOL).exists() {
        apptheus_testkit::skip("promtool (Debian's prometheus package: scripts/setup.sh --test)");
        return;
    }
    let queries = dashboard_queries();
    let mut file = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, q) in queries.iter().enumerate() {
        // A JSON string is a YAML double-quoted scalar.
        file.push_str(&format!(
            "      - record: dashboard:query_{i}\n        expr: {}\n",
            serde_json::to_string(&q.expr).unwrap()
        ));
    }
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboard-queries.yml");
    std::fs::write(&path, &file).unwrap();
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool refused a dashboard query:\n{}{}\n{file}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

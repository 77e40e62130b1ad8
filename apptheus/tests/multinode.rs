//! Several agents on several "hosts" feeding one Prometheus, as
//! examples/multi-node/ describes. Each host is a network namespace
//! (`ip netns add`), joined to Prometheus' own namespace through a bridge
//! there by veth pairs; the addresses (10.213.7.0/24) exist only inside
//! those namespaces. node-a and node-b are scraped with the example's
//! scrape configuration and relabelling; node-c pushes with remote write.
//! Each agent trusts its own copy of the starter, so that it attributes
//! only the containers of its "host" (the kernel programs see every exec).
//!
//! Checked through Prometheus' HTTP API: one agent per node
//! (`count by (instance) (apptheus_build_info)`), each container under its
//! own node with its user, image and Slurm job joined from
//! apptheus_container_info, the Apptainer instance name kept as
//! exported_instance, every dashboard query answered, the alerting rules
//! loaded, and ApptheusAgentDown pending for a node whose agent is gone.
//!
//! The agents enter their namespace with `nsenter --net` rather than
//! `ip netns exec`, which remounts /sys and so hides the cgroup mounts.
mod common;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::{AGENT, TrustDir};
use serde_json::Value;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const SUBNET: &str = "10.213.7";
const PROM_ADDR: &str = "10.213.7.1:9090";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn sh(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    sh(Command::new("ip").args(args));
}

/// A network namespace, deleted on drop (with the veth ends inside it).
struct Netns(String);

impl Netns {
    fn new(name: String) -> Self {
        // A leftover of a killed run goes first.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        ip(&["netns", "add", &name]);
        let ns = Netns(name);
        ip(&["-n", &ns.0, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> String {
        format!("/run/netns/{}", self.0)
    }

    /// `cmd` run in this namespace (network only).
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net={}", self.path()))
            .arg("--")
            .arg(program);
        c
    }

    /// Runs `f` on a thread that has joined this namespace: its sockets
    /// are the namespace's.
    fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let path = self.path();
        std::thread::spawn(move || {
            let file = fs::File::open(&path).unwrap();
            nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            f()
        })
        .join()
        .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// A process killed on drop, with its output in a file. A `group` is
/// killed whole (a starter and the container it forked).
struct Proc {
    child: Child,
    log: PathBuf,
    group: bool,
}

impl Proc {
    fn spawn(cmd: Command, log: PathBuf) -> Self {
        Self::start(cmd, log, false)
    }

    fn spawn_group(mut cmd: Command, log: PathBuf) -> Self {
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        Self::start(cmd, log, true)
    }

    fn start(mut cmd: Command, log: PathBuf, group: bool) -> Self {
        let f = fs::File::create(&log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        Proc { child, log, group }
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        if self.group {
            // SAFETY: the group our child leads; it has not been reaped.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        // SAFETY: kill on our own unreaped child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.alive() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The hosts and the fabric: namespaces are dropped after every process
/// (fields drop in order: processes are declared in the test after this).
struct Fabric {
    prom: Netns,
    nodes: Vec<(String, Netns, String)>,
}

impl Fabric {
    fn new(names: &[&str]) -> Self {
        let tag = std::process::id();
        let prom = Netns::new(format!("apptheus-mn{tag}-prom"));
        ip(&["-n", &prom.0, "link", "add", "br0", "type", "bridge"]);
        ip(&[
            "-n",
            &prom.0,
            "addr",
            "add",
            &format!("{SUBNET}.1/24"),
            "dev",
            "br0",
        ]);
        ip(&["-n", &prom.0, "link", "set", "br0", "up"]);
        let mut nodes = Vec::new();
        for (i, name) in names.iter().enumerate() {
            let ns = Netns::new(format!("apptheus-mn{tag}-{name}"));
            let port = format!("v{i}");
            ip(&[
                "-n", &prom.0, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                "netns", &ns.0,
            ]);
            ip(&["-n", &prom.0, "link", "set", &port, "master", "br0", "up"]);
            let addr = format!("{SUBNET}.{}", 11 + i);
            ip(&[
                "-n",
                &ns.0,
                "addr",
                "add",
                &format!("{addr}/24"),
                "dev",
                "eth0",
            ]);
            ip(&["-n", &ns.0, "link", "set", "eth0", "up"]);
            nodes.push((name.to_string(), ns, addr));
        }
        Fabric { prom, nodes }
    }

    fn node(&self, name: &str) -> &(String, Netns, String) {
        self.nodes.iter().find(|n| n.0 == name).unwrap()
    }
}

fn privileged() -> bool {
    if !common::privileged() {
        return false;
    }
    let have_ip = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    for (have, what) in [
        (Path::new(PROMETHEUS).exists(), PROMETHEUS),
        (
            Path::new("/usr/bin/nsenter").exists(),
            "nsenter (util-linux)",
        ),
        (have_ip, "ip (iproute2)"),
    ] {
        if !have {
            apptheus_testkit::skip(&format!("{what}: scripts/setup.sh --test"));
            return false;
        }
    }
    true
}

/// An instant query through Prometheus' HTTP API, from its namespace.
fn query(f: &Fabric, q: &str) -> Result<Vec<Value>, String> {
    let path = format!(
        "/api/v1/query?query={}",
        url::form_urlencoded::byte_serialize(q.as_bytes()).collect::<String>()
    );
    api(f, &path).map(|data| data["result"].as_array().cloned().unwrap_or_default())
}

fn api(f: &Fabric, path: &str) -> Result<Value, String> {
    let path = path.to_string();
    let (status, body) = f
        .prom
        .run(move || common::http_get(PROM_ADDR, &path, &[]))
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&body).map_err(|e| format!("{status}: {e}: {body}"))?;
    if v["status"] != "success" {
        return Err(format!("{status}: {body}"));
    }
    Ok(v["data"].clone())
}

/// `label` of every series of an instant vector.
fn label_of(result: &[Value], label: &str) -> Vec<String> {
    let mut v: Vec<String> = result
        .iter()
        .map(|s| s["metric"][label].as_str().unwrap_or("").to_string())
        .collect();
    v.sort();
    v
}

fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match f() {
            Ok(v) => return v,
            Err(e) => e,
        };
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {last}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The dashboard's queries, with its variables set to "All" and Grafana's
/// interval variables to a duration.
fn dashboard_queries() -> Vec<(String, String)> {
    let d: Value =
        serde_json::from_str(&fs::read_to_string(repo().join("dashboards/apptheus.json")).unwrap())
            .unwrap();
    let mut out = Vec::new();
    fn walk(panels: &[Value], out: &mut Vec<(String, String)>) {
        for p in panels {
            walk(
                p["panels"].as_array().map(Vec::as_slice).unwrap_or(&[]),
                out,
            );
            for t in p["targets"].as_array().map(Vec::as_slice).unwrap_or(&[]) {
                if let Some(e) = t["expr"].as_str() {
                    out.push((
                        p["title"].as_str().unwrap_or("?").to_string(),
                        e.to_string(),
                    ));
                }
            }
        }
    }
    walk(d["panels"].as_array().unwrap(), &mut out);
    out.into_iter()
        .map(|(t, e)| {
            let e = e
                .replace("$__rate_interval", "30s")
                .replace("$node", ".*")
                .replace("$user", ".*")
                .replace("$image", ".*")
                .replace("$slurm_job", ".*");
            (t, e)
        })
        .collect()
}

#[test]
fn agents_on_three_hosts_feed_one_prometheus() {
    if !privileged() {
        return;
    }
    let _serial = common::serial();
    let started = Instant::now();
    let fabric = Fabric::new(&["node-a", "node-b", "node-c"]);
    let work = tempfile::Builder::new()
        .prefix("apptheus-multinode-")
        .tempdir()
        .unwrap();
    let dir = work.path();
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();

    // Prometheus with the example's configuration, its targets and rules.
    let example = repo().join("examples/multi-node");
    let config = fs::read_to_string(example.join("prometheus.yml")).unwrap();
    assert_eq!(config.matches("15s").count(), 2, "{config}");
    fs::write(dir.join("prometheus.yml"), config.replace("15s", "1s")).unwrap();
    fs::copy(
        repo().join("dashboards/apptheus-rules.yml"),
        dir.join("apptheus-rules.yml"),
    )
    .unwrap();
    let mut nodes = String::new();
    for name in ["node-a", "node-b"] {
        let (_, _, addr) = fabric.node(name);
        nodes.push_str(&format!(
            "- targets: ['{addr}:9091']\n  labels:\n    __node: {name}\n"
        ));
    }
    fs::write(dir.join("nodes.yml"), nodes).unwrap();
    let mut prom_cmd = fabric.prom.command(PROMETHEUS);
    prom_cmd
        .arg(format!(
            "--config.file={}",
            dir.join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("data").display()
        ))
        .arg(format!("--web.listen-address={PROM_ADDR}"))
        .arg("--web.enable-remote-write-receiver");
    let mut prom = Proc::spawn(prom_cmd, dir.join("prometheus.log"));
    wait_for("Prometheus ready", Duration::from_secs(30), || {
        if !prom.alive() {
            panic!("Prometheus exited:\n{}", prom.log());
        }
        let r = fabric
            .prom
            .run(|| common::http_get(PROM_ADDR, "/-/ready", &[]));
        match r {
            Ok((200, _)) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });

    // Every agent first (an agent adopts apptheus cgroups it finds at start),
    // each trusting its own starter copy.
    let trust = TrustDir::new();
    let mut agents = BTreeMap::new();
    let mut starters = BTreeMap::new();
    for (name, ns, addr) in &fabric.nodes {
        let starter = trust.starter(&format!("starter-{name}"));
        let sock = dir.join(format!("sock-{name}"));
        fs::create_dir(&sock).unwrap();
        let mut cmd = ns.command(AGENT);
        cmd.arg(format!("--trust.path={}", starter.display()))
            .arg(format!("--web.listen-address={addr}:9091"))
            .arg(format!(
                "--socket.path={}",
                sock.join("gateway.sock").display()
            ))
            .arg("--monitor.interval=200ms");
        if name == "node-c" {
            cmd.arg(format!(
                "--push.remote-write-url=http://{PROM_ADDR}/api/v1/write"
            ))
            .arg(format!("--push.instance={name}"))
            .arg("--push.interval=1s");
        }
        agents.insert(
            name.clone(),
            Proc::spawn(cmd, dir.join(format!("{name}.log"))),
        );
        starters.insert(name.clone(), starter);
    }
    for (name, _, addr) in &fabric.nodes {
        let addr = format!("{addr}:9091");
        let agent = agents.get_mut(name).unwrap();
        let ns = &fabric.node(name).1;
        wait_for(&format!("agent on {name}"), Duration::from_secs(30), || {
            if !agent.alive() {
                panic!("the agent of {name} exited:\n{}", agent.log());
            }
            let a = addr.clone();
            match ns.run(move || common::http_get(&a, "/-/ready", &[])) {
                Ok((200, _)) => Ok(()),
                other => Err(format!("{other:?}")),
            }
        });
    }
    eprintln!("agents ready: {:?}", started.elapsed());

    // One container per host, started from that host's namespace.
    let jobs = [("node-a", "1001"), ("node-b", "1002"), ("node-c", "1003")];
    let mut containers = Vec::new();
    for (name, job) in jobs {
        let mut cmd = fabric.node(name).1.command(&starters[name]);
        cmd.arg("--")
            .arg(&starters[name])
            .args(["workload", "--spin", "2", "--sleep", "120"])
            .env("SLURM_JOB_ID", job)
            .env("APPTAINER_CONTAINER", format!("/images/{name}.sif"))
            .env("APPTAINER_INSTANCE", format!("inst-{name}"));
        containers.push(Proc::spawn_group(
            cmd,
            dir.join(format!("container-{name}.log")),
        ));
    }

    // One agent per node, pulled and pushed alike.
    wait_for("an agent per node", Duration::from_secs(30), || {
        let r = query(&fabric, "count by (instance) (apptheus_build_info)")?;
        let nodes = label_of(&r, "instance");
        if nodes == ["node-a", "node-b", "node-c"] {
            Ok(())
        } else {
            Err(format!("{nodes:?}"))
        }
    });
    // Each container under its own node only, with its metadata; the
    // Apptainer instance name kept as exported_instance. (Containers of
    // other agents on this machine, whose cgroups an agent adopts at start,
    // are left out by their starter.)
    let ours = format!(
        "apptheus_container_info{{starter=~\"{}/.*\"}}",
        trust.dir.path().display()
    );
    let info = wait_for("each node's container", Duration::from_secs(30), || {
        let r = query(&fabric, &ours)?;
        if r.len() == 3 {
            Ok(r)
        } else {
            Err(format!("{} containers: {r:?}", r.len()))
        }
    });
    for s in &info {
        let m = &s["metric"];
        let node = m["instance"].as_str().unwrap();
        let (_, job) = jobs.iter().find(|(n, _)| *n == node).unwrap();
        assert_eq!(m["slurm_job_id"], *job, "{m}");
        assert_eq!(m["image"], format!("/images/{node}.sif"), "{m}");
        assert_eq!(m["exported_instance"], format!("inst-{node}"), "{m}");
        assert_eq!(m["job"], "apptheus", "{m}");
        assert_eq!(m["user"], "root", "{m}");
    }
    // The dashboard's join: CPU per node and Slurm job.
    let joined = wait_for("CPU per node and job", Duration::from_secs(30), || {
        let r = query(
            &fabric,
            &format!(
                "sum by (instance, slurm_job_id) (rate(apptheus_container_cpu_usage_seconds_total[5s]) \
                 * on(container_id, instance) group_left(slurm_job_id) {ours})"
            ),
        )?;
        if r.len() == 3 {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    });
    let pairs: Vec<(String, String)> = joined
        .iter()
        .map(|s| {
            (
                s["metric"]["instance"].as_str().unwrap().to_string(),
                s["metric"]["slurm_job_id"].as_str().unwrap().to_string(),
            )
        })
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(
        pairs,
        jobs.iter()
            .map(|(n, j)| (n.to_string(), j.to_string()))
            .collect::<Vec<_>>()
    );
    eprintln!("Prometheus sees three nodes: {:?}", started.elapsed());

    // Every dashboard query evaluates, and the template variables list
    // every node.
    let mut empty = Vec::new();
    for (title, q) in dashboard_queries() {
        let r = query(&fabric, &q).unwrap_or_else(|e| panic!("panel {title:?}: {q}: {e}"));
        if r.is_empty() {
            empty.push(title);
        }
    }
    eprintln!("dashboard panels without data here: {empty:?}");
    for must in ["CPU usage", "Containers per node", "Memory working set"] {
        assert!(
            !empty.iter().any(|t| t == must),
            "panel {must:?} has no data"
        );
    }
    let r = query(&fabric, &format!("count by (instance) ({ours})")).unwrap();
    assert_eq!(label_of(&r, "instance"), ["node-a", "node-b", "node-c"]);

    // The rules are loaded; an agent that goes away makes
    // ApptheusAgentDown pending for its node.
    let rules = api(&fabric, "/api/v1/rules").unwrap();
    let mut groups: Vec<&str> = rules["groups"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|g| g["name"].as_str())
        .collect();
    groups.sort();
    assert_eq!(groups, ["apptheus-agent", "apptheus-containers"]);
    drop(agents.remove("node-b"));
    wait_for(
        "ApptheusAgentDown for node-b",
        Duration::from_secs(30),
        || {
            let r = query(
                &fabric,
                r#"ALERTS{alertname="ApptheusAgentDown", alertstate="pending"}"#,
            )?;
            if label_of(&r, "instance") == ["node-b"] {
                Ok(())
            } else {
                Err(format!("{r:?}"))
            }
        },
    );
    eprintln!("agent-down alert pending: {:?}", started.elapsed());

    for (name, agent) in agents.iter_mut() {
        assert!(agent.alive(), "the agent of {name} died:\n{}", agent.log());
    }
    drop(containers);
    drop(agents);
    drop(prom);
}

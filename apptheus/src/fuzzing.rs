//! The surface for fuzzers: one entry point per kind of input that comes
//! from outside the agent, each taking raw bytes. The fuzz targets in
//! `fuzz/` call these, and so does `tests/fuzz_regressions.rs`, which
//! replays the seed corpus and every input that ever crashed.
//!
//! An entry point panics only on a bug: a parser that panics, or a result
//! that breaks what the agent relies on (checked with `assert!` here).
//! Keep them small and stable; move the parsers freely behind them.
//!
//! A new parser of outside input (say, Apptainer's engine config from a
//! starter's environment) goes into an entry point here (a new one, or a
//! new first-byte choice of an existing one), with a target in
//! `fuzz/fuzz_targets/` and a `[[bin]]` in `fuzz/Cargo.toml`, seeds in
//! `fuzz/make-seeds.sh`, and a line in `tests/fuzz_regressions.rs`.
use std::sync::{Arc, OnceLock, atomic::AtomicBool};

use crate::{
    app::preflight,
    attribution::{apptainer, socket},
    cgroup,
    export::exposition,
    host::proctree,
    http, model, webconfig,
};

/// The parser an input went to: `parser` of the entry point's `of`. An
/// entry point with several picks one with the input's first byte, and
/// reaches none when the input is empty; one with a single parser always
/// reaches it. The regression test checks with this that every input it
/// replays reached a parser, and that the seeds reach them all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Reached {
    pub parser: u8,
    pub of: u8,
}

impl Reached {
    const ONLY: Option<Reached> = Some(Reached { parser: 0, of: 1 });
}

/// Picks one of `of` parsers with the first byte; the rest is the input.
fn split(data: &[u8], of: u8) -> Option<(Reached, &[u8])> {
    let (&first, rest) = data.split_first()?;
    let parser = first % of;
    Some((Reached { parser, of }, rest))
}

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// cgroup files (cgroup v1 and v2 statistics, limits, pressure, block
/// I/O, controller lists) and `/proc/self/mountinfo`.
pub fn cgroup_file(data: &[u8]) -> Option<Reached> {
    use cgroup::read::parse;
    let (reached, rest) = split(data, 10)?;
    let s = text(rest);
    match reached.parser {
        0 => {
            let _ = parse::single_u64(&s);
        }
        1 => {
            let _ = parse::limit(&s);
            let _ = parse::v1_limit(&s);
        }
        2 => {
            // The first words of the input are the keys asked for.
            let mut keys = [""; 4];
            for (k, w) in keys.iter_mut().zip(s.split_whitespace()) {
                *k = w;
            }
            if let Ok(f) = parse::flat_keyed(&s, keys) {
                for key in keys {
                    let _ = f.get(key);
                    let _ = f.require(key);
                }
            }
        }
        3 => {
            let _ = parse::io_stat(&s);
        }
        4 => {
            let _ = parse::blkio_v1(&s);
        }
        5 => {
            let _ = parse::psi(&s);
        }
        6 => {
            let lines = parse::count_lines(&s);
            assert!(lines <= s.len() as u64 + 1);
        }
        7 => {
            let _ = parse::Device::parse(&s);
        }
        8 => {
            let layout = cgroup::layout::Layout::parse(&s);
            let _ = layout.kind();
        }
        _ => {
            let (available, enabled) = s.split_once('\n').unwrap_or((&s, ""));
            for c in cgroup::delegation::missing(available, enabled) {
                assert!(available.split_whitespace().any(|a| a == c));
            }
        }
    }
    Some(reached)
}

/// Files of other users' processes: `/proc/<pid>/environ` (any user
/// controls their own), `/proc/<pid>/cgroup`, `/proc/<pid>/stat` (the
/// command name is the user's), `/proc/<pid>/task/<tid>/children` and the
/// `CapEff` line of `/proc/<pid>/status`.
pub fn proc_file(data: &[u8]) -> Option<Reached> {
    let (reached, rest) = split(data, 5)?;
    match reached.parser {
        0 => {
            // A starter's first argument (up to the first NUL), then its
            // environment, Apptainer's engine configuration included.
            let (arg0, environ) = match rest.iter().position(|b| *b == 0) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            let arg0 = text(arg0);
            for parent_launcher in [false, true] {
                let run = apptainer::describe(&apptainer::StarterFacts {
                    arg0: &arg0,
                    parent_launcher,
                    environ: Some(environ),
                    cwd: Some(std::path::Path::new("/home/u")),
                });
                let names = match &run.kind {
                    apptainer::RunKind::Instance { name } => Some(name),
                    apptainer::RunKind::Join { instance } => Some(instance),
                    _ => None,
                };
                for v in [&run.image, &run.env_slurm_job_id]
                    .into_iter()
                    .flatten()
                    .chain(names)
                {
                    assert!(
                        v.len() <= apptainer::MAX_VALUE_LEN,
                        "{} bytes kept",
                        v.len()
                    );
                    assert!(!v.chars().any(char::is_control), "{v:?}");
                }
            }
        }
        1 => {
            let t = text(rest);
            let c = cgroup::proc_cgroup::parse(&t);
            for path in c.v2.iter().chain(c.v1.values()) {
                assert!(path.starts_with('/'), "{path:?}");
            }
            // A job label is Slurm's job id, or the SLUID newer releases
            // name the job's directory after: short, letters and digits.
            if let Some(job) = model::slurm::job_in_proc_cgroup(&t) {
                assert!(
                    !job.is_empty()
                        && job.len() <= 20
                        && job.bytes().all(|b| b.is_ascii_alphanumeric()),
                    "{job:?}"
                );
            }
        }
        2 => {
            let _ = proctree::parse_ppid(&text(rest));
        }
        3 => {
            let _ = proctree::parse_children(&text(rest)).count();
        }
        _ => {
            if let Some(caps) = preflight::effective_caps(&text(rest)) {
                let _ = preflight::missing_caps(caps);
            }
        }
    }
    Some(reached)
}

/// What the monitoring socket reads about a caller: its
/// `/proc/<pid>/stat` line, whose command name the caller chose.
pub fn socket_peer(data: &[u8]) -> Option<Reached> {
    let _ = socket::verify::parse_start_time(&text(data));
    Reached::ONLY
}

/// The web config file (`--web.config.file`): YAML, then the TLS settings
/// and PEM given inline, and a Basic `Authorization` header.
pub fn web_config(data: &[u8]) -> Option<Reached> {
    let s = text(data);
    let Ok(config) = webconfig::parse(&s, std::path::Path::new("/nonexistent")) else {
        return Reached::ONLY;
    };
    if let Some(tls) = &config.tls
        && tls.files().is_empty()
    {
        let _ = webconfig::tls::server_config(tls);
    }
    if let Ok(value) = hyper::header::HeaderValue::from_bytes(data) {
        let _ = webconfig::auth::credentials(&value);
    }
    Reached::ONLY
}

/// Servers to fuzz requests against: plain, and with basic auth and extra
/// headers (user `u`, password `p`, a bcrypt hash of the cheapest cost).
fn servers() -> &'static [Arc<http::Server>; 2] {
    static SERVERS: OnceLock<[Arc<http::Server>; 2]> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let make = |web| {
            Arc::new(http::Server::new(
                crate::export::metrics::AgentMetrics::new(),
                "/metrics".into(),
                Arc::new(AtomicBool::new(true)),
                web,
            ))
        };
        let dir = std::env::temp_dir().join(format!("apptheus-fuzz-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("web.yml");
        let web = bcrypt::hash("p", 4)
            .ok()
            .map(|hash| {
                format!(
                    "basic_auth_users:\n  u: '{hash}'\nhttp_server_config:\n  headers:\n    X-Frame-Options: deny\n"
                )
            })
            .and_then(|config| std::fs::write(&path, config).ok())
            .and_then(|()| webconfig::WebConfigHandle::load(&path).ok());
        let _ = std::fs::remove_dir_all(&dir);
        [make(None), make(web)]
    })
}

/// Bytes a client sends on one connection (the first byte picks the server:
/// even plain, odd with authentication), through hyper's parser to the
/// routes, content negotiation and authentication; returns the server
/// chosen and what it answered.
pub fn http_request(data: &[u8]) -> Option<(Reached, Vec<u8>)> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    thread_local! {
        static RT: Option<tokio::runtime::Runtime> = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .ok();
    }
    let (reached, request) = split(data, 2)?;
    let server = Arc::clone(&servers()[usize::from(reached.parser)]);
    let request = request.to_vec();
    let exchange = async move {
        let (mut client, io) = tokio::io::duplex(64 * 1024);
        let serve = http::serve_stream(io, &server);
        let talk = async {
            let _ = client.write_all(&request).await;
            let _ = client.shutdown().await;
            let mut answer = Vec::new();
            let _ = client.read_to_end(&mut answer).await;
            answer
        };
        let (_, answer) = tokio::join!(serve, talk);
        answer
    };
    let answer = RT.with(|rt| rt.as_ref().map(|rt| rt.block_on(exchange)));
    let answer = answer.unwrap_or_default();
    assert!(
        answer.is_empty() || answer.starts_with(b"HTTP/1."),
        "not an HTTP answer: {:?}",
        String::from_utf8_lossy(&answer[..answer.len().min(64)])
    );
    Some((reached, answer))
}

/// The header values the handler interprets itself: `Accept` and
/// `Accept-Encoding`.
pub fn http_headers(data: &[u8]) -> Option<Reached> {
    let s = text(data);
    let _ = exposition::negotiate(&s);
    let _ = http::accepts_gzip(&s);
    Reached::ONLY
}

//! What Apptainer says about a run of its starter, read at the start: the
//! name it gives the process (argv[0]: `Apptainer runtime parent: <image>`,
//! `Apptainer instance: <user> [<name>]`) and the engine configuration it
//! hands the starter in its environment (`ENGINE_CONFIG<n>` chunks of
//! JSON), which names the image the user ran, an instance, a join, and the
//! container's environment. Pure: the caller reads the process.
//!
//! The environment is the caller's: everything from it is a label value
//! at most, never a decision about trust.
use std::path::Path;

use serde::Deserialize;

/// Longest label value kept; longer values are cut at a character boundary.
pub(crate) const MAX_VALUE_LEN: usize = 256;
/// Chunks of engine configuration read at most (Apptainer uses one for
/// anything but huge configurations).
const MAX_CHUNKS: usize = 16;

/// What a starter run is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum RunKind {
    /// `exec`, `run`, `shell`, `build`...: a container of its own.
    Container,
    /// `instance start`: a container that lasts until `instance stop`.
    Instance { name: String },
    /// `exec|run|shell instance://<name>`: joins the instance's container.
    Join { instance: String },
    /// A run Apptainer makes for itself (unpacking an image into a
    /// temporary sandbox, a fakeroot clean-up): no container of the user's.
    Helper,
}

/// What is known of a starter run at its start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StarterRun {
    pub kind: RunKind,
    /// What the user ran (the SIF path, not a temporary sandbox).
    pub image: Option<String>,
    /// SLURM_JOB_ID in the container's environment: set by whoever started
    /// it, so only a fallback to where Slurm put the job.
    pub env_slurm_job_id: Option<String>,
}

/// The facts about a starter process that its run is told from.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct StarterFacts<'a> {
    /// Its first argument.
    pub arg0: &'a str,
    /// Its parent runs a trusted launcher (Apptainer's command-line tool
    /// ran it as a child rather than replacing itself with it).
    pub parent_launcher: bool,
    /// Its environment (`/proc/<pid>/environ`), if it could be read.
    pub environ: Option<&'a [u8]>,
    /// Its working directory, for an image named by a relative path.
    pub cwd: Option<&'a Path>,
}

const RUNTIME_PARENT: [&str; 2] = ["Apptainer runtime parent:", "Singularity runtime parent:"];
const INSTANCE: [&str; 2] = ["Apptainer instance:", "Singularity instance:"];
const FAKEROOT: [&str; 2] = ["Apptainer fakeroot", "Singularity fakeroot"];
const INSTANCE_URI: &str = "instance://";

/// Tells what a starter run is and what it runs.
pub(crate) fn describe(f: &StarterFacts<'_>) -> StarterRun {
    let env = f.environ.map(Environ::parse).unwrap_or_default();
    let json = env.engine.as_ref().map(|e| &e.engine_config.json_config);
    let named = |prefixes: &[&str]| prefixes.iter().any(|p| f.arg0.starts_with(p));

    // The image argument as the user gave it, else what the engine runs.
    let image_arg = json
        .map(|j| j.image_arg.as_str())
        .filter(|s| !s.is_empty())
        .or_else(|| json.map(|j| j.image.as_str()).filter(|s| !s.is_empty()));
    let join_target = image_arg
        .and_then(|i| i.strip_prefix(INSTANCE_URI))
        .or_else(|| json.and_then(|j| j.image.strip_prefix(INSTANCE_URI)))
        .map(clean);

    let kind = if named(&INSTANCE) || json.is_some_and(|j| j.instance) {
        let from_config = env
            .engine
            .as_ref()
            .map(|e| e.container_id.as_str())
            .filter(|s| !s.is_empty());
        let name = from_config
            .map(clean)
            .or_else(|| bracketed(f.arg0))
            .unwrap_or_default();
        RunKind::Instance { name }
    } else if let Some(instance) = join_target.filter(|n| !n.is_empty()) {
        RunKind::Join { instance }
    } else if f.parent_launcher && (named(&RUNTIME_PARENT) || named(&FAKEROOT)) {
        RunKind::Helper
    } else if let (Some(name), None) = (&env.legacy_instance, &env.engine) {
        // A starter that names its instance only in plain variables (older
        // releases, stand-ins).
        RunKind::Instance { name: name.clone() }
    } else {
        RunKind::Container
    };

    let image = match &kind {
        RunKind::Join { .. } | RunKind::Helper => None,
        _ => image_arg
            .map(|i| absolute(i, f.cwd))
            .or_else(|| env.legacy_image.clone())
            .or_else(|| {
                RUNTIME_PARENT
                    .iter()
                    .find_map(|p| f.arg0.strip_prefix(p))
                    .map(|rest| clean(rest.trim()))
                    .filter(|s| !s.is_empty())
            }),
    };
    StarterRun {
        kind,
        image,
        env_slurm_job_id: env.slurm_job_id,
    }
}

/// `path` made absolute against `cwd` when relative (an image named on the
/// command line relative to where the user was); URIs stay as they are.
fn absolute(path: &str, cwd: Option<&Path>) -> String {
    let path = clean(path);
    match cwd {
        Some(dir) if !path.starts_with('/') && !path.contains("://") => {
            clean(dir.join(&path).to_string_lossy().as_bytes())
        }
        _ => path,
    }
}

/// The name in `... [<name>]`.
fn bracketed(arg0: &str) -> Option<String> {
    let start = arg0.rfind('[')? + 1;
    let end = start + arg0[start..].find(']')?;
    Some(clean(&arg0[start..end])).filter(|s| !s.is_empty())
}

/// The parts of a starter's environment that matter here.
#[derive(Debug, Default)]
struct Environ {
    engine: Option<Engine>,
    slurm_job_id: Option<String>,
    legacy_image: Option<String>,
    legacy_instance: Option<String>,
}

impl Environ {
    fn parse(environ: &[u8]) -> Environ {
        let mut out = Environ::default();
        let mut chunks: Vec<Option<&[u8]>> = vec![None; MAX_CHUNKS];
        let mut count = None;
        let mut sing_image = None;
        let mut sing_instance = None;
        for entry in environ.split(|b| *b == 0) {
            let Some(eq) = entry.iter().position(|b| *b == b'=') else {
                continue;
            };
            let (key, value) = (&entry[..eq], &entry[eq + 1..]);
            if let Some(n) = key.strip_prefix(b"ENGINE_CONFIG") {
                if n == b"_CHUNKS" {
                    count = std::str::from_utf8(value)
                        .ok()
                        .and_then(|v| v.parse::<usize>().ok());
                } else if let Some(i) = std::str::from_utf8(n)
                    .ok()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|i| (1..=MAX_CHUNKS).contains(i))
                {
                    chunks[i - 1] = Some(value);
                }
                continue;
            }
            let slot = match key {
                b"SLURM_JOB_ID" => &mut out.slurm_job_id,
                b"APPTAINER_CONTAINER" => &mut out.legacy_image,
                b"SINGULARITY_CONTAINER" => &mut sing_image,
                b"APPTAINER_INSTANCE" => &mut out.legacy_instance,
                b"SINGULARITY_INSTANCE" => &mut sing_instance,
                _ => continue,
            };
            let v = clean(value);
            if !v.is_empty() {
                *slot = Some(v);
            }
        }
        out.legacy_image = out.legacy_image.or(sing_image);
        out.legacy_instance = out.legacy_instance.or(sing_instance);
        if let Some(n) = count.filter(|n| (1..=MAX_CHUNKS).contains(n))
            && let Some(parts) = chunks[..n].iter().copied().collect::<Option<Vec<_>>>()
        {
            out.engine = serde_json::from_slice::<Engine>(&parts.concat()).ok();
        }
        // The container's own environment, in the configuration: where the
        // job's variables are, the starter's own being clean.
        if let Some(job) = out.engine.as_ref().and_then(|e| {
            e.engine_config
                .oci_config
                .process
                .env
                .iter()
                .find_map(|v| v.strip_prefix("SLURM_JOB_ID="))
                .map(clean)
                .filter(|v| !v.is_empty())
        }) {
            out.slurm_job_id = Some(job);
        }
        out
    }
}

/// The parts of Apptainer's engine configuration read here; everything
/// else in it is ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct Engine {
    #[serde(rename = "containerID")]
    container_id: String,
    engine_config: EngineConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct EngineConfig {
    json_config: JsonConfig,
    oci_config: OciConfig,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
struct JsonConfig {
    image: String,
    image_arg: String,
    instance: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OciConfig {
    process: OciProcess,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct OciProcess {
    env: Vec<String>,
}

/// A value as a label: lossy UTF-8, no control characters, at most
/// [`MAX_VALUE_LEN`] bytes.
pub(crate) fn clean(value: impl AsRef<[u8]>) -> String {
    let s = String::from_utf8_lossy(value.as_ref());
    let s: String = s.chars().filter(|c| !c.is_control()).collect();
    if s.len() <= MAX_VALUE_LEN {
        return s;
    }
    let mut end = MAX_VALUE_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn environ(json: &str) -> Vec<u8> {
        format!("APPTAINER_MESSAGELEVEL=1\0ENGINE_CONFIG1={json}\0ENGINE_CONFIG_CHUNKS=1\0")
            .into_bytes()
    }

    /// The environment Apptainer 1.4.5 gave its starter for an ordinary
    /// user's `apptainer exec /srv/t/img.sif burn` (abridged), run with
    /// SLURM_JOB_ID set: the SIF unpacked into a temporary sandbox first.
    fn exec_environ() -> Vec<u8> {
        environ(
            r#"{"engineName":"apptainer","containerID":"","engineConfig":{"jsonConfig":{"unixSocketPair":[0,0],"image":"/tmp/rootfs-1087015022/root","imageArg":"/srv/t/img.sif","deleteTempDir":"/tmp/rootfs-1087015022","umask":18},"ociConfig":{"ociVersion":"","process":{"user":{"uid":0,"gid":0},"args":["/.singularity.d/actions/exec","burn"],"env":["APPTAINER_CONTAINER=/tmp/rootfs-1087015022/root","APPTAINER_NAME=img.sif","SLURM_JOB_ID=777","HOME=/home/tuser"]}}}}"#,
        )
    }

    #[test]
    fn an_exec_runs_the_sif_the_user_named_not_the_sandbox() {
        let env = exec_environ();
        let run = describe(&StarterFacts {
            arg0: "Apptainer runtime parent: img.sif",
            environ: Some(&env),
            ..StarterFacts::default()
        });
        assert_eq!(run.kind, RunKind::Container);
        assert_eq!(run.image.as_deref(), Some("/srv/t/img.sif"));
        assert_eq!(run.env_slurm_job_id.as_deref(), Some("777"));
    }

    #[test]
    fn a_relative_image_is_made_absolute_against_the_starters_directory() {
        let env =
            environ(r#"{"engineConfig":{"jsonConfig":{"image":"x","imageArg":"imgs/a.sif"}}}"#);
        let run = describe(&StarterFacts {
            arg0: "Apptainer runtime parent: a.sif",
            environ: Some(&env),
            cwd: Some(Path::new("/home/u/work")),
            ..StarterFacts::default()
        });
        assert_eq!(run.image.as_deref(), Some("/home/u/work/imgs/a.sif"));
        let env = environ(r#"{"engineConfig":{"jsonConfig":{"imageArg":"docker://alpine"}}}"#);
        let run = describe(&StarterFacts {
            environ: Some(&env),
            cwd: Some(Path::new("/home/u")),
            ..StarterFacts::default()
        });
        assert_eq!(run.image.as_deref(), Some("docker://alpine"));
    }

    /// The nested `apptainer exec ... unsquashfs` the command-line tool
    /// runs to unpack a SIF: run by the tool itself, named like a run.
    #[test]
    fn a_run_of_the_tools_own_is_a_helper() {
        let env = exec_environ();
        let facts = StarterFacts {
            arg0: "Apptainer runtime parent: tmp-rootfs-1",
            parent_launcher: true,
            environ: Some(&env),
            ..StarterFacts::default()
        };
        assert_eq!(describe(&facts).kind, RunKind::Helper);
        assert_eq!(describe(&facts).image, None);
        let fakeroot = StarterFacts {
            arg0: "Apptainer fakeroot",
            parent_launcher: true,
            ..StarterFacts::default()
        };
        assert_eq!(describe(&fakeroot).kind, RunKind::Helper);
        // The same names from a shell are the user's containers.
        let user = StarterFacts {
            parent_launcher: false,
            ..facts
        };
        assert_eq!(describe(&user).kind, RunKind::Container);
    }

    #[test]
    fn an_instance_is_named_by_its_configuration_or_its_process_name() {
        let env = environ(
            r#"{"engineName":"apptainer","containerID":"web1","engineConfig":{"jsonConfig":{"image":"/srv/t/img.sif","imageArg":"/srv/t/img.sif","instance":true}}}"#,
        );
        // Started by the tool as a child: still an instance, not a helper.
        let run = describe(&StarterFacts {
            arg0: "Apptainer instance: root [web1]",
            parent_launcher: true,
            environ: Some(&env),
            ..StarterFacts::default()
        });
        assert_eq!(
            run.kind,
            RunKind::Instance {
                name: "web1".into()
            }
        );
        assert_eq!(run.image.as_deref(), Some("/srv/t/img.sif"));
        // The environment gone already: the process name still tells.
        let run = describe(&StarterFacts {
            arg0: "Apptainer instance: alice [db]",
            parent_launcher: true,
            ..StarterFacts::default()
        });
        assert_eq!(run.kind, RunKind::Instance { name: "db".into() });
    }

    #[test]
    fn a_join_names_its_instance() {
        let env = environ(
            r#"{"containerID":"","engineConfig":{"jsonConfig":{"image":"instance://web1","imageArg":"instance://web1","instanceJoin":true}}}"#,
        );
        let run = describe(&StarterFacts {
            arg0: "Apptainer runtime parent: ",
            environ: Some(&env),
            ..StarterFacts::default()
        });
        assert_eq!(
            run.kind,
            RunKind::Join {
                instance: "web1".into()
            }
        );
        assert_eq!(run.image, None);
    }

    #[test]
    fn configuration_in_several_chunks_is_joined() {
        let json = r#"{"containerID":"big","engineConfig":{"jsonConfig":{"instance":true,"imageArg":"/a.sif"}}}"#;
        let (a, b) = json.split_at(20);
        let env = format!("ENGINE_CONFIG2={b}\0ENGINE_CONFIG1={a}\0ENGINE_CONFIG_CHUNKS=2\0")
            .into_bytes();
        let run = describe(&StarterFacts {
            environ: Some(&env),
            ..StarterFacts::default()
        });
        assert_eq!(run.kind, RunKind::Instance { name: "big".into() });
        assert_eq!(run.image.as_deref(), Some("/a.sif"));
    }

    /// Starters that pass no engine configuration (older releases, the
    /// stand-in of the tests) are described from plain variables.
    #[test]
    fn plain_variables_are_the_fallback() {
        let env = b"APPTAINER_CONTAINER=/scratch/lolcow.sif\0APPTAINER_NAME=lolcow.sif\0SLURM_JOB_ID=4242\0";
        let run = describe(&StarterFacts {
            environ: Some(env),
            ..StarterFacts::default()
        });
        assert_eq!(
            run.kind,
            RunKind::Container,
            "APPTAINER_NAME is the image's name"
        );
        assert_eq!(run.image.as_deref(), Some("/scratch/lolcow.sif"));
        assert_eq!(run.env_slurm_job_id.as_deref(), Some("4242"));
        let env = b"SINGULARITY_CONTAINER=/old.sif\0SINGULARITY_INSTANCE=old\0";
        let run = describe(&StarterFacts {
            environ: Some(env),
            ..StarterFacts::default()
        });
        assert_eq!(run.kind, RunKind::Instance { name: "old".into() });
        assert_eq!(run.image.as_deref(), Some("/old.sif"));
    }

    #[test]
    fn hostile_input_gives_nothing_or_clean_values() {
        for env in [
            &b""[..],
            b"\0\0=\0ENGINE_CONFIG_CHUNKS=99999999999999999999\0",
            b"ENGINE_CONFIG_CHUNKS=2\0ENGINE_CONFIG1={\0",
            b"ENGINE_CONFIG1=[1,2\0ENGINE_CONFIG_CHUNKS=1\0",
            b"ENGINE_CONFIG0=x\0ENGINE_CONFIG17=y\0ENGINE_CONFIGx=z\0",
        ] {
            let run = describe(&StarterFacts {
                arg0: "\x1b[31m",
                environ: Some(env),
                ..StarterFacts::default()
            });
            assert_eq!(run.kind, RunKind::Container, "{env:?}");
            assert_eq!(run.image, None, "{env:?}");
        }
        let mut long = b"APPTAINER_CONTAINER=".to_vec();
        long.extend(std::iter::repeat_n("é".as_bytes(), 1000).flatten());
        long.extend(b"\n\x1b[31m");
        let image = describe(&StarterFacts {
            environ: Some(&long),
            ..StarterFacts::default()
        })
        .image
        .unwrap();
        assert!(
            image.len() <= MAX_VALUE_LEN && image.chars().all(|c| c == 'é'),
            "{image}"
        );
        assert_eq!(clean(b"\xff\xfe12"), "\u{fffd}\u{fffd}12");
    }
}

//! What cargo reports about a build: `cargo metadata`'s target directory and
//! the artifacts of `cargo test --no-run --message-format=json`.
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;

#[derive(Deserialize)]
struct Metadata {
    target_directory: PathBuf,
}

/// The target directory named by `cargo metadata --format-version 1`.
pub fn target_directory(metadata: &str) -> Option<PathBuf> {
    serde_json::from_str::<Metadata>(metadata.trim())
        .ok()
        .map(|m| m.target_directory)
}

/// One line of cargo's JSON messages; only the fields read here.
#[derive(Deserialize)]
struct Message {
    reason: String,
    #[serde(default)]
    manifest_path: Option<String>,
    #[serde(default)]
    target: Option<Target>,
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    executable: Option<PathBuf>,
}

#[derive(Deserialize)]
struct Target {
    #[serde(default)]
    kind: Vec<String>,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct Profile {
    #[serde(default)]
    test: bool,
}

/// The executables a build produced for the tests of one package.
#[derive(Debug, Default, PartialEq)]
pub struct Artifacts {
    /// Test binaries by target name.
    pub tests: BTreeMap<String, PathBuf>,
    /// The binaries (not test builds) of the package and of its helper
    /// package: what the tests start by path.
    pub executables: Vec<PathBuf>,
}

/// Reads cargo's JSON messages (one per line) and keeps the test binaries
/// of the package whose manifest is `manifest`, and the binaries of it and
/// of the package whose manifest is `helpers` (apptheus-testkit: the
/// starter simulator). Lines that are not JSON messages (or not
/// artifacts) are passed over.
pub fn parse(messages: &str, manifest: &Path, helpers: &Path) -> Artifacts {
    let mut out = Artifacts::default();
    for line in messages.lines() {
        let Ok(msg) = serde_json::from_str::<Message>(line) else {
            continue;
        };
        if msg.reason != "compiler-artifact" {
            continue;
        }
        let (Some(target), Some(exe)) = (msg.target, msg.executable) else {
            continue;
        };
        let from = msg.manifest_path.as_deref().map(Path::new);
        let (ours, helper) = (from == Some(manifest), from == Some(helpers));
        if !ours && !helper {
            continue;
        }
        let is_test_build = msg.profile.is_some_and(|p| p.test);
        if target.kind.iter().any(|k| k == "test") {
            if !ours {
                continue;
            }
            out.tests.insert(target.name, exe);
        } else if target.kind.iter().any(|k| k == "bin") && !is_test_build {
            out.executables.push(exe);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "/w/apptheus/Cargo.toml";
    const HELPERS: &str = "/w/apptheus-testkit/Cargo.toml";

    #[test]
    fn keeps_the_package_tests_and_binaries() {
        let lines = [
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["test"],"name":"cgroups"},"profile":{"test":true},"executable":"/t/debug/deps/cgroups-1f","fresh":true}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["bin"],"name":"apptheus"},"profile":{"test":false},"executable":"/t/debug/apptheus"}"#,
            // The unit tests of the binary: a test build of a bin target.
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["bin"],"name":"apptheus"},"profile":{"test":true},"executable":"/t/debug/deps/apptheus-9a"}"#,
            // A library has no executable.
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["lib"],"name":"apptheus"},"profile":{"test":false},"executable":null}"#,
            // The helper package's binary, and its tests (not ours).
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus-testkit/Cargo.toml","target":{"kind":["bin"],"name":"apptheus-starter-sim"},"profile":{"test":false},"executable":"/t/debug/apptheus-starter-sim"}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus-testkit/Cargo.toml","target":{"kind":["test"],"name":"sim"},"profile":{"test":true},"executable":"/t/debug/deps/sim-3c"}"#,
            // Another package's test.
            r#"{"reason":"compiler-artifact","manifest_path":"/w/xtask/Cargo.toml","target":{"kind":["test"],"name":"package"},"profile":{"test":true},"executable":"/t/debug/deps/package-2b"}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "   Compiling apptheus v0.1.0",
            "",
        ]
        .join("\n");
        let got = parse(&lines, Path::new(MANIFEST), Path::new(HELPERS));
        assert_eq!(
            got.tests,
            BTreeMap::from([(
                "cgroups".to_string(),
                PathBuf::from("/t/debug/deps/cgroups-1f")
            )])
        );
        assert_eq!(
            got.executables,
            vec![
                PathBuf::from("/t/debug/apptheus"),
                PathBuf::from("/t/debug/apptheus-starter-sim")
            ]
        );
    }

    #[test]
    fn escapes_in_paths() {
        let line = r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["test"],"name":"\u00e9t\"e"},"profile":{"test":true},"executable":"/t/a\\b"}"#;
        let got = parse(line, Path::new(MANIFEST), Path::new(HELPERS));
        assert_eq!(got.tests.get("ét\"e"), Some(&PathBuf::from("/t/a\\b")));
    }

    #[test]
    fn target_directory_of_cargo_metadata() {
        assert_eq!(
            target_directory(r#"{"packages":[],"target_directory":"/w/target","version":1}"#),
            Some(PathBuf::from("/w/target"))
        );
        assert_eq!(target_directory("{"), None);
        assert_eq!(target_directory("{}"), None);
    }
}

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

/// The executables one package's build produced.
#[derive(Debug, Default, PartialEq)]
pub struct Artifacts {
    /// Test binaries by target name.
    pub tests: BTreeMap<String, PathBuf>,
    /// The package's own executables (not test builds).
    pub executables: Vec<PathBuf>,
}

/// Reads cargo's JSON messages (one per line) and keeps the executables of
/// the package whose manifest is `manifest`. Lines that are not JSON
/// messages (or not artifacts) are passed over.
pub fn parse(messages: &str, manifest: &Path) -> Artifacts {
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
        if msg.manifest_path.as_deref().map(Path::new) != Some(manifest) {
            continue;
        }
        let is_test_build = msg.profile.is_some_and(|p| p.test);
        if target.kind.iter().any(|k| k == "test") {
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

    #[test]
    fn keeps_the_package_tests_and_binaries() {
        let lines = [
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["test"],"name":"cgroups"},"profile":{"test":true},"executable":"/t/debug/deps/cgroups-1f","fresh":true}"#,
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["bin"],"name":"apptheus"},"profile":{"test":false},"executable":"/t/debug/apptheus"}"#,
            // The unit tests of the binary: a test build of a bin target.
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["bin"],"name":"apptheus"},"profile":{"test":true},"executable":"/t/debug/deps/apptheus-9a"}"#,
            // A library has no executable.
            r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["lib"],"name":"apptheus"},"profile":{"test":false},"executable":null}"#,
            // Another package's test.
            r#"{"reason":"compiler-artifact","manifest_path":"/w/xtask/Cargo.toml","target":{"kind":["test"],"name":"package"},"profile":{"test":true},"executable":"/t/debug/deps/package-2b"}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "   Compiling apptheus v0.1.0",
            "",
        ]
        .join("\n");
        let got = parse(&lines, Path::new(MANIFEST));
        assert_eq!(
            got.tests,
            BTreeMap::from([(
                "cgroups".to_string(),
                PathBuf::from("/t/debug/deps/cgroups-1f")
            )])
        );
        assert_eq!(got.executables, vec![PathBuf::from("/t/debug/apptheus")]);
    }

    #[test]
    fn escapes_in_paths() {
        let line = r#"{"reason":"compiler-artifact","manifest_path":"/w/apptheus/Cargo.toml","target":{"kind":["test"],"name":"\u00e9t\"e"},"profile":{"test":true},"executable":"/t/a\\b"}"#;
        let got = parse(line, Path::new(MANIFEST));
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

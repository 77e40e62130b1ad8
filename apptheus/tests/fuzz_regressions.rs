//! Replays the fuzz targets' seed corpus (fuzz/seeds/<target>/) and every
//! input a fuzzer ever crashed on (fuzz/regressions/<target>/) through the
//! same entry points the fuzz targets call, so that `cargo test` catches a
//! crash coming back without cargo-fuzz. Drop a crash's input file into
//! fuzz/regressions/<target>/ (named for what it broke) when fixing it.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use apptheus::fuzzing::{self, Reached};

type Entry = fn(&[u8]) -> Option<Reached>;

/// Every fuzz target in fuzz/Cargo.toml, with the entry point it calls.
const TARGETS: [(&str, Entry); 6] = [
    ("cgroup_file", fuzzing::cgroup_file),
    ("proc_file", fuzzing::proc_file),
    ("socket_peer", fuzzing::socket_peer),
    ("web_config", fuzzing::web_config),
    ("http_request", |d| fuzzing::http_request(d).map(|(r, _)| r)),
    ("http_headers", fuzzing::http_headers),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

/// One input replayed: its target and the parser it reached.
struct Replayed {
    target: &'static str,
    reached: Reached,
}

/// Runs every file of fuzz/<kind>/<target>/ through its target's entry
/// point. Everything in the folder is an input of a known target: a folder
/// named for no target, or anything but a file in a target's folder, fails
/// (it would never be replayed), and so does an input that reaches no
/// parser (too short to choose one).
fn replay(kind: &str) -> Vec<Replayed> {
    let dir = fuzz_dir().join(kind);
    let mut folders: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .collect();
    folders.sort();
    let mut out = Vec::new();
    for folder in folders {
        let name = folder.file_name().unwrap().to_string_lossy();
        let Some(&(target, entry)) = TARGETS.iter().find(|(t, _)| *t == name) else {
            panic!(
                "{}: no fuzz target is named {name:?} (known: {:?})",
                folder.display(),
                TARGETS.map(|(t, _)| t)
            );
        };
        assert!(folder.is_dir(), "{} is not a folder", folder.display());
        let mut files: Vec<PathBuf> = std::fs::read_dir(&folder)
            .unwrap()
            .map(|e| e.unwrap().path())
            .collect();
        files.sort();
        for file in files {
            assert!(file.is_file(), "{}: not an input file", file.display());
            let data = std::fs::read(&file).unwrap();
            eprintln!("{target}: {}", file.display());
            let reached = entry(&data).unwrap_or_else(|| {
                panic!(
                    "{}: reaches no parser of {target} (an empty input of a target whose \
                     first byte picks the parser)",
                    file.display()
                )
            });
            out.push(Replayed { target, reached });
        }
    }
    out
}

#[test]
fn every_fuzz_target_is_replayed_through_the_entry_point_it_fuzzes() {
    let manifest = std::fs::read_to_string(fuzz_dir().join("Cargo.toml")).unwrap();
    let bins: BTreeSet<&str> = manifest
        .lines()
        .filter_map(|l| l.strip_prefix("name = \""))
        .filter_map(|l| l.strip_suffix('"'))
        .filter(|n| *n != "apptheus-fuzz")
        .collect();
    let replayed: BTreeSet<&str> = TARGETS.iter().map(|(t, _)| *t).collect();
    assert_eq!(bins, replayed, "fuzz/Cargo.toml's targets and TARGETS here");
    for (target, _) in TARGETS {
        let path = fuzz_dir().join(format!("fuzz_targets/{target}.rs"));
        let source = std::fs::read_to_string(&path).unwrap();
        assert!(
            source.contains(&format!("apptheus::fuzzing::{target}(data)")),
            "{} does not call apptheus::fuzzing::{target}, which this test replays",
            path.display()
        );
    }
}

#[test]
fn every_seed_input_goes_through_its_parser() {
    let seeds = replay("seeds");
    // Every target has seeds, and they reach each of its parsers: a parser
    // without one would be fuzzed from nothing.
    for (target, _) in TARGETS {
        let reached: Vec<Reached> = seeds
            .iter()
            .filter(|s| s.target == target)
            .map(|s| s.reached)
            .collect();
        let of = reached
            .first()
            .unwrap_or_else(|| panic!("no seed for {target}: run fuzz/make-seeds.sh"))
            .of;
        for parser in 0..of {
            assert!(
                reached.contains(&Reached { parser, of }),
                "no seed of {target} reaches its parser {parser} (of {of}): add one to \
                 fuzz/make-seeds.sh"
            );
        }
    }
}

#[test]
fn inputs_that_once_crashed_a_parser_no_longer_do() {
    let replayed = replay("regressions");
    eprintln!("{} inputs replayed", replayed.len());
    // The fuzzers found crashes before; an empty folder means the inputs
    // were lost, not that there is nothing to replay.
    assert!(
        !replayed.is_empty(),
        "no input in fuzz/regressions/: the crashes found so far are not replayed"
    );
}

#[test]
fn a_scrape_through_the_fuzzing_entry_point_is_answered() {
    // The HTTP target is only worth its time if requests reach the handler.
    let answer = |request: &[u8]| fuzzing::http_request(request).unwrap().1;
    let ok = answer(b"\x00GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&ok);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("apptheus_build_info"), "{text}");
    let denied = answer(b"\x01GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(denied.starts_with(b"HTTP/1.1 401"));
    let allowed =
        answer(b"\x01GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpw\r\n\r\n");
    assert!(allowed.starts_with(b"HTTP/1.1 200"));
}

//! Replays the fuzz targets' seed corpus (fuzz/seeds/<target>/) and every
//! input a fuzzer ever crashed on (fuzz/regressions/<target>/) through the
//! same entry points the fuzz targets call, so that `cargo test` catches a
//! crash coming back without cargo-fuzz. Drop a crash's input file into
//! fuzz/regressions/<target>/ (named for what it broke) when fixing it.
use std::path::{Path, PathBuf};

type Entry = fn(&[u8]);

const TARGETS: [(&str, Entry); 6] = [
    ("cgroup_file", apptheus::fuzzing::cgroup_file),
    ("proc_file", apptheus::fuzzing::proc_file),
    ("socket_peer", apptheus::fuzzing::socket_peer),
    ("web_config", apptheus::fuzzing::web_config),
    ("http_request", |d| {
        apptheus::fuzzing::http_request(d);
    }),
    ("http_headers", apptheus::fuzzing::http_headers),
];

fn fuzz_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz")
}

fn inputs(kind: &str, target: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(fuzz_dir().join(kind).join(target))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    files.sort();
    files
}

fn replay(kind: &str) -> usize {
    let mut n = 0;
    for (target, entry) in TARGETS {
        for file in inputs(kind, target) {
            let data = std::fs::read(&file).unwrap();
            eprintln!("{target}: {}", file.display());
            entry(&data);
            n += 1;
        }
    }
    n
}

#[test]
fn every_seed_input_goes_through_its_parser() {
    // Every target has seeds: a target without any would fuzz from nothing.
    for (target, _) in TARGETS {
        assert!(
            !inputs("seeds", target).is_empty(),
            "no seed for {target}: run fuzz/make-seeds.sh"
        );
    }
    assert!(replay("seeds") >= TARGETS.len());
}

#[test]
fn inputs_that_once_crashed_a_parser_no_longer_do() {
    replay("regressions");
}

#[test]
fn a_scrape_through_the_fuzzing_entry_point_is_answered() {
    // The HTTP target is only worth its time if requests reach the handler.
    let ok = apptheus::fuzzing::http_request(b"\x00GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let text = String::from_utf8_lossy(&ok);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains("apptheus_build_info"), "{text}");
    let denied = apptheus::fuzzing::http_request(b"\x01GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(denied.starts_with(b"HTTP/1.1 401"));
    let allowed = apptheus::fuzzing::http_request(
        b"\x01GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic dTpw\r\n\r\n",
    );
    assert!(allowed.starts_with(b"HTTP/1.1 200"));
}

//! The daemon keeps its layers (README, "Architecture"; the rules are in
//! rules.rs): its imports, read from `apptheus/src`, point down the layers
//! only, sideways only where the architecture allows it, and never in a
//! cycle. The checker itself is tested on a small tree that breaks each
//! rule.
mod check;
mod imports;
mod rules;

use std::path::{Path, PathBuf};

use check::{Allowed, Exception, Layer, Rules};

fn daemon_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../apptheus/src")
}

#[test]
fn the_daemon_keeps_its_layers() {
    let tree = imports::read(&daemon_src(), "apptheus").expect("read apptheus/src");
    // The reader finds what the README's diagram shows, so that an empty
    // list below means something.
    for (from, to) in [
        ("app", "attribution"),
        ("http", "export"),
        ("cgroup", "model"),
    ] {
        assert!(
            tree.imports
                .iter()
                .any(|i| i.from.first().is_some_and(|f| f == from)
                    && i.to.first().is_some_and(|t| t == to)),
            "no import of {to} by {from} found: the reader is broken"
        );
    }
    let problems = rules::RULES.check(&tree);
    assert!(
        problems.is_empty(),
        "the daemon breaks its layers (xtask/tests/layers/rules.rs):\n{}",
        problems.join("\n")
    );
}

#[test]
fn test_only_modules_are_out_of_the_daemons_build() {
    let lib = std::fs::read_to_string(daemon_src().join("lib.rs")).unwrap();
    let lib = syn::parse_file(&lib).unwrap();
    for name in rules::TEST_ONLY {
        let declared = lib.items.iter().find_map(|i| match i {
            syn::Item::Mod(m) if m.ident == name => Some(m),
            _ => None,
        });
        let declared = declared.unwrap_or_else(|| panic!("lib.rs declares no module {name}"));
        assert!(
            declared.attrs.iter().any(|a| a.path().is_ident("cfg")
                && a.meta.require_list().is_ok_and(|l| {
                    l.tokens.to_string().replace(' ', "") == "feature=\"testing\""
                })),
            "lib.rs declares `mod {name}` without #[cfg(feature = \"testing\")]"
        );
    }
    // The daemon's build (normal and build dependencies, no dev ones) does
    // not turn the feature on, while the tests' build (the crate's
    // dev-dependency on itself) does.
    assert_eq!(features_of_the_daemon("normal,build"), [] as [&str; 0]);
    assert!(features_of_the_daemon("all").contains(&"testing".to_owned()));
}

/// The features the apptheus crate is built with, through the given kinds
/// of dependency edges (`cargo tree -e`).
fn features_of_the_daemon(edges: &str) -> Vec<String> {
    let out = std::process::Command::new(env!("CARGO"))
        .current_dir(daemon_src())
        .args([
            "tree",
            "--locked",
            "--offline",
            "-p",
            "apptheus",
            "-e",
            edges,
        ])
        .args(["--depth", "0", "-f", "{p} [{f}]"])
        .output()
        .unwrap();
    let tree = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cargo tree: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let features = tree
        .lines()
        .next()
        .and_then(|l| l.rsplit_once('['))
        .and_then(|(_, f)| f.strip_suffix(']'))
        .unwrap_or_else(|| panic!("cargo tree said: {tree}"));
    features
        .split(',')
        .filter(|f| !f.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Writes a source tree of `(path, text)` files into a temporary folder.
fn fixture(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

const FIXTURE_RULES: Rules = Rules {
    layers: &[
        Layer {
            name: "binary",
            modules: &["main"],
        },
        Layer {
            name: "library",
            modules: &["lib"],
        },
        Layer {
            name: "top",
            modules: &["top"],
        },
        Layer {
            name: "middle",
            modules: &["left", "right", "shared"],
        },
        Layer {
            name: "bottom",
            modules: &["bottom"],
        },
    ],
    sideways: &[Allowed {
        from: Allowed::ANY,
        to: "shared",
        why: "everyone's",
    }],
    exceptions: &[],
};

/// A tree that keeps the rules; `extra` files are added or replace its own.
fn tree(extra: &[(&'static str, &'static str)]) -> imports::Tree {
    let mut files = vec![
        (
            "lib.rs",
            "mod top; mod left; mod right; mod shared; mod bottom;\npub use top::run;\n",
        ),
        ("main.rs", "fn main() { mylib::run() }\n"),
        (
            "top.rs",
            "use crate::{left::{self, inner::Deep}, right};\npub fn run() {}\n",
        ),
        ("left/mod.rs", "pub mod inner;\nuse super::shared::S;\n"),
        (
            "left/inner.rs",
            "pub struct Deep;\nfn f() { super::super::bottom::g(); }\n",
        ),
        (
            "right.rs",
            "use crate::shared::S;\nfn f() { let _ = format!(\"{}\", crate::bottom::N); }\n",
        ),
        ("shared.rs", "pub struct S;\n"),
        ("bottom.rs", "pub const N: u8 = 1;\npub fn g() {}\n"),
    ];
    for (path, text) in extra {
        match files.iter_mut().find(|(p, _)| p == path) {
            Some(f) => f.1 = text,
            None => files.push((path, text)),
        }
    }
    let dir = fixture(&files);
    imports::read(dir.path(), "mylib").unwrap()
}

fn edges(t: &imports::Tree) -> Vec<String> {
    t.imports
        .iter()
        .map(|i| {
            format!(
                "{} -> {} {}{}",
                i.from.join("::"),
                i.to.join("::"),
                i.at,
                if i.test_only { " test" } else { "" }
            )
        })
        .collect()
}

#[test]
fn the_reader_resolves_crate_super_child_and_macro_paths() {
    let t = tree(&[(
        "bottom.rs",
        "pub const N: u8 = 1;\npub fn g() {}\n#[cfg(test)]\nmod tests {\n    use super::*;\n    use self::helpers::H;\n    mod helpers { pub struct H; }\n}\n",
    )]);
    assert_eq!(
        edges(&t),
        [
            " -> top lib.rs:2",
            "bottom::tests -> bottom bottom.rs:5 test",
            "bottom::tests -> bottom::tests::helpers bottom.rs:6 test",
            "left -> shared left/mod.rs:2",
            "left::inner -> bottom left/inner.rs:2",
            "main ->  main.rs:1",
            "right -> bottom right.rs:2",
            "right -> shared right.rs:1",
            "top -> left top.rs:1",
            "top -> left::inner top.rs:1",
            "top -> right top.rs:1",
        ]
    );
    assert!(
        FIXTURE_RULES.check(&t).is_empty(),
        "{:?}",
        FIXTURE_RULES.check(&t)
    );
}

#[test]
fn the_check_finds_upward_and_sideways_imports_and_cycles() {
    const RULES: Rules = Rules {
        layers: &[
            Layer {
                name: "top",
                modules: &["lib", "top"],
            },
            Layer {
                name: "middle",
                modules: &["left", "right", "lone", "gone"],
            },
            Layer {
                name: "bottom",
                modules: &["bottom"],
            },
        ],
        sideways: &[Allowed {
            from: "top",
            to: "left",
            why: "",
        }],
        exceptions: &[],
    };
    let dir = fixture(&[
        (
            "lib.rs",
            "mod top; mod left; mod right; mod lone; mod bottom; mod stray;\n",
        ),
        ("top.rs", "use crate::left::Thing;\n"),
        ("left/mod.rs", "pub mod inner;\npub struct Thing;\n"),
        // Sideways in code, and back in a `use`: a cycle.
        ("left/inner.rs", "fn f() { assert!(crate::right::X); }\n"),
        (
            "right.rs",
            "use crate::left::inner;\npub const X: bool = true;\n",
        ),
        ("lone.rs", "pub struct L;\n"),
        // Upward, in a unit test.
        (
            "bottom.rs",
            "#[cfg(test)]\nmod tests {\n    use crate::lone::L;\n}\n",
        ),
        ("stray.rs", ""),
    ]);
    let t = imports::read(dir.path(), "mylib").unwrap();
    assert_eq!(
        RULES.check(&t),
        [
            "module `stray` is in no layer: add it to LAYERS in xtask/tests/layers/rules.rs \
             (and to the README's architecture)",
            "layer \"middle\" names `gone`, which is no module: remove it",
            "SIDEWAYS: top -> left must name two modules of one layer and say why",
            "bottom.rs:3: `bottom::tests` imports `lone`, a layer above (middle above bottom)",
            "left/inner.rs:1: `left::inner` imports `right` beside it in layer \"middle\", \
             which the architecture does not allow",
            "right.rs:1: `right` imports `left::inner` beside it in layer \"middle\", \
             which the architecture does not allow",
            "import cycle between left, right: left -> right (left/inner.rs:1), \
             right -> left (right.rs:1)",
            "import cycle between left::inner, right: left::inner -> right (left/inner.rs:1), \
             right -> left::inner (right.rs:1)",
        ]
    );
}

#[test]
fn known_exceptions_pass_until_they_are_gone() {
    const RULES: Rules = Rules {
        exceptions: &[
            Exception {
                file: "right.rs",
                to: "left",
            },
            Exception {
                file: "left/mod.rs",
                to: "right",
            },
        ],
        ..FIXTURE_RULES
    };
    let t = tree(&[("right.rs", "use crate::left::inner::Deep;\n")]);
    assert_eq!(
        RULES.check(&t),
        [
            "known exception left/mod.rs -> right breaks no rule any more: remove it from KNOWN_EXCEPTIONS"
        ]
    );
}

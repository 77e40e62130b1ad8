//! Checks a crate's imports (imports.rs) against its layers (rules.rs).
use std::collections::{BTreeMap, BTreeSet};

use crate::imports::{Import, Module, Tree};

/// A layer: the top-level modules in it.
pub struct Layer {
    pub name: &'static str,
    pub modules: &'static [&'static str],
}

/// An import allowed between two modules of one layer.
pub struct Allowed {
    /// The importing module, or [`Allowed::ANY`] of the layer.
    pub from: &'static str,
    pub to: &'static str,
    /// The reason, from the architecture.
    pub why: &'static str,
}

impl Allowed {
    pub const ANY: &'static str = "*";
}

/// An import known to break the rules, to be removed: the importing file
/// (relative to the source tree) and the module it imports, or any module
/// below it.
pub struct Exception {
    pub file: &'static str,
    pub to: &'static str,
}

pub struct Rules {
    /// Top to bottom.
    pub layers: &'static [Layer],
    pub sideways: &'static [Allowed],
    pub exceptions: &'static [Exception],
}

/// The top-level module a module belongs to (`lib` for the crate root).
fn top(m: &Module) -> &str {
    m.first().map_or("lib", String::as_str)
}

fn name(m: &Module) -> String {
    if m.is_empty() {
        "lib".into()
    } else {
        m.join("::")
    }
}

fn file_of(at: &str) -> &str {
    at.rsplit_once(':').map_or(at, |(f, _)| f)
}

impl Rules {
    fn layer(&self, module: &str) -> Option<usize> {
        self.layers.iter().position(|l| l.modules.contains(&module))
    }

    fn sideways_allowed(&self, from: &str, to: &str) -> bool {
        self.sideways
            .iter()
            .any(|a| (a.from == from || a.from == Allowed::ANY) && a.to == to)
    }

    fn exception(&self, i: &Import) -> Option<usize> {
        let to = name(&i.to);
        self.exceptions.iter().position(|e| {
            file_of(&i.at) == e.file && (to == e.to || to.starts_with(&format!("{}::", e.to)))
        })
    }

    /// Every way `tree` breaks the rules, one line each, in a stable order;
    /// empty when it keeps them.
    pub fn check(&self, tree: &Tree) -> Vec<String> {
        let mut problems = Vec::new();
        let tops: BTreeSet<&str> = tree.modules.iter().map(top).collect();
        for t in &tops {
            if self.layer(t).is_none() {
                problems.push(format!(
                    "module `{t}` is in no layer: add it to LAYERS in xtask/tests/layers/rules.rs \
                     (and to the README's architecture)"
                ));
            }
        }
        for l in self.layers {
            for m in l.modules {
                if !tops.contains(m) {
                    problems.push(format!(
                        "layer {:?} names `{m}`, which is no module: remove it",
                        l.name
                    ));
                }
            }
        }
        for a in self.sideways {
            let (from, to) = (self.layer(a.from), self.layer(a.to));
            if to.is_none() || (a.from != Allowed::ANY && from != to) || a.why.is_empty() {
                problems.push(format!(
                    "SIDEWAYS: {} -> {} must name two modules of one layer and say why",
                    a.from, a.to
                ));
            }
        }
        let mut used = vec![false; self.exceptions.len()];
        for i in &tree.imports {
            let (from, to) = (top(&i.from), top(&i.to));
            if from == to {
                continue;
            }
            let (Some(lf), Some(lt)) = (self.layer(from), self.layer(to)) else {
                continue;
            };
            let broken = if lt < lf {
                Some(format!(
                    "imports `{}`, a layer above ({} above {})",
                    name(&i.to),
                    self.layers[lt].name,
                    self.layers[lf].name
                ))
            } else if lt == lf && !self.sideways_allowed(from, to) {
                Some(format!(
                    "imports `{}` beside it in layer {:?}, which the architecture does not allow",
                    name(&i.to),
                    self.layers[lf].name
                ))
            } else {
                None
            };
            let Some(broken) = broken else {
                continue;
            };
            match self.exception(i) {
                Some(e) => used[e] = true,
                None => problems.push(format!("{}: `{}` {broken}", i.at, name(&i.from))),
            }
        }
        for (e, used) in self.exceptions.iter().zip(used) {
            if !used {
                problems.push(format!(
                    "known exception {} -> {} breaks no rule any more: remove it from KNOWN_EXCEPTIONS",
                    e.file, e.to
                ));
            }
        }
        problems.extend(cycles(&tree.imports, |m| vec![top(m).to_owned()]));
        problems.extend(cycles(&tree.imports, |m| m.clone()));
        problems
    }
}

/// Import cycles between modules as `key` groups them. A module's imports
/// of its own parents or children (`super::`, `mod.rs` using its
/// submodules) are how a module and its parts talk, not a cycle.
fn cycles(imports: &[Import], key: impl Fn(&Module) -> Module) -> Vec<String> {
    let mut graph: BTreeMap<Module, BTreeMap<Module, &str>> = BTreeMap::new();
    for i in imports {
        let (a, b) = (key(&i.from), key(&i.to));
        if a.starts_with(&b) || b.starts_with(&a) {
            continue;
        }
        graph.entry(b.clone()).or_default();
        graph.entry(a).or_default().entry(b).or_insert(&i.at);
    }
    strongly_connected(&graph)
        .into_iter()
        .filter(|c| c.len() > 1)
        .map(|c| {
            let path = shortest_cycle(&graph, &c);
            let edges: Vec<String> = path
                .windows(2)
                .map(|w| {
                    format!(
                        "{} -> {} ({})",
                        name(&w[0]),
                        name(&w[1]),
                        graph[&w[0]][&w[1]]
                    )
                })
                .collect();
            format!(
                "import cycle between {}: {}",
                c.iter().map(name).collect::<Vec<_>>().join(", "),
                edges.join(", ")
            )
        })
        .collect()
}

/// The shortest way from the first module of a strongly connected
/// `component` back to itself: the modules, the first one again last.
fn shortest_cycle(
    graph: &BTreeMap<Module, BTreeMap<Module, &str>>,
    component: &BTreeSet<Module>,
) -> Vec<Module> {
    let start = component.first().expect("a component has a module");
    let mut came_from: BTreeMap<&Module, &Module> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start]);
    while let Some(v) = queue.pop_front() {
        for w in graph[v].keys().filter(|w| component.contains(*w)) {
            if w == start {
                let mut path = vec![start.clone(), v.clone()];
                let mut at = v;
                while at != start {
                    at = came_from[at];
                    path.push(at.clone());
                }
                path.reverse();
                return path;
            }
            if !came_from.contains_key(w) {
                came_from.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    unreachable!("a strongly connected component has a cycle")
}

/// Tarjan's strongly connected components.
fn strongly_connected(graph: &BTreeMap<Module, BTreeMap<Module, &str>>) -> Vec<BTreeSet<Module>> {
    struct State<'g> {
        graph: &'g BTreeMap<Module, BTreeMap<Module, &'g str>>,
        index: BTreeMap<&'g Module, usize>,
        low: BTreeMap<&'g Module, usize>,
        stack: Vec<&'g Module>,
        on_stack: BTreeSet<&'g Module>,
        out: Vec<BTreeSet<Module>>,
    }
    fn visit<'g>(s: &mut State<'g>, v: &'g Module) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on_stack.insert(v);
        for w in s.graph[v].keys() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.low[v].min(s.low[w]);
                s.low.insert(v, low);
            } else if s.on_stack.contains(w) {
                let low = s.low[v].min(s.index[w]);
                s.low.insert(v, low);
            }
        }
        if s.low[v] == s.index[v] {
            let mut component = BTreeSet::new();
            while let Some(w) = s.stack.pop() {
                s.on_stack.remove(w);
                component.insert(w.clone());
                if w == v {
                    break;
                }
            }
            s.out.push(component);
        }
    }
    let mut s = State {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

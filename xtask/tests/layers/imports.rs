//! Reads a crate's source tree and lists the imports between its modules:
//! `use crate::…`, `use super::…`, `use self::…`, a path to a child module,
//! and the same paths written in code (types, calls, patterns, and the
//! tokens of macro calls). `main.rs`, a crate of its own, reaches the
//! library through its name (`apptheus::…`).
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
};

use proc_macro2::{TokenStream, TokenTree};
use syn::visit::Visit;

/// A module, as the path from the crate root (`["export", "metrics"]`);
/// the root (`lib.rs`) is empty, `main.rs` is `["main"]`.
pub type Module = Vec<String>;

/// One import of one module by another.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Import {
    /// The importing module.
    pub from: Module,
    /// The imported module: the longest known module the path names.
    pub to: Module,
    /// The file and line, relative to the source tree (`http/mod.rs:20`).
    pub at: String,
    /// Only in code compiled for unit tests (`#[cfg(test)]`).
    pub test_only: bool,
}

/// The crate's modules and the imports between them.
#[derive(Debug, Default)]
pub struct Tree {
    pub modules: BTreeSet<Module>,
    pub imports: Vec<Import>,
}

/// What a file holds: its module, its syntax, its name for messages.
struct Source {
    module: Module,
    file: syn::File,
    name: String,
}

/// Reads every `.rs` file below `src` (lib.rs, main.rs, `a.rs`, `a/mod.rs`,
/// `a/b.rs`, ...). `lib_name` is how main.rs names the library.
pub fn read(src: &Path, lib_name: &str) -> Result<Tree, String> {
    let mut files = Vec::new();
    walk(src, &mut files)?;
    files.sort();
    let mut sources = Vec::new();
    let mut tree = Tree::default();
    for path in files {
        let rel = path
            .strip_prefix(src)
            .map_err(|e| e.to_string())?
            .to_string_lossy()
            .into_owned();
        let text = std::fs::read_to_string(&path).map_err(|e| format!("{rel}: {e}"))?;
        let file = syn::parse_file(&text).map_err(|e| {
            let at = e.span().start();
            format!("{rel}:{}:{}: {e}", at.line, at.column)
        })?;
        let module = module_of(&rel);
        tree.modules.insert(module.clone());
        inline_modules(&file.items, &module, &mut tree.modules);
        sources.push(Source {
            module,
            file,
            name: rel,
        });
    }
    for s in &sources {
        let mut v = Visitor {
            modules: &tree.modules,
            file: &s.name,
            main: s.module == ["main"],
            lib_name,
            stack: vec![s.module.clone()],
            test_depth: 0,
            out: &mut tree.imports,
        };
        v.visit_file(&s.file);
    }
    tree.imports.sort();
    tree.imports.dedup();
    Ok(tree)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), String> {
    let entries = std::fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries {
        let path = entry.map_err(|e| e.to_string())?.path();
        if path.is_dir() {
            walk(&path, out)?;
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    Ok(())
}

/// `lib.rs` → [], `main.rs` → [main], `a/b.rs` and `a/b/mod.rs` → [a, b].
fn module_of(rel: &str) -> Module {
    let rel = rel.strip_suffix(".rs").unwrap_or(rel);
    let mut parts: Vec<String> = rel.split('/').map(str::to_owned).collect();
    match parts.last().map(String::as_str) {
        Some("lib") if parts.len() == 1 => Vec::new(),
        Some("mod") => {
            parts.pop();
            parts
        }
        _ => parts,
    }
}

fn inline_modules(items: &[syn::Item], parent: &Module, out: &mut BTreeSet<Module>) {
    for item in items {
        if let syn::Item::Mod(m) = item
            && let Some((_, items)) = &m.content
        {
            let mut module = parent.clone();
            module.push(m.ident.to_string());
            out.insert(module.clone());
            inline_modules(items, &module, out);
        }
    }
}

struct Visitor<'a> {
    modules: &'a BTreeSet<Module>,
    file: &'a str,
    main: bool,
    lib_name: &'a str,
    /// The module being read, innermost last (inline `mod x { … }`).
    stack: Vec<Module>,
    /// How many `#[cfg(test)]` items enclose the one being read.
    test_depth: usize,
    out: &'a mut Vec<Import>,
}

impl Visitor<'_> {
    fn current(&self) -> &Module {
        self.stack.last().expect("the file's own module")
    }

    /// Where a path leads, from the crate root; `None` for a path outside
    /// the crate (std, another crate, a local name).
    fn resolve(&self, segments: &[String], from_code: bool) -> Option<Module> {
        let (first, rest) = segments.split_first()?;
        let here = self.current();
        let mut base = match first.as_str() {
            "crate" if !self.main => Vec::new(),
            name if self.main && name == self.lib_name => Vec::new(),
            "self" => here.clone(),
            "super" => {
                let mut base = here.clone();
                base.pop()?;
                let mut rest = rest;
                while let Some(("super", r)) = rest.split_first().map(|(s, r)| (s.as_str(), r)) {
                    base.pop()?;
                    rest = r;
                }
                return Some(self.longest_module(base, rest));
            }
            // A child module named without `self::` (in a `use`; in code
            // only when the path goes on beyond it).
            child if !from_code || !rest.is_empty() => {
                let mut module = here.clone();
                module.push(child.to_owned());
                if !self.modules.contains(&module) {
                    return None;
                }
                module
            }
            _ => return None,
        };
        if first != "self" && base.is_empty() && rest.is_empty() {
            return None;
        }
        base = self.longest_module(base, rest);
        Some(base)
    }

    fn longest_module(&self, mut base: Module, rest: &[String]) -> Module {
        for s in rest {
            base.push(s.clone());
            if !self.modules.contains(&base) {
                base.pop();
                break;
            }
        }
        base
    }

    fn record(&mut self, segments: &[String], line: usize, from_code: bool) {
        let Some(to) = self.resolve(segments, from_code) else {
            return;
        };
        let from = self.current().clone();
        if to == from {
            return;
        }
        self.out.push(Import {
            from,
            to,
            at: format!("{}:{line}", self.file),
            test_only: self.test_depth > 0,
        });
    }

    fn use_tree(&mut self, prefix: &mut Vec<String>, tree: &syn::UseTree) {
        match tree {
            syn::UseTree::Path(p) => {
                prefix.push(p.ident.to_string());
                self.use_tree(prefix, &p.tree);
                prefix.pop();
            }
            syn::UseTree::Name(n) => self.use_leaf(prefix, &n.ident),
            syn::UseTree::Rename(r) => self.use_leaf(prefix, &r.ident),
            syn::UseTree::Glob(g) => {
                let line = g.star_token.span.start().line;
                self.record(prefix, line, false);
            }
            syn::UseTree::Group(g) => {
                for t in &g.items {
                    self.use_tree(prefix, t);
                }
            }
        }
    }

    fn use_leaf(&mut self, prefix: &[String], ident: &syn::Ident) {
        let line = ident.span().start().line;
        let mut path = prefix.to_vec();
        if ident != "self" || path.is_empty() {
            path.push(ident.to_string());
        }
        self.record(&path, line, false);
    }

    /// Paths in the tokens of a macro call: `crate::a::b`, `super::x`.
    fn tokens(&mut self, tokens: TokenStream) {
        let tokens: Vec<TokenTree> = tokens.into_iter().collect();
        let mut i = 0;
        while i < tokens.len() {
            match &tokens[i] {
                TokenTree::Group(g) => self.tokens(g.stream()),
                TokenTree::Ident(id) => {
                    let first = id.to_string();
                    let starts = matches!(first.as_str(), "crate" | "super" | "self")
                        || (self.main && first == self.lib_name);
                    let preceded_by_colons = i > 0
                        && matches!(&tokens[i - 1], TokenTree::Punct(p) if p.as_char() == ':');
                    if starts && !preceded_by_colons {
                        let line = id.span().start().line;
                        let mut path = vec![first];
                        let mut j = i + 1;
                        while let (Some(TokenTree::Punct(a)), Some(TokenTree::Punct(b))) =
                            (tokens.get(j), tokens.get(j + 1))
                            && a.as_char() == ':'
                            && b.as_char() == ':'
                            && let Some(TokenTree::Ident(next)) = tokens.get(j + 2)
                        {
                            path.push(next.to_string());
                            j += 3;
                        }
                        if path.len() > 1 {
                            self.record(&path, line, true);
                        }
                        i = j;
                        continue;
                    }
                }
                _ => {}
            }
            i += 1;
        }
    }
}

/// Whether an item is compiled for unit tests only: `#[cfg(test)]`, or
/// `#[cfg(all(test, …))]`.
fn test_only(attrs: &[syn::Attribute]) -> bool {
    let is_test = |t: &TokenTree| matches!(t, TokenTree::Ident(i) if i == "test");
    attrs.iter().any(|a| {
        let Ok(list) = a.meta.require_list() else {
            return false;
        };
        let tokens: Vec<TokenTree> = list.tokens.clone().into_iter().collect();
        a.path().is_ident("cfg")
            && match tokens.as_slice() {
                [t] => is_test(t),
                [TokenTree::Ident(all), TokenTree::Group(g)] if all == "all" => {
                    g.stream().into_iter().any(|t| is_test(&t))
                }
                _ => false,
            }
    })
}

fn attrs_of(item: &syn::Item) -> &[syn::Attribute] {
    use syn::Item as I;
    match item {
        I::Const(i) => &i.attrs,
        I::Enum(i) => &i.attrs,
        I::ExternCrate(i) => &i.attrs,
        I::Fn(i) => &i.attrs,
        I::ForeignMod(i) => &i.attrs,
        I::Impl(i) => &i.attrs,
        I::Macro(i) => &i.attrs,
        I::Mod(i) => &i.attrs,
        I::Static(i) => &i.attrs,
        I::Struct(i) => &i.attrs,
        I::Trait(i) => &i.attrs,
        I::TraitAlias(i) => &i.attrs,
        I::Type(i) => &i.attrs,
        I::Union(i) => &i.attrs,
        I::Use(i) => &i.attrs,
        _ => &[],
    }
}

impl<'ast> Visit<'ast> for Visitor<'_> {
    fn visit_item(&mut self, item: &'ast syn::Item) {
        let test = test_only(attrs_of(item));
        self.test_depth += usize::from(test);
        syn::visit::visit_item(self, item);
        self.test_depth -= usize::from(test);
    }

    fn visit_item_mod(&mut self, m: &'ast syn::ItemMod) {
        if let Some((_, items)) = &m.content {
            let mut module = self.current().clone();
            module.push(m.ident.to_string());
            self.stack.push(module);
            for item in items {
                self.visit_item(item);
            }
            self.stack.pop();
        }
    }

    fn visit_item_use(&mut self, u: &'ast syn::ItemUse) {
        self.use_tree(&mut Vec::new(), &u.tree);
    }

    fn visit_path(&mut self, p: &'ast syn::Path) {
        let segments: Vec<String> = p.segments.iter().map(|s| s.ident.to_string()).collect();
        if p.leading_colon.is_none() && segments.len() > 1 {
            let line = p.segments[0].ident.span().start().line;
            self.record(&segments, line, true);
        }
        syn::visit::visit_path(self, p);
    }

    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.tokens(m.tokens.clone());
        syn::visit::visit_macro(self, m);
    }
}

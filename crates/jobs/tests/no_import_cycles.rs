//! No two modules of this crate import each other, directly or in a loop (issue 24): the runner at the top may
//! import the job kinds, the kinds import the shared layers below them (context, progress, clock, integrity...),
//! never the other way round. This test reads `src/`, collects every `crate::…`, `super::…` and child-module path
//! of each file, resolves the names `lib.rs` re-exports to the module that defines them, and fails on any cycle,
//! so a helper added to the wrong file cannot bring the loops back unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A module path relative to the crate root (`""` is the root, `"backup::plan"`).
type Module = String;

/// The source with comments, string and char literals blanked out (newlines kept), so that paths in docs or
/// messages are not taken for references.
fn code_only(src: &str) -> String {
    let c: Vec<char> = src.chars().collect();
    let mut out = String::with_capacity(src.len());
    let mut i = 0;
    while i < c.len() {
        let next = c.get(i + 1).copied();
        if c[i] == '/' && next == Some('/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if c[i] == '/' && next == Some('*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    if c[i] == '\n' {
                        out.push('\n');
                    }
                    i += 1;
                }
            }
        } else if c[i] == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !(c[i - 1].is_alphanumeric() || c[i - 1] == '_'))
        {
            // Raw string r"…" / r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if c.get(j) != Some(&'"') {
                out.push(c[i]);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (1..=hashes).all(|k| c.get(j + k) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                if c[j] == '\n' {
                    out.push('\n');
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c[i] == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                if c.get(i) == Some(&'\n') {
                    out.push('\n');
                }
                i += 1;
            }
            i += 1;
            out.push_str("\"\"");
        } else if c[i] == '\'' {
            // A char literal ('x', '\n', '\u{..}'); a lifetime ('a) is kept.
            if next == Some('\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
                out.push_str("' '");
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
                out.push_str("' '");
            } else {
                out.push(c[i]);
                i += 1;
            }
        } else {
            out.push(c[i]);
            i += 1;
        }
    }
    out
}

fn is_ident(ch: char) -> bool {
    ch.is_alphanumeric() || ch == '_'
}

/// The full paths of a path or use tree starting at `c[i]` (`a::b::{c, d::e}` gives `a::b::c`, `a::b::d::e`),
/// each as its segments; and where it ends.
fn paths_at(c: &[char], mut i: usize, prefix: &[String]) -> (Vec<Vec<String>>, usize) {
    let skip_ws = |i: &mut usize| {
        while *i < c.len() && c[*i].is_whitespace() {
            *i += 1;
        }
    };
    let mut segs = prefix.to_vec();
    loop {
        skip_ws(&mut i);
        if c.get(i) == Some(&'{') {
            i += 1;
            let mut all = Vec::new();
            loop {
                skip_ws(&mut i);
                match c.get(i) {
                    None => return (all, i),
                    Some('}') => return (all, i + 1),
                    Some(',') => i += 1,
                    _ => {
                        let (mut found, end) = paths_at(c, i, &segs);
                        all.append(&mut found);
                        if end == i {
                            i += 1;
                        } else {
                            i = end;
                        }
                    }
                }
            }
        }
        let start = i;
        while i < c.len() && is_ident(c[i]) {
            i += 1;
        }
        if i == start {
            return (vec![segs], i);
        }
        segs.push(c[start..i].iter().collect());
        let mut j = i;
        skip_ws(&mut j);
        if c.get(j) == Some(&':') && c.get(j + 1) == Some(&':') {
            i = j + 2;
        } else {
            return (vec![segs], i);
        }
    }
}

/// One source file: its module and its code.
struct File {
    module: Module,
    code: String,
    /// Whether the file is `mod.rs`/`lib.rs` (its children are referred to by bare name).
    owns_dir: bool,
}

fn module_of(src: &Path, file: &Path) -> (Module, bool) {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().expect("a file name");
    let owns_dir = last == "mod.rs" || (last == "lib.rs" && parts.is_empty());
    if !owns_dir {
        parts.push(last.trim_end_matches(".rs").to_string());
    }
    (parts.join("::"), owns_dir)
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .expect("readable src")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

fn join(base: &str, seg: &str) -> String {
    if base.is_empty() {
        seg.to_string()
    } else {
        format!("{base}::{seg}")
    }
}

fn parent(m: &str) -> String {
    m.rsplit_once("::")
        .map(|(p, _)| p.to_string())
        .unwrap_or_default()
}

/// The module-to-module references of the crate's files (`lib.rs`, which only declares and re-exports, is the
/// root and no node).
fn graph(files: &[File]) -> BTreeMap<Module, BTreeSet<Module>> {
    let modules: BTreeSet<Module> = files.iter().map(|f| f.module.clone()).collect();
    // Names lib.rs re-exports (`pub use runner::Runner`) → the module they come from.
    let mut reexports: BTreeMap<String, Module> = BTreeMap::new();
    if let Some(lib) = files.iter().find(|f| f.module.is_empty()) {
        let c: Vec<char> = lib.code.chars().collect();
        let mut at = 0;
        while let Some(pos) = lib.code[at..].find("pub use ") {
            let byte = at + pos;
            let i = lib.code[..byte].chars().count() + "pub use ".len();
            let (paths, _) = paths_at(&c, i, &[]);
            for p in paths {
                if let Some(m) = longest_module(&modules, "", &p) {
                    if let Some(name) = p.last() {
                        reexports.insert(name.clone(), m);
                    }
                }
            }
            at = byte + "pub use ".len();
        }
    }
    let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
    for f in files.iter().filter(|f| !f.module.is_empty()) {
        let c: Vec<char> = f.code.chars().collect();
        let own = edges.entry(f.module.clone()).or_default();
        let mut inline_mods: Vec<i64> = Vec::new();
        let mut depth: i64 = 0;
        let mut i = 0;
        while i < c.len() {
            let boundary = i == 0 || !(is_ident(c[i - 1]) || c[i - 1] == ':');
            let rest: String = c[i..c.len().min(i + 8)].iter().collect();
            if c[i] == '{' {
                depth += 1;
            } else if c[i] == '}' {
                depth -= 1;
                if inline_mods.last() == Some(&depth) {
                    inline_mods.pop();
                }
            } else if boundary && rest.starts_with("mod ") {
                // `mod name {`: references to `super` inside it mean this file's module.
                let mut j = i + 4;
                while j < c.len() && (is_ident(c[j]) || c[j].is_whitespace()) {
                    j += 1;
                }
                if c.get(j) == Some(&'{') {
                    inline_mods.push(depth);
                }
            } else if boundary && rest.starts_with("crate::") {
                let (paths, end) = paths_at(&c, i + 7, &[]);
                for p in paths {
                    let target = longest_module(&modules, "", &p)
                        .or_else(|| p.first().and_then(|n| reexports.get(n).cloned()));
                    if let Some(t) = target {
                        own.insert(t);
                    }
                }
                i = end;
                continue;
            } else if boundary && rest.starts_with("super::") {
                let mut ups = 0;
                let mut j = i;
                while c[j..].starts_with(&['s', 'u', 'p', 'e', 'r', ':', ':']) {
                    ups += 1;
                    j += 7;
                }
                let levels = ups - inline_mods.len() as i64;
                let mut base = f.module.clone();
                for _ in 0..levels.max(0) {
                    base = parent(&base);
                }
                let (paths, end) = paths_at(&c, j, &[]);
                if levels > 0 {
                    for p in paths {
                        let target = longest_module(&modules, &base, &p).unwrap_or(base.clone());
                        own.insert(target);
                    }
                }
                i = end;
                continue;
            } else if boundary && f.owns_dir && is_ident(c[i]) {
                // A child module named bare in mod.rs (`files::run`, `use plan::X`).
                let start = i;
                while i < c.len() && is_ident(c[i]) {
                    i += 1;
                }
                let name: String = c[start..i].iter().collect();
                let child = join(&f.module, &name);
                if c[i..].starts_with(&[':', ':']) && modules.contains(&child) {
                    let (paths, end) = paths_at(&c, start, &[]);
                    for p in paths {
                        if let Some(t) = longest_module(&modules, &f.module, &p) {
                            own.insert(t);
                        }
                    }
                    i = end;
                }
                continue;
            }
            i += 1;
        }
        own.remove(&f.module);
    }
    edges
}

/// The deepest module named by a prefix of `path`, taken from `base`.
fn longest_module(modules: &BTreeSet<Module>, base: &str, path: &[String]) -> Option<Module> {
    let mut best = None;
    let mut m = base.to_string();
    for seg in path {
        m = join(&m, seg);
        if modules.contains(&m) {
            best = Some(m.clone());
        } else {
            break;
        }
    }
    best
}

/// A cycle of the graph, if it has one.
fn find_cycle(edges: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Open,
        Done,
    }
    fn visit(
        n: &Module,
        edges: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        marks.insert(n.clone(), Mark::Open);
        stack.push(n.clone());
        for next in edges.get(n).into_iter().flatten() {
            match marks.get(next).copied().unwrap_or(Mark::New) {
                Mark::Open => {
                    let from = stack.iter().position(|m| m == next).unwrap_or(0);
                    let mut cycle = stack[from..].to_vec();
                    cycle.push(next.clone());
                    return Some(cycle);
                }
                Mark::New => {
                    if let Some(c) = visit(next, edges, marks, stack) {
                        return Some(c);
                    }
                }
                Mark::Done => {}
            }
        }
        stack.pop();
        marks.insert(n.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    for n in edges.keys() {
        if marks.get(n).copied().unwrap_or(Mark::New) == Mark::New {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, edges, &mut marks, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn crate_graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let files: Vec<File> = paths
        .iter()
        .map(|p| {
            let (module, owns_dir) = module_of(&src, p);
            let text = std::fs::read_to_string(p).expect("readable source");
            File {
                module,
                code: code_only(&text),
                owns_dir,
            }
        })
        .collect();
    graph(&files)
}

#[test]
fn no_two_modules_import_each_other() {
    let edges = crate_graph();
    // The reader must see the crate as it is: the runner dispatches to the kinds, the kinds take the context.
    let has = |from: &str, to: &str| edges.get(from).is_some_and(|t| t.contains(to));
    assert!(has("runner", "backup"), "{edges:#?}");
    assert!(has("backup::logical", "context"), "{edges:#?}");
    assert!(has("backup", "backup::files"), "{edges:#?}");
    if let Some(cycle) = find_cycle(&edges) {
        panic!(
            "crates/jobs/src modules import each other in a loop: {}\n(move what they share into a module \
             below both)",
            cycle.join(" → ")
        );
    }
}

#[test]
fn the_check_finds_loops() {
    let file = |module: &str, owns_dir: bool, code: &str| File {
        module: module.into(),
        code: code_only(code),
        owns_dir,
    };
    let files = [
        file("", true, "mod a; mod b; pub mod k; pub use b::Thing;"),
        file(
            "a",
            false,
            "// crate::b is only named in a comment\nfn f() { let s = \"crate::b\"; }",
        ),
        file("b", false, "use crate::k::{x, y};"),
        file(
            "k",
            true,
            "mod x;\nfn g() { x::h() }\n#[cfg(test)] mod tests { use super::*; }",
        ),
        file("k::x", false, "fn h() -> crate::Thing { super::y() }"),
    ];
    let edges = graph(&files);
    assert!(edges["a"].is_empty(), "{edges:?}");
    assert_eq!(
        edges["b"],
        BTreeSet::from(["k".to_string(), "k::x".to_string()])
    );
    assert_eq!(edges["k"], BTreeSet::from(["k::x".to_string()]));
    assert_eq!(
        edges["k::x"],
        BTreeSet::from(["b".to_string(), "k".to_string()])
    );
    let cycle = find_cycle(&edges).expect("b → k → k::x → b");
    assert_eq!(cycle.first(), cycle.last());
    assert!(cycle.len() >= 3, "{cycle:?}");
}

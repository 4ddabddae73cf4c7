//! The shape of `node/src` (issue #26): no import circle between its top-level modules, and no
//! file past 600 lines but the ones listed here with the reason. A top-level module is a folder
//! or a file of `node/src` (`lib.rs` and `main.rs`, the composition, are left out); it imports
//! another when its code outside `#[cfg(test)]` names `crate::other` (directly or in a
//! `use crate::{…}` group). Tests may reach anywhere: an item under `#[cfg(test)]` (a `mod tests`
//! block, a test-only `mod` or function) is not read, nor are comments and string literals.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files allowed past [`MAX_LINES`], with why.
const LONG_FILES: &[(&str, &str)] = &[];

const MAX_LINES: usize = 600;

fn node_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../node/src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The code of a file that the check reads: without comments, string contents and the items under
/// `#[cfg(test)]` (the attribute's item: up to its `;`, or its balanced `{ … }`).
fn code(text: &str) -> String {
    let plain = strip_comments_and_strings(text);
    let mut out = String::with_capacity(plain.len());
    let mut rest = plain.as_str();
    while let Some(at) = rest.find("#[cfg(test)]") {
        out.push_str(&rest[..at]);
        rest = &rest[at + "#[cfg(test)]".len()..];
        // Skip the item: to the first `;` before any `{`, else to the matching `}`.
        let mut depth = 0usize;
        let mut end = rest.len();
        for (i, c) in rest.char_indices() {
            match c {
                ';' if depth == 0 => {
                    end = i + 1;
                    break;
                }
                '{' => depth += 1,
                '}' => {
                    depth = depth.saturating_sub(1);
                    if depth == 0 {
                        end = i + 1;
                        break;
                    }
                }
                _ => {}
            }
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// `text` with `//` and `/* */` comments removed and string / char literal contents blanked.
fn strip_comments_and_strings(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                i += 2;
                while i + 1 < b.len() && !(b[i] == b'*' && b[i + 1] == b'/') {
                    i += 1;
                }
                i += 2;
            }
            b'"' => {
                out.push_str("\"\"");
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            // A char literal ('x', '\n', '{'), not a lifetime ('a).
            b'\'' if b.get(i + 2) == Some(&b'\'') || (b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'')) => {
                i += if b.get(i + 1) == Some(&b'\\') { 4 } else { 3 };
            }
            c => {
                out.push(c as char);
                i += 1;
            }
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `code` names: `crate::x…` and the first names of a `use crate::{…}` group.
fn named(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = code;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let mut depth = 1;
            let mut item_start = true;
            for (i, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    ',' if depth == 1 => item_start = true,
                    c if c.is_whitespace() => {}
                    _ if item_start && depth == 1 => {
                        let name = ident(&group[i..]);
                        if !name.is_empty() {
                            out.insert(name.to_string());
                        }
                        item_start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name.to_string());
            }
        }
    }
    out
}

/// Module → the other top-level modules it imports, with one file that does.
fn graph(src: &Path) -> BTreeMap<String, BTreeMap<String, String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut g: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for f in &files {
        let rel = f.strip_prefix(src).unwrap().to_string_lossy().replace('\\', "/");
        if rel == "lib.rs" || rel == "main.rs" {
            continue;
        }
        let top = rel.split('/').next().unwrap().trim_end_matches(".rs").to_string();
        let deps = named(&code(&std::fs::read_to_string(f).unwrap()));
        let entry = g.entry(top.clone()).or_default();
        for d in deps.into_iter().filter(|d| *d != top) {
            entry.entry(d).or_insert_with(|| rel.clone());
        }
    }
    let names: BTreeSet<String> = g.keys().cloned().collect();
    for deps in g.values_mut() {
        deps.retain(|d, _| names.contains(d));
    }
    g
}

/// The strongly connected groups of more than one module (Tarjan).
fn circles(g: &BTreeMap<String, BTreeMap<String, String>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeMap<String, String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let i = t.index.len();
        t.index.insert(v, i);
        t.low.insert(v, i);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g[v].keys() {
            let w = w.as_str();
            if !t.index.contains_key(w) {
                visit(t, w);
                let lw = t.low[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if t.on.contains(w) {
                let iw = t.index[w];
                let lv = t.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut group = Vec::new();
            loop {
                let w = t.stack.pop().unwrap();
                t.on.remove(w);
                group.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if group.len() > 1 {
                group.sort();
                t.out.push(group);
            }
        }
    }
    let mut t = T { g, index: BTreeMap::new(), low: BTreeMap::new(), stack: Vec::new(), on: BTreeSet::new(), out: Vec::new() };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out
}

#[test]
fn no_import_circle_between_top_level_modules() {
    let g = graph(&node_src());
    assert!(g.len() > 10, "node/src was not read: {:?}", g.keys());
    let found = circles(&g);
    let explain: Vec<String> = found
        .iter()
        .map(|group| {
            let edges: Vec<String> = group
                .iter()
                .flat_map(|a| g[a].iter().filter(|(b, _)| group.contains(b)).map(move |(b, file)| format!("{a} -> {b} ({file})")))
                .collect();
            format!("circle {group:?}:\n  {}", edges.join("\n  "))
        })
        .collect();
    assert!(found.is_empty(), "import circles in node/src (arrows must point down):\n{}", explain.join("\n"));
}

#[test]
fn no_long_files_but_the_listed_ones() {
    let mut files = Vec::new();
    rust_files(&node_src(), &mut files);
    let mut long = Vec::new();
    for f in files {
        let rel = f.strip_prefix(node_src()).unwrap().to_string_lossy().replace('\\', "/");
        let lines = std::fs::read_to_string(&f).unwrap().lines().count();
        if lines > MAX_LINES && !LONG_FILES.iter().any(|(name, _)| *name == rel) {
            long.push(format!("{rel}: {lines} lines"));
        }
    }
    assert!(long.is_empty(), "files past {MAX_LINES} lines: split them along their seams (or list them in LONG_FILES with why): {long:?}");
}

#[test]
fn the_checker_finds_a_circle_and_reads_use_groups() {
    let src = "use crate::{alpha::X, beta, gamma::{self, Y}};\nfn f() { crate::delta::g(); let _ = \"crate::eta\"; }\n// crate::epsilon\n/* crate::theta */\n#[cfg(test)]\nuse crate::zeta;\n#[cfg(test)]\nmod tests { use crate::iota; fn t() { if true { crate::kappa::x(); } } }\nfn after() { crate::lambda::y(); }";
    let names = named(&code(src));
    assert_eq!(names.into_iter().collect::<Vec<_>>(), vec!["alpha", "beta", "delta", "gamma", "lambda"]);
    let edge = |a: &str, bs: &[&str]| (a.to_string(), bs.iter().map(|b| (b.to_string(), format!("{a}.rs"))).collect::<BTreeMap<_, _>>());
    let g: BTreeMap<_, _> = [edge("a", &["b"]), edge("b", &["c"]), edge("c", &["a"]), edge("d", &["a"])].into_iter().collect();
    assert_eq!(circles(&g), vec![vec!["a".to_string(), "b".into(), "c".into()]]);
    let g: BTreeMap<_, _> = [edge("a", &["b"]), edge("b", &[]), edge("d", &["a", "b"])].into_iter().collect();
    assert!(circles(&g).is_empty());
}

//! No module cycles in `src/`: the `use crate::…` / `crate::…` paths between top-level modules form a
//! DAG, and so do the `super::…` paths between the files of one module. Comments and unit-test modules
//! are ignored (a doc link is not a dependency).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Module path of a file: `src/pipeline/live/runtime.rs` → `["pipeline", "live", "runtime"]`.
fn module_of(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut m: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
        m.pop();
    }
    m
}

/// The code of a file without comments and without its `#[cfg(test)] mod tests { … }` tail.
fn code_of(text: &str) -> String {
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => text,
    };
    text.lines()
        .map(|l| match l.find("//") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Identifiers following `prefix` (`crate::`, `super::`) in `code`; a use tree's braces are
/// expanded (`crate::a::{b::C, d}` gives `a::b::C` and `a::d`).
fn paths_after<'a>(code: &'a str, prefix: &str) -> Vec<Vec<&'a str>> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = code[at..].find(prefix) {
        let before = code[..at + i].chars().last();
        at += i + prefix.len();
        // `x::super::` and the second `super::` of `super::super::` are not paths of their own.
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == ':') {
            continue;
        }
        use_tree(&code[at..], Vec::new(), &mut out);
    }
    out
}

/// The paths of the use tree at the start of `text`, each after `head`.
fn use_tree<'a>(text: &'a str, head: Vec<&'a str>, out: &mut Vec<Vec<&'a str>>) {
    let end = text
        .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
        .unwrap_or(text.len());
    let mut path = head;
    path.extend(text[..end].split("::").filter(|s| !s.is_empty()));
    let after = &text[end..];
    if !((end == 0 || text[..end].ends_with("::")) && after.starts_with('{')) {
        out.push(path);
        return;
    }
    // Split the braces' contents at their top-level commas.
    let inside = &after[1..];
    let (mut depth, mut from) = (0usize, 0usize);
    for (i, c) in inside.char_indices() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => {
                use_tree(inside[from..i].trim_start(), path.clone(), out);
                return;
            }
            '}' => depth -= 1,
            ',' if depth == 0 => {
                use_tree(inside[from..i].trim_start(), path.clone(), out);
                from = i + 1;
            }
            _ => {}
        }
    }
}

/// A cycle in `edges`, if any, as the list of nodes on it.
fn find_cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in edges.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let i = stack.iter().position(|s| s == m).unwrap_or(0);
                    let mut c = stack[i..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, edges, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in edges.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            if let Some(c) = visit(n, edges, &mut state, &mut Vec::new()) {
                return Some(c);
            }
        }
    }
    None
}

/// The absolute module paths a file at module path `m` names: its `crate::…` paths and its
/// `super::…` paths resolved (`super::super::x` from `a::b::c` is `a::x`).
fn absolute_paths(code: &str, m: &[String]) -> Vec<Vec<String>> {
    let mut out: Vec<Vec<String>> = paths_after(code, "crate::")
        .into_iter()
        .map(|p| p.iter().map(|s| s.to_string()).collect())
        .collect();
    for p in paths_after(code, "super::") {
        let ups = 1 + p.iter().take_while(|s| **s == "super").count();
        if ups > m.len() {
            continue;
        }
        let mut abs: Vec<String> = m[..m.len() - ups].to_vec();
        abs.extend(p.iter().skip(ups - 1).map(|s| s.to_string()));
        out.push(abs);
    }
    out
}

/// The dependency a path `p` named from module `m` adds: at the first level where the two differ,
/// `m`'s module at that level depends on `p`'s sibling of it (`pipeline::multi::step` naming
/// `pipeline::commands::Reply` makes `pipeline::multi` depend on `pipeline::commands`). `None` when
/// `p` is inside `m` or one of its ancestors is `p`.
fn dependency(m: &[String], p: &[String]) -> Option<(usize, String, String)> {
    let k = m.iter().zip(p).take_while(|(a, b)| a == b).count();
    if k >= m.len() || k >= p.len() {
        return None;
    }
    Some((k, m[..=k].join("::"), p[..=k].join("::")))
}

#[test]
fn no_module_cycles_in_src() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut top: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut inner: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    // Every module a file defines, at every level (`pipeline`, `pipeline::multi`, ...).
    let known: BTreeSet<String> = files
        .iter()
        .flat_map(|f| {
            let m = module_of(&src, f);
            (1..=m.len()).map(move |k| m[..k].join("::"))
        })
        .collect();
    for f in &files {
        let m = module_of(&src, f);
        if m.is_empty() {
            continue; // lib.rs / main.rs: the crate root uses everything
        }
        let code = code_of(&std::fs::read_to_string(f).unwrap());
        for p in absolute_paths(&code, &m) {
            let Some((level, from, to)) = dependency(&m, &p) else {
                continue;
            };
            if !known.contains(&to) {
                continue; // an item re-exported by the common parent, not a module
            }
            let edges = if level == 0 { &mut top } else { &mut inner };
            edges.entry(from).or_default().insert(to);
        }
    }
    assert!(top.len() > 5, "the scan found too few modules: {top:?}");
    assert!(
        inner.contains_key("pipeline::multi") && inner.contains_key("pipeline::live::runtime"),
        "the scan missed modules below the top level: {:?}",
        inner.keys().collect::<Vec<_>>()
    );
    if let Some(c) = find_cycle(&top) {
        panic!("cycle between top-level modules: {}", c.join(" -> "));
    }
    if let Some(c) = find_cycle(&inner) {
        panic!(
            "cycle between the modules of one parent: {}",
            c.join(" -> ")
        );
    }
}

#[test]
fn paths_from_nested_files_count_for_their_enclosing_modules() {
    let m: Vec<String> = ["pipeline", "multi", "step"].map(String::from).to_vec();
    let abs = absolute_paths(
        "use super::stream::MultiStream; use super::super::commands::Reply; use crate::ops::x;\n\
         use crate::{camera::{Layout, latest::Take}, output};",
        &m,
    );
    let deps: Vec<_> = abs.iter().filter_map(|p| dependency(&m, p)).collect();
    assert_eq!(
        deps,
        [
            (0, "pipeline".to_string(), "ops".to_string()),
            (0, "pipeline".into(), "camera".into()),
            (0, "pipeline".into(), "camera".into()),
            (0, "pipeline".into(), "output".into()),
            (
                2,
                "pipeline::multi::step".into(),
                "pipeline::multi::stream".into()
            ),
            (1, "pipeline::multi".into(), "pipeline::commands".into()),
        ]
    );
}

#[test]
fn the_cycle_finder_finds_cycles() {
    let mut e: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    e.entry("a".into()).or_default().insert("b".into());
    e.entry("b".into()).or_default().insert("c".into());
    assert!(find_cycle(&e).is_none());
    e.entry("c".into()).or_default().insert("a".into());
    assert_eq!(find_cycle(&e).unwrap(), ["a", "b", "c", "a"]);
}

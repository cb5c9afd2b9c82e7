#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The layering test: the design's dependency rules, executable.
//!
//! It reads every `crate::…` path under `src/` (in `use` lines and inline), maps each file to
//! its top-level module, and fails on any import the table below does not allow, and on any
//! cycle between top-level modules. The table *is* the design (docs/ARCHITECTURE.md explains
//! it): change it deliberately, in the same commit as the design change, never to make a
//! build pass.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every top-level module and the top-level modules it may import. Layers, bottom up:
/// types (`api`) and leaf utilities; the pure cores (`patch`); the stage ports (`ports`) and
/// the cluster helpers the stages share (`cluster`); the services (`mcp`, `intake`); the
/// stage modules (`agent`, `ci`, `gate`, `deploy`, `verify`); the controller, which drives the
/// ports; the composition root (`operator`); the demo on top. The sandbox stands apart: only
/// the demo may use it.
const ALLOWED: &[(&str, &[&str])] = &[
    // Types: no feature module.
    ("api", &[]),
    // Leaf utilities.
    ("web", &[]),
    ("telemetry", &[]),
    ("metrics", &[]),
    ("a2a", &[]),
    // Pure cores.
    ("patch", &["api"]),
    // The stage ports, and the cluster helpers the stages share.
    ("ports", &["api", "patch"]),
    ("cluster", &["api", "patch", "ports"]),
    // Services.
    ("mcp", &["api", "metrics", "web"]),
    ("intake", &["api", "cluster", "web"]),
    // Stage modules: the ports and what is below them; CI sends deploy's request.
    ("agent", &["api", "cluster", "mcp", "metrics", "patch", "ports"]),
    ("ci", &["api", "cluster", "deploy", "patch", "ports"]),
    ("gate", &["api", "cluster", "ports"]),
    ("deploy", &["api", "cluster", "patch", "ports"]),
    ("verify", &["api", "cluster", "metrics", "ports"]),
    // The controller drives the ports; it never knows a stage module.
    ("controller", &["api", "cluster", "patch", "ports"]),
    // The composition root assembles everything the operator runs.
    ("operator", &["agent", "ci", "controller", "deploy", "gate", "intake", "mcp", "metrics", "verify"]),
    // The in-memory API server: types and the merge semantics only.
    ("sandbox", &["api", "patch"]),
    // The demo runs the operator on the sandbox.
    ("demo", &["agent", "api", "cluster", "controller", "intake", "mcp", "metrics", "operator", "patch", "sandbox"]),
];

/// The stage modules: they implement the ports and never import the controller.
const STAGES: &[&str] = &["agent", "ci", "gate", "deploy", "verify"];

/// Names under `crate::` that are items of the crate root, not modules.
const ROOT_ITEMS: &[&str] = &["install_crypto_provider"];

/// One `crate::` reference: the file, its line, the top-level module it names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Import {
    file: String,
    line: usize,
    module: String,
}

/// The top-level module a file under `src/` belongs to (`None` for the crate root files).
fn module_of(relative: &Path) -> Option<String> {
    let mut parts = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned());
    let first = parts.next()?;
    match first.strip_suffix(".rs") {
        Some("lib" | "main") => None,
        Some(name) => Some(name.to_owned()),
        None => Some(first),
    }
}

/// The text with comments removed (line comments, doc comments, block comments), so
/// intra-doc links are not taken for imports. String literals are kept: `crate::` never
/// appears in one here.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    let mut block = 0usize;
    while let Some(c) = chars.next() {
        if block > 0 {
            if c == '*' && chars.peek() == Some(&'/') {
                chars.next();
                block -= 1;
            } else if c == '/' && chars.peek() == Some(&'*') {
                chars.next();
                block += 1;
            } else if c == '\n' {
                out.push('\n');
            }
            continue;
        }
        if c == '/' && chars.peek() == Some(&'/') {
            for rest in chars.by_ref() {
                if rest == '\n' {
                    out.push('\n');
                    break;
                }
            }
            continue;
        }
        if c == '/' && chars.peek() == Some(&'*') {
            chars.next();
            block += 1;
            continue;
        }
        out.push(c);
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Every top-level module a source text names through `crate::` — `crate::x::…`, and each
/// branch of `crate::{x::…, y}` — with its line.
fn imports_in(text: &str) -> Vec<(usize, String)> {
    let text = without_comments(text);
    let mut found = Vec::new();
    let line_of = |at: usize| text[..at].matches('\n').count() + 1;
    let mut from = 0;
    while let Some(at) = text[from..].find("crate::") {
        let start = from + at;
        from = start + "crate::".len();
        // `somecrate::` is another crate's path, not ours.
        if text[..start].chars().next_back().is_some_and(is_ident) {
            continue;
        }
        let rest = &text[from..];
        if let Some(group) = rest.strip_prefix('{') {
            // Top-level branches of the group: split at depth-0 commas.
            let mut depth = 0usize;
            let mut branch = String::new();
            let mut branches = Vec::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        branches.push(std::mem::take(&mut branch));
                        continue;
                    }
                    _ => {}
                }
                branch.push(c);
            }
            branches.push(branch);
            for b in branches {
                let name: String = b.trim().chars().take_while(|c| is_ident(*c)).collect();
                if !name.is_empty() {
                    found.push((line_of(start), name));
                }
            }
        } else {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if !name.is_empty() {
                found.push((line_of(start), name));
            }
        }
    }
    found
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Every cross-module import under `src/`, by importing module.
fn graph(src: &Path) -> BTreeMap<String, Vec<Import>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    let mut graph: BTreeMap<String, Vec<Import>> = BTreeMap::new();
    for path in files {
        let relative = path.strip_prefix(src).unwrap().to_path_buf();
        let Some(module) = module_of(&relative) else { continue };
        let text = std::fs::read_to_string(&path).unwrap();
        let entry = graph.entry(module.clone()).or_default();
        for (line, name) in imports_in(&text) {
            if name != module && !ROOT_ITEMS.contains(&name.as_str()) {
                entry.push(Import { file: format!("src/{}", relative.display()), line, module: name });
            }
        }
    }
    graph
}

/// Every import the design forbids, each with the rule it breaks.
fn violations(graph: &BTreeMap<String, Vec<Import>>) -> Vec<String> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut out = Vec::new();
    for (module, imports) in graph {
        let Some(may) = allowed.get(module.as_str()) else {
            out.push(format!(
                "src/{module} is a top-level module the layering table does not know: add it to ALLOWED in tests/architecture.rs, with the modules it may import, and to docs/ARCHITECTURE.md"
            ));
            continue;
        };
        for import in imports {
            let to = import.module.as_str();
            if may.contains(&to) {
                continue;
            }
            let rule = if module == "api" {
                "the types layer imports no feature module".to_owned()
            } else if matches!(to, "sandbox" | "demo") {
                format!("nothing in the operator imports {to}")
            } else if module == "patch" && to == "agent" {
                "patch never imports agent".to_owned()
            } else if STAGES.contains(&module.as_str()) && to == "controller" {
                "stage modules import the ports, never the controller".to_owned()
            } else if !allowed.contains_key(to) {
                format!("{to} is not a module the layering table knows")
            } else {
                format!("{module} may import only {}", may.join(", "))
            };
            out.push(format!("{}:{}: {module} imports crate::{to} — {rule}", import.file, import.line));
        }
    }
    out
}

/// A cycle between top-level modules, if there is one (as `a → b → … → a`).
fn cycle(graph: &BTreeMap<String, Vec<Import>>) -> Option<String> {
    let edges: BTreeMap<&str, BTreeSet<&str>> =
        graph.iter().map(|(m, imports)| (m.as_str(), imports.iter().map(|i| i.module.as_str()).collect())).collect();
    fn visit<'a>(
        node: &'a str,
        edges: &BTreeMap<&'a str, BTreeSet<&'a str>>,
        path: &mut Vec<&'a str>,
        done: &mut BTreeSet<&'a str>,
    ) -> Option<String> {
        if let Some(at) = path.iter().position(|n| *n == node) {
            let mut shown: Vec<&str> = path[at..].to_vec();
            shown.push(node);
            return Some(shown.join(" → "));
        }
        if done.contains(node) {
            return None;
        }
        path.push(node);
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node);
        None
    }
    let mut done = BTreeSet::new();
    edges.keys().find_map(|node| visit(node, &edges, &mut Vec::new(), &mut done))
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

#[test]
fn every_import_under_src_is_one_the_design_allows() {
    let graph = graph(&src());
    assert!(graph.contains_key("controller") && graph.contains_key("ports"), "the walk found no modules");
    let found = violations(&graph);
    assert!(found.is_empty(), "imports the design forbids:\n{}", found.join("\n"));
}

#[test]
fn no_cycle_between_top_level_modules() {
    let graph = graph(&src());
    assert_eq!(cycle(&graph), None, "top-level modules import each other in a cycle");
}

#[test]
fn the_table_names_every_top_level_module_and_only_known_ones() {
    let modules: BTreeSet<String> = graph(&src()).into_keys().collect();
    let table: BTreeSet<String> = ALLOWED.iter().map(|(m, _)| (*m).to_owned()).collect();
    assert_eq!(modules, table, "ALLOWED must list exactly the top-level modules under src/");
    for (module, may) in ALLOWED {
        for to in *may {
            assert!(table.contains(*to), "{module} is allowed {to}, which is not a module");
        }
    }
}

/// The checker itself: a stage importing the controller, the types layer importing intake,
/// an operator module importing the sandbox, and a cycle are all caught — in grouped and
/// inline paths, and not in comments.
#[test]
fn forbidden_imports_and_cycles_are_reported() {
    let text = "use crate::{api::Remediation, controller::stages::Stages};\n// crate::sandbox in a comment\nfn f() { crate::demo::run(); }\n";
    let names: Vec<String> = imports_in(text).into_iter().map(|(_, n)| n).collect();
    assert_eq!(names, ["api", "controller", "demo"]);

    let import = |file: &str, module: &str| Import { file: file.into(), line: 1, module: module.into() };
    let mut graph = BTreeMap::new();
    graph.insert("ci".to_owned(), vec![import("src/ci/dryrun.rs", "controller")]);
    graph.insert("api".to_owned(), vec![import("src/api/validate.rs", "intake")]);
    graph.insert("mcp".to_owned(), vec![import("src/mcp/server.rs", "sandbox")]);
    let found = violations(&graph);
    assert_eq!(found.len(), 3, "{found:?}");
    assert!(found.iter().any(|v| v.contains("never the controller")), "{found:?}");
    assert!(found.iter().any(|v| v.contains("types layer")), "{found:?}");
    assert!(found.iter().any(|v| v.contains("nothing in the operator imports sandbox")), "{found:?}");

    let mut looped = BTreeMap::new();
    looped.insert("deploy".to_owned(), vec![import("src/deploy/apply.rs", "ci")]);
    looped.insert("ci".to_owned(), vec![import("src/ci/dryrun.rs", "deploy")]);
    assert_eq!(cycle(&looped).as_deref(), Some("ci → deploy → ci"));
}

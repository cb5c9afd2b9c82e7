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
    // The metrics source; Reflex's own PromQL fragments are built only from valid object names.
    ("metrics", &["api"]),
    ("egress", &[]),
    // The hash-chained audit log.
    ("audit", &[]),
    // A2A: the server acts as its callers (the MCP server's identities) over Remediations;
    // discovery and delegation call agents as any outbound call (egress), audited like MCP calls.
    ("a2a", &["api", "cluster", "egress", "mcp", "oncall", "patch", "web"]),
    // Pure cores.
    ("patch", &["api"]),
    // The stage ports, and the cluster helpers the stages share.
    ("ports", &["api", "patch"]),
    ("cluster", &["api", "patch", "ports"]),
    // Services.
    ("mcp", &["api", "egress", "metrics", "oncall", "telemetry", "web"]),
    ("intake", &["api", "cluster", "web"]),
    // The repository and forge a GitOps change goes through (CI opens, deploy merges).
    ("gitops", &["api", "cluster", "egress", "patch", "ports"]),
    // Stage modules: the ports and what is below them; CI sends deploy's request.
    ("agent", &["a2a", "api", "audit", "cluster", "egress", "mcp", "metrics", "patch", "ports", "telemetry"]),
    ("ci", &["api", "cluster", "deploy", "gitops", "patch", "ports"]),
    ("gate", &["api", "cluster", "ports"]),
    ("deploy", &["api", "cluster", "gitops", "patch", "ports"]),
    ("verify", &["api", "cluster", "metrics", "ports"]),
    // The controller drives the ports; it never knows a stage module.
    ("controller", &["api", "audit", "cluster", "notify", "patch", "ports", "silence", "telemetry"]),
    ("notify", &["api", "egress"]),
    ("silence", &[]),
    // The composition root assembles everything the operator runs.
    (
        "operator",
        &[
            "a2a",
            "agent",
            "audit",
            "ci",
            "cluster",
            "controller",
            "deploy",
            "gate",
            "gitops",
            "intake",
            "mcp",
            "metrics",
            "notify",
            "silence",
            "verify",
            "web",
        ],
    ),
    // What a person does, as themselves (the CLI and the MCP action tools).
    ("oncall", &["api"]),
    // The in-memory API server: types, the merge semantics and the listener bounds only.
    ("sandbox", &["api", "patch", "web"]),
    // The demo runs the operator on the sandbox.
    (
        "demo",
        &[
            "a2a", "agent", "api", "cluster", "deploy", "gitops", "intake", "mcp", "metrics", "oncall", "operator",
            "patch", "sandbox",
        ],
    ),
    // `reflex simulate` / `reflex test`: the stages' pure parts and the playbook executor on an
    // in-memory sandbox, written nowhere.
    ("simulate", &["agent", "api", "ci", "cluster", "demo", "gate", "intake", "metrics", "patch", "ports", "sandbox"]),
    // The command line, on top: it parses flags and calls the library (`reflex sandbox` and
    // `reflex demo` included).
    (
        CLI,
        &[
            "a2a",
            "agent",
            "audit",
            "api",
            "controller",
            "demo",
            "deploy",
            "egress",
            "gitops",
            "intake",
            "mcp",
            "metrics",
            "oncall",
            "operator",
            "sandbox",
            "silence",
            "simulate",
            "telemetry",
        ],
    ),
];

/// The stage modules: they implement the ports and never import the controller.
const STAGES: &[&str] = &["agent", "ci", "gate", "deploy", "verify"];

/// The command line's module name in the table.
const CLI: &str = "main";

/// Names under `crate::` that are items of the crate root, not modules.
const ROOT_ITEMS: &[&str] = &["install_crypto_provider"];

/// One `crate::` reference: the file, its line, the top-level module it names.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Import {
    file: String,
    line: usize,
    module: String,
}

/// The module path of a file under `src/` (`controller/plan.rs` → `["controller", "plan"]`,
/// `mcp/mod.rs` → `["mcp"]`); the command line (`main.rs`, `bin/`) is the module `main`;
/// `None` for the crate root, `lib.rs`, which only declares modules (tested on its own).
fn module_path(relative: &Path) -> Option<Vec<String>> {
    let parts: Vec<String> = relative.components().map(|c| c.as_os_str().to_string_lossy().into_owned()).collect();
    match parts.as_slice() {
        [lib] if lib == "lib.rs" => None,
        [main] if main == "main.rs" => Some(vec![CLI.to_owned()]),
        [bin, ..] if bin == "bin" => Some(vec![CLI.to_owned()]),
        _ => {
            let mut path: Vec<String> = parts.iter().map(|p| p.trim_end_matches(".rs").to_owned()).collect();
            if path.last().is_some_and(|l| l == "mod") {
                path.pop();
            }
            Some(path)
        }
    }
}

/// The code of a source text: comments, and the contents of string and character literals,
/// blanked out (newlines kept, so line numbers hold), so that neither an intra-doc link nor
/// a `"*/*"` or `"http://…"` in a string is taken for code or hides code that follows.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char, out: &mut String| out.push(if c == '\n' { '\n' } else { ' ' });
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        let after_ident = i > 0 && is_ident(chars[i - 1]);
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '/' && next == Some('*') {
            let mut depth = 0usize;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    blank(chars[i], &mut out);
                    i += 1;
                }
            }
            continue;
        }
        // Raw strings: r"…", r#"…"#, br#"…"# (the `b` was already copied).
        if c == 'r' && !after_ident || c == 'r' && i > 0 && chars[i - 1] == 'b' && !(i > 1 && is_ident(chars[i - 2])) {
            let hashes = chars[i + 1..].iter().take_while(|h| **h == '#').count();
            if chars.get(i + 1 + hashes) == Some(&'"') {
                out.push('"');
                i += hashes + 2;
                while i < chars.len() {
                    if chars[i] == '"' && chars[i + 1..].iter().take(hashes).filter(|h| **h == '#').count() == hashes {
                        i += 1 + hashes;
                        break;
                    }
                    blank(chars[i], &mut out);
                    i += 1;
                }
                out.push('"');
                continue;
            }
        }
        if c == '"' {
            out.push('"');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    blank(chars[i], &mut out);
                    i += 1;
                }
                if i < chars.len() {
                    blank(chars[i], &mut out);
                    i += 1;
                }
            }
            out.push('"');
            i += 1;
            continue;
        }
        // A character literal ('x', '\n', '\u{1f}'), not a lifetime ('a).
        if c == '\'' {
            let end = if next == Some('\\') {
                chars.get(i + 3..).and_then(|rest| rest.iter().position(|x| *x == '\'')).map(|p| i + 3 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            if let Some(end) = end {
                out.push_str("' '");
                i = end + 1;
                continue;
            }
        }
        out.push(c);
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The first segment of each branch of a path group `{a::b, c, d::{e}}` (the text after `{`).
fn branches(group: &str) -> Vec<String> {
    let mut depth = 0usize;
    let mut branch = String::new();
    let mut out = Vec::new();
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' if depth == 0 => break,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                out.push(std::mem::take(&mut branch));
                continue;
            }
            _ => {}
        }
        branch.push(c);
    }
    out.push(branch);
    out.into_iter()
        .map(|b| b.trim().chars().take_while(|c| is_ident(*c)).collect())
        .filter(|b: &String| !b.is_empty())
        .collect()
}

/// The names a path names right after `at` (where `…::` ended): one ident, or each branch
/// of a `{…}` group.
fn names_after(code: &str, at: usize) -> Vec<String> {
    let rest = &code[at..];
    match rest.strip_prefix('{') {
        Some(group) => branches(group),
        None => {
            let name: String = rest.chars().take_while(|c| is_ident(*c)).collect();
            if name.is_empty() { Vec::new() } else { vec![name] }
        }
    }
}

/// The inline modules (`mod name { … }`) of a code text, as (name, start, end) byte ranges.
fn inline_modules(code: &str) -> Vec<(String, usize, usize)> {
    let bytes = code.as_bytes();
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("mod ") {
        let start = from + at;
        from = start + 4;
        if start > 0 && is_ident(bytes[start - 1] as char) {
            continue;
        }
        let rest = &code[from..];
        let name: String = rest.trim_start().chars().take_while(|c| is_ident(*c)).collect();
        let after = rest.trim_start()[name.len()..].trim_start();
        if name.is_empty() || !after.starts_with('{') {
            continue;
        }
        let open = code.len() - after.len();
        let mut depth = 0usize;
        let mut end = code.len();
        for (i, b) in bytes.iter().enumerate().skip(open) {
            match b {
                b'{' => depth += 1,
                b'}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = i;
                        break;
                    }
                }
                _ => {}
            }
        }
        out.push((name, open, end));
    }
    out
}

/// Every top-level module a source text names, with its line: through `crate::x` (and each
/// branch of `crate::{x, y}`), and through `super::` chains resolved from `module` (the
/// file's module path, e.g. `["controller", "plan"]`) and the inline modules around them.
/// `Err` when the text aliases the crate root (`crate as r`, `crate::{self as r}`), which
/// would hide imports from this test.
fn imports_in(text: &str, module: &[String]) -> Result<Vec<(usize, String)>, String> {
    let code = code_only(text);
    let line_of = |at: usize| code[..at].matches('\n').count() + 1;
    let preceded_by_ident = |at: usize| code[..at].chars().next_back().is_some_and(is_ident);
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = code[from..].find("crate") {
        let start = from + at;
        from = start + "crate".len();
        if preceded_by_ident(start) || code[from..].chars().next().is_some_and(is_ident) {
            continue;
        }
        let rest = code[from..].trim_start();
        if rest.starts_with("as ") || rest.starts_with("::{self") || rest.starts_with(":: {self") {
            return Err(format!("line {}: the crate root is aliased; import modules by path", line_of(start)));
        }
        if let Some(path) = code[from..].strip_prefix("::") {
            let at = code.len() - path.len();
            found.extend(names_after(&code, at).into_iter().map(|n| (line_of(start), n)));
        }
    }
    let inline = inline_modules(&code);
    let mut from = 0;
    while let Some(at) = code[from..].find("super::") {
        let start = from + at;
        from = start + "super::".len();
        if preceded_by_ident(start) || code[..start].ends_with("::") {
            continue;
        }
        let mut path: Vec<String> = module.to_vec();
        path.extend(inline.iter().filter(|(_, a, b)| *a < start && start < *b).map(|(n, ..)| n.clone()));
        let mut end = start;
        while code[end..].starts_with("super::") {
            path.pop();
            end += "super::".len();
        }
        match path.first() {
            Some(top) => found.push((line_of(start), top.clone())),
            None => found.extend(names_after(&code, end).into_iter().map(|n| (line_of(start), n))),
        }
    }
    found.sort();
    Ok(found)
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
        let Some(module) = module_path(&relative) else { continue };
        let top = module[0].clone();
        let mut text = std::fs::read_to_string(&path).unwrap();
        if top == CLI {
            // The command line is a separate crate: it names the library's modules `reflex::`.
            text = text.replace("reflex::", "crate::");
        }
        let imports = imports_in(&text, &module).unwrap_or_else(|e| panic!("src/{}: {e}", relative.display()));
        let entry = graph.entry(top.clone()).or_default();
        for (line, name) in imports {
            if name != top && !ROOT_ITEMS.contains(&name.as_str()) {
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
                format!("nothing in the operator imports {to} (only the demo and the command line may)")
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
/// an operator module importing the sandbox, and a cycle are all caught — in grouped, inline
/// and `super::` paths, after strings that look like comments, and not in comments.
#[test]
fn forbidden_imports_and_cycles_are_reported() {
    let module = |path: &[&str]| path.iter().map(|p| (*p).to_owned()).collect::<Vec<_>>();
    let names = |text: &str, path: &[&str]| -> Vec<String> {
        imports_in(text, &module(path)).unwrap().into_iter().map(|(_, n)| n).collect()
    };
    let text = "use crate::{api::Remediation, controller::stages::Stages};\n// crate::sandbox in a comment\nfn f() { crate::demo::run(); }\n";
    assert_eq!(names(text, &["ci", "dryrun"]), ["api", "controller", "demo"]);
    // A string holding `/*` or `//` hides nothing after it; a char literal is not a lifetime.
    let text =
        "const A: &str = \"*/*\"; const B: &str = \"http://x\"; const C: char = '\\''; use crate::sandbox::Sandbox;\n";
    assert_eq!(names(text, &["mcp", "server"]), ["sandbox"]);
    let text = "const R: &str = r#\"crate::demo \" /*\"#; use crate::demo::run;\n";
    assert_eq!(names(text, &["mcp", "server"]), ["demo"]);
    // `super::` from a top-level file names the crate root's modules; from a nested file, its own.
    assert_eq!(names("use super::controller::stages::Stages;\n", &["ports"]), ["controller"]);
    assert_eq!(names("use super::super::controller::x;\n", &["ci", "dryrun"]), ["controller"]);
    assert_eq!(names("use super::request::request;\n", &["deploy", "apply"]), ["deploy"]);
    assert_eq!(names("mod tests { use super::*; }\n", &["ports"]), ["ports"]);
    assert!(imports_in("use crate as root;\n", &module(&["ci"])).is_err(), "an alias of the crate root hides imports");

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

/// The crate root only declares modules: an inline module there would escape the table.
#[test]
fn the_crate_root_only_declares_modules() {
    let code = code_only(&std::fs::read_to_string(src().join("lib.rs")).unwrap());
    assert!(inline_modules(&code).is_empty(), "lib.rs defines a module inline; give it a file");
    for line in code.lines().map(str::trim).filter(|l| l.contains("mod ")) {
        assert!(line.starts_with("pub mod ") && line.ends_with(';'), "lib.rs: {line:?} is not a module declaration");
    }
}

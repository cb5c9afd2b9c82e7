//! Finding the manifest that defines a target in a GitOps repository, and changing it the way
//! a person would: only the fields the change sets, with every comment, key order, quoting
//! style and unrelated document left as it was.
//!
//! Contract: pure (files in, files out). [`changes`] turns the live object and what the API
//! server would store into the leaf values to set (list items keyed by `name`, as the
//! strategic merge does); [`locate`] finds the documents that define the target by kind, name
//! and namespace across every YAML file (multi-document files included) and, for each change,
//! picks the document that decides it — a Kustomize patch file that sets the field wins over
//! the base it patches; [`edit`] splices the new values into the text, located by yamlpath
//! (tree-sitter), and then checks its own work: the edited document must parse to exactly the
//! old one with the changes applied, or the edit is refused. Removing a field is refused (the
//! edit would have to delete lines a person wrote). A file that does not parse as YAML (a Helm
//! template, say) is skipped by the search.

use std::collections::BTreeMap;
use std::path::Path;

use serde_json::{Map, Value, json};
use yamlpath::{Component, Document, FeatureKind, Route};

/// Largest file the search reads.
pub const MAX_FILE: usize = 1024 * 1024;

/// One step of a path into a manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seg {
    /// A mapping key.
    Key(String),
    /// The item of a list whose `name` is this.
    Named(String),
}

/// One value to set.
#[derive(Clone, Debug, PartialEq)]
pub struct Change {
    /// Where.
    pub path: Vec<Seg>,
    /// The new value.
    pub value: Value,
}

/// A path as a person reads it: `spec.template.spec.containers[name=app].resources`.
pub fn describe(path: &[Seg]) -> String {
    let mut out = String::new();
    for seg in path {
        match seg {
            Seg::Key(k) if out.is_empty() => out.push_str(k),
            Seg::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Seg::Named(n) => out.push_str(&format!("[name={n}]")),
        }
    }
    out
}

fn keyed(list: &[Value]) -> bool {
    !list.is_empty() && list.iter().all(|i| i.get("name").and_then(Value::as_str).is_some_and(|n| !n.is_empty()))
}

fn named<'a>(list: &'a [Value], name: &str) -> Option<(usize, &'a Value)> {
    list.iter().enumerate().find(|(_, i)| i.get("name").and_then(Value::as_str) == Some(name))
}

/// The values `after` sets that `before` does not have, leaf by leaf. Only `spec` and `data`
/// (and `metadata.labels`/`annotations`) are compared; anything `after` lacks is a removal and
/// refused.
pub fn changes(before: &Value, after: &Value) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    let mut removed = Vec::new();
    for top in ["spec", "data", "binaryData"] {
        let (a, b) = (before.get(top).unwrap_or(&Value::Null), after.get(top).unwrap_or(&Value::Null));
        walk(vec![Seg::Key(top.into())], a, b, &mut out, &mut removed);
    }
    for meta in ["labels", "annotations"] {
        let (a, b) = (
            before.pointer(&format!("/metadata/{meta}")).unwrap_or(&Value::Null),
            after.pointer(&format!("/metadata/{meta}")).unwrap_or(&Value::Null),
        );
        walk(vec![Seg::Key("metadata".into()), Seg::Key(meta.into())], a, b, &mut out, &mut removed);
    }
    if let Some(first) = removed.first() {
        return Err(format!(
            "the change removes {} (and {} more); Reflex does not delete lines from the repository — make this change by hand",
            describe(first),
            removed.len() - 1
        ));
    }
    Ok(out)
}

fn walk(path: Vec<Seg>, a: &Value, b: &Value, out: &mut Vec<Change>, removed: &mut Vec<Vec<Seg>>) {
    if a == b {
        return;
    }
    let at = |seg: Seg| {
        let mut p = path.clone();
        p.push(seg);
        p
    };
    match (a, b) {
        (_, Value::Null) => removed.push(path),
        (Value::Object(a), Value::Object(b)) => {
            for (k, bv) in b {
                match a.get(k) {
                    Some(av) => walk(at(Seg::Key(k.clone())), av, bv, out, removed),
                    None => out.push(Change { path: at(Seg::Key(k.clone())), value: bv.clone() }),
                }
            }
            removed.extend(a.keys().filter(|k| !b.contains_key(*k)).map(|k| at(Seg::Key(k.clone()))));
        }
        (Value::Array(a), Value::Array(b)) if keyed(a) && keyed(b) => {
            for item in b {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                match named(a, name) {
                    Some((_, old)) => walk(at(Seg::Named(name.into())), old, item, out, removed),
                    None => out.push(Change { path: at(Seg::Named(name.into())), value: item.clone() }),
                }
            }
            for item in a {
                let name = item.get("name").and_then(Value::as_str).unwrap_or_default();
                if named(b, name).is_none() {
                    removed.push(at(Seg::Named(name.into())));
                }
            }
        }
        _ => out.push(Change { path, value: b.clone() }),
    }
}

/// The value at `path` in `doc`, if present.
pub fn resolve<'a>(doc: &'a Value, path: &[Seg]) -> Option<&'a Value> {
    path.iter().try_fold(doc, |v, seg| match seg {
        Seg::Key(k) => v.get(k),
        Seg::Named(n) => named(v.as_array()?, n).map(|(_, i)| i),
    })
}

/// The yamlpath route of `path` in `doc` (list items by their index there).
fn route_of(doc: &Value, path: &[Seg]) -> Option<Vec<Component<'static>>> {
    let mut v = doc;
    let mut route = Vec::new();
    for seg in path {
        match seg {
            Seg::Key(k) => {
                v = v.get(k)?;
                route.push(Component::Key(k.clone().into()));
            }
            Seg::Named(n) => {
                let (i, item) = named(v.as_array()?, n)?;
                v = item;
                route.push(Component::Index(i));
            }
        }
    }
    Some(route)
}

/// `doc` with `change` applied, as JSON (what the edited text must parse to).
fn apply(doc: &mut Value, path: &[Seg], value: &Value) {
    let Some((first, rest)) = path.split_first() else {
        *doc = value.clone();
        return;
    };
    match first {
        Seg::Key(k) => {
            if !doc.is_object() {
                *doc = Value::Object(Map::new());
            }
            if let Some(map) = doc.as_object_mut() {
                apply(map.entry(k.clone()).or_insert(Value::Null), rest, value);
            }
        }
        Seg::Named(n) => {
            if !doc.is_array() {
                *doc = Value::Array(Vec::new());
            }
            if let Some(list) = doc.as_array_mut() {
                let i = match list.iter().position(|i| i.get("name").and_then(Value::as_str) == Some(n)) {
                    Some(i) => i,
                    None => {
                        list.push(json!({"name": n}));
                        list.len() - 1
                    }
                };
                apply(&mut list[i], rest, value);
            }
        }
    }
}

/// What must be written where a path's missing part begins: the rest of the path as nested
/// mappings (and a named list item) around the value.
fn nested(rest: &[Seg], value: &Value) -> Value {
    rest.iter().rev().fold(value.clone(), |inner, seg| match seg {
        Seg::Key(k) => json!({ k: inner }),
        Seg::Named(n) => {
            let mut item = match inner {
                Value::Object(m) => m,
                _ => Map::new(),
            };
            item.insert("name".into(), json!(n));
            json!([item])
        }
    })
}

/// The byte spans of the documents in a multi-document YAML file (between `---` / `...` marker
/// lines, which end a document wherever they appear).
pub fn documents(text: &str) -> Vec<(usize, usize)> {
    let mut spans = Vec::new();
    let mut start = 0;
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        let bare = line.trim_end_matches(['\n', '\r']);
        let marker = |m: &str| bare == m || bare.strip_prefix(m).is_some_and(|r| r.starts_with([' ', '\t']));
        if marker("---") || marker("...") {
            spans.push((start, offset));
            start = offset + line.len();
        }
        offset += line.len();
    }
    spans.push((start, text.len()));
    spans.retain(|(s, e)| !text[*s..*e].trim().is_empty());
    spans
}

fn parse(text: &str) -> Option<Value> {
    serde_saphyr::from_str::<Value>(text).ok().filter(|v| !v.is_null())
}

/// The object a change is for.
#[derive(Clone, Debug)]
pub struct Wanted<'a> {
    /// `apps/v1`, `v1`, …
    pub api_version: &'a str,
    /// `Deployment`, …
    pub kind: &'a str,
    /// Its name.
    pub name: &'a str,
    /// Its namespace (a manifest without one matches: the namespace comes from Kustomize or
    /// the GitOps controller).
    pub namespace: &'a str,
}

fn group(api_version: &str) -> &str {
    api_version.rsplit_once('/').map_or("", |(g, _)| g)
}

/// A document that defines the target (or patches it).
#[derive(Clone, Debug)]
pub struct Found {
    /// File, relative to the repository root.
    pub file: String,
    /// Its span in the file.
    pub span: (usize, usize),
    /// Its content.
    pub json: Value,
    /// Whether the file is a Kustomize patch (listed under `patches`/`patchesStrategicMerge`).
    pub patch: bool,
}

/// Files listed as patches by the `kustomization.yaml` files among `files`.
/// Kustomize patch files, each with the namespace its kustomization sets (`namespace:`), if any.
fn kustomize_patches(files: &[(String, String)]) -> BTreeMap<String, Option<String>> {
    let mut out = BTreeMap::new();
    for (path, text) in files {
        let base = Path::new(path);
        let name = base.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        if !matches!(name, "kustomization.yaml" | "kustomization.yml" | "Kustomization") {
            continue;
        }
        let Some(k) = parse(text) else { continue };
        let dir = base.parent().unwrap_or(Path::new(""));
        let mut listed: Vec<&str> = Vec::new();
        if let Some(p) = k.get("patches").and_then(Value::as_array) {
            listed.extend(p.iter().filter_map(|p| p.get("path").and_then(Value::as_str)));
        }
        if let Some(p) = k.get("patchesStrategicMerge").and_then(Value::as_array) {
            listed.extend(p.iter().filter_map(Value::as_str));
        }
        let namespace = k.get("namespace").and_then(Value::as_str).map(str::to_owned);
        for rel in listed {
            out.insert(normalize(&dir.join(rel)), namespace.clone());
        }
    }
    out
}

/// `a/b/../c` → `a/c` (Kustomize paths are relative to their kustomization).
fn normalize(p: &Path) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.to_str().unwrap_or_default().split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// Every document among `files` (path, text) that defines or patches `wanted`.
pub fn locate(files: &[(String, String)], wanted: &Wanted) -> Vec<Found> {
    let patches = kustomize_patches(files);
    let mut found = Vec::new();
    for (path, text) in files {
        for span in documents(text) {
            let Some(doc) = parse(&text[span.0..span.1]) else { continue };
            let is = |p: &str, v: &str| doc.pointer(p).and_then(Value::as_str) == Some(v);
            // A patch for an overlay that puts the object in another namespace is another
            // environment's, even when the document itself names none.
            let overlay_namespace = patches.get(path).cloned().flatten();
            let namespace_ok = doc
                .pointer("/metadata/namespace")
                .and_then(Value::as_str)
                .map(str::to_owned)
                .or(overlay_namespace)
                .is_none_or(|n| n == wanted.namespace);
            let group_ok =
                doc.get("apiVersion").and_then(Value::as_str).is_some_and(|v| group(v) == group(wanted.api_version));
            if is("/kind", wanted.kind) && is("/metadata/name", wanted.name) && namespace_ok && group_ok {
                found.push(Found { file: path.clone(), span, json: doc, patch: patches.contains_key(path) });
            }
        }
    }
    found
}

/// For each change, the document that decides it: among those that set the field, a
/// Kustomize patch (applied last) wins over a base; if none sets it, the one base that defines
/// the object (or, with no base in reach, the one patch). More than one equally good: refused,
/// naming them — the policy's `path` settles it.
pub fn assign(found: &[Found], changes: &[Change]) -> Result<BTreeMap<usize, Vec<Change>>, String> {
    let mut plan: BTreeMap<usize, Vec<Change>> = BTreeMap::new();
    let names = |idx: &[usize]| idx.iter().map(|i| found[*i].file.clone()).collect::<Vec<_>>().join(", ");
    for change in changes {
        let setting: Vec<usize> =
            (0..found.len()).filter(|i| resolve(&found[*i].json, &change.path).is_some()).collect();
        let patches: Vec<usize> = setting.iter().copied().filter(|i| found[*i].patch).collect();
        let pick = if !patches.is_empty() {
            patches
        } else if !setting.is_empty() {
            setting
        } else {
            let bases: Vec<usize> = (0..found.len()).filter(|i| !found[*i].patch).collect();
            if bases.is_empty() { (0..found.len()).collect() } else { bases }
        };
        match pick.as_slice() {
            [one] => plan.entry(*one).or_default().push(change.clone()),
            [] => return Err("no manifest defines the object".to_owned()),
            many => {
                return Err(format!(
                    "{} is decided by more than one file ({}); set spec.ci.gitops.path to the one to edit",
                    describe(&change.path),
                    names(many)
                ));
            }
        }
    }
    Ok(plan)
}

/// Why an edit was refused.
fn refuse(what: impl std::fmt::Display) -> String {
    format!("cannot edit the manifest preserving its format: {what}")
}

/// `file_text` with `changes` made to the document at `span`, everything else untouched.
pub fn edit(file_text: &str, span: (usize, usize), changes: &[Change]) -> Result<String, String> {
    let doc = &file_text[span.0..span.1];
    // yamlpath's tree-sitter walk asserts on shapes it does not expect; a panic there is a
    // refusal, never a crash of the operator.
    let edited = std::panic::catch_unwind(|| edit_document(doc, changes))
        .map_err(|_| refuse("the YAML parser failed on this document"))??;
    Ok(format!("{}{edited}{}", &file_text[..span.0], &file_text[span.1..]))
}

fn edit_document(text: &str, changes: &[Change]) -> Result<String, String> {
    let original = parse(text).ok_or_else(|| refuse("the document does not parse"))?;
    let mut expected = original.clone();
    let mut text = text.to_owned();
    for change in changes {
        apply(&mut expected, &change.path, &change.value);
        let now = parse(&text).ok_or_else(|| refuse("an edit broke the document"))?;
        let mut have = change.path.len();
        while have > 0 && resolve(&now, &change.path[..have]).is_none() {
            have -= 1;
        }
        let route = route_of(&now, &change.path[..have]).ok_or_else(|| refuse("a path could not be routed"))?;
        let yaml = Document::new(text.clone()).map_err(refuse)?;
        text = if have == change.path.len() {
            replace(&yaml, &route, &change.value)?
        } else {
            let parent = resolve(&now, &change.path[..have]).unwrap_or(&Value::Null);
            let inner = nested(&change.path[have + 1..], &change.value);
            match (&change.path[have], parent) {
                (Seg::Key(k), Value::Object(_)) => add(&yaml, &route, k, &inner)?,
                (Seg::Named(n), Value::Array(_)) => {
                    let item = nested(&[Seg::Named(n.clone())], &inner);
                    append(&yaml, &route, &item[0])?
                }
                // An empty value (`key:`) becomes the missing part.
                (seg, Value::Null) => replace(&yaml, &route, &nested(std::slice::from_ref(seg), &inner))?,
                (_, _) => return Err(refuse(format!("{} is not a mapping or list", describe(&change.path[..have])))),
            }
        };
    }
    match parse(&text) {
        Some(v) if v == expected => Ok(text),
        _ => Err(refuse("the edited document would not say exactly what the change says")),
    }
}

fn line_end(text: &str, at: usize) -> usize {
    let at = text.floor_char_boundary(at);
    text[at..].find('\n').map_or(text.len(), |i| at + i)
}

/// A scalar written in the style of the one it replaces (double or single quotes kept; plain
/// where plain reads back the same, double quotes otherwise).
fn scalar(new: &Value, old: &str) -> String {
    let Value::String(s) = new else { return new.to_string() };
    let double = serde_json::to_string(s).unwrap_or_default();
    let plain_reads_back = || parse(&format!("k: {s}\n")).and_then(|v| v.get("k").cloned()) == Some(json!(s));
    if old.starts_with('"') {
        double
    } else if old.starts_with('\'') && !s.chars().any(char::is_control) {
        format!("'{}'", s.replace('\'', "''"))
    } else if !s.is_empty() && s.trim() == s && !s.contains(['#', '\n', '"', '\'']) && plain_reads_back() {
        s.clone()
    } else {
        double
    }
}

fn replace(yaml: &Document, route: &[Component<'static>], value: &Value) -> Result<String, String> {
    let source = yaml.source();
    let r = Route::from(route.to_vec());
    match yaml.query_exact(&r).map_err(refuse)? {
        Some(feature) => {
            let (s, e) = feature.location.byte_span;
            let old = &source[s..e];
            let new = match (feature.kind(), value) {
                (FeatureKind::Scalar, Value::String(_) | Value::Number(_) | Value::Bool(_)) => scalar(value, old),
                // Lists and mappings as a flow collection (JSON is YAML).
                _ => value.to_string(),
            };
            Ok(format!("{}{new}{}", &source[..s], &source[e..]))
        }
        // `key:` with nothing after it.
        None => {
            let key = yaml.query_key_only(&r).map_err(refuse)?;
            let end = key.location.byte_span.1;
            let colon = source[end..].find(':').map(|i| end + i + 1).ok_or_else(|| refuse("no colon after a key"))?;
            let new = match value {
                Value::Object(_) | Value::Array(_) => value.to_string(),
                v => scalar(v, ""),
            };
            Ok(format!("{} {new}{}", &source[..colon], &source[colon..]))
        }
    }
}

/// `value` inside a flow collection: a scalar as [`scalar`] writes it, a collection as JSON
/// (which is YAML).
fn flow(value: &Value) -> String {
    match value {
        Value::Object(_) | Value::Array(_) => value.to_string(),
        v => scalar(v, ""),
    }
}

/// Block YAML for `value`, each line indented by `indent` spaces.
fn block(value: &Value, indent: usize) -> Result<String, String> {
    let rendered = serde_saphyr::to_string(value).map_err(refuse)?;
    let pad = " ".repeat(indent);
    Ok(rendered.trim_end().lines().map(|l| format!("\n{pad}{l}")).collect())
}

/// `rendered` (block YAML) as new lines at the end of the block collection `feature`, at its
/// own indentation.
fn after_block(source: &str, feature: &yamlpath::Feature, rendered: &Value) -> Result<String, String> {
    let (s, e) = feature.location.byte_span;
    let indent = feature.location.point_span.0.1;
    let at = line_end(source, e.saturating_sub(1).max(s));
    Ok(format!("{}{}{}", &source[..at], block(rendered, indent)?, &source[at..]))
}

/// `entry` as the last entry of the flow collection at `span` closed by `close`; the spacing
/// before the closing bracket stays.
fn into_flow(source: &str, (s, e): (usize, usize), close: char, entry: &str) -> Result<String, String> {
    let at = source[s..e]
        .rfind(close)
        .map(|i| s + i)
        .ok_or_else(|| refuse(format!("a flow collection without '{close}'")))?;
    let empty = source[s + 1..at].trim().is_empty();
    let before = source[..at].trim_end();
    Ok(format!("{before}{}{entry}{}", if empty { "" } else { ", " }, &source[before.len()..]))
}

fn add(yaml: &Document, route: &[Component<'static>], key: &str, value: &Value) -> Result<String, String> {
    let source = yaml.source();
    let feature = if route.is_empty() {
        yaml.top_feature().map_err(refuse)?
    } else {
        yaml.query_exact(&Route::from(route.to_vec())).map_err(refuse)?.ok_or_else(|| refuse("the mapping is empty"))?
    };
    match feature.kind() {
        FeatureKind::BlockMapping => after_block(source, &feature, &json!({ key: value })),
        FeatureKind::FlowMapping => {
            into_flow(source, feature.location.byte_span, '}', &format!("{}: {}", scalar(&json!(key), ""), flow(value)))
        }
        _ => Err(refuse("expected a mapping")),
    }
}

fn append(yaml: &Document, route: &[Component<'static>], item: &Value) -> Result<String, String> {
    let source = yaml.source();
    let feature =
        yaml.query_exact(&Route::from(route.to_vec())).map_err(refuse)?.ok_or_else(|| refuse("the list is empty"))?;
    match feature.kind() {
        FeatureKind::BlockSequence => after_block(source, &feature, &json!([item])),
        FeatureKind::FlowSequence => into_flow(source, feature.location.byte_span, ']', &flow(item)),
        _ => Err(refuse("expected a list")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEPLOYMENT: &str = r#"# the web app
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # keep this comment
spec:
  replicas: 2 # two is enough
  template:
    spec:
      containers:
        - name: app
          image: "web:1.2"
          resources:
            limits: {memory: 256Mi}   # flow style
        - name: sidecar
          image: 'side:1'
---
apiVersion: v1
kind: Service
metadata:
  name: web
"#;

    fn wanted() -> Wanted<'static> {
        Wanted { api_version: "apps/v1", kind: "Deployment", name: "web", namespace: "shop" }
    }

    fn set(path: &[&str], value: Value) -> Change {
        let path = path
            .iter()
            .map(|p| match p.strip_prefix('=') {
                Some(n) => Seg::Named(n.into()),
                None => Seg::Key((*p).into()),
            })
            .collect();
        Change { path, value }
    }

    fn containers() -> Vec<&'static str> {
        vec!["spec", "template", "spec", "containers"]
    }

    #[test]
    fn changes_are_the_leaves_that_differ_with_named_items_matched_by_name() {
        let before = json!({"spec": {"replicas": 2, "template": {"spec": {"containers": [
            {"name": "app", "image": "a:1", "resources": {"limits": {"memory": "1Gi"}}}, {"name": "side", "image": "s:1"}]}}}});
        let mut after = before.clone();
        after["spec"]["template"]["spec"]["containers"][1]["resources"] = json!({"limits": {"cpu": "1"}});
        after["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["memory"] = json!("2Gi");
        after["spec"]["replicas"] = json!(3);
        let c = changes(&before, &after).unwrap();
        let described: Vec<String> = c.iter().map(|c| describe(&c.path)).collect();
        assert_eq!(
            described,
            vec![
                "spec.replicas",
                "spec.template.spec.containers[name=app].resources.limits.memory",
                "spec.template.spec.containers[name=side].resources"
            ]
        );
        let mut removing = before.clone();
        removing["spec"]["template"]["spec"]["containers"][0]["resources"] = json!({});
        let err = changes(&before, &removing).unwrap_err();
        assert!(err.contains("removes spec.template.spec.containers[name=app].resources.limits"), "{err}");
    }

    #[test]
    fn an_edit_keeps_comments_quoting_order_and_the_other_documents() {
        let found = locate(&[("apps/web.yaml".into(), DEPLOYMENT.into())], &wanted());
        assert_eq!(found.len(), 1);
        let mut app = containers();
        app.extend(["=app", "image"]);
        let mut mem = containers();
        mem.extend(["=app", "resources", "limits", "memory"]);
        let mut cpu = containers();
        cpu.extend(["=app", "resources", "limits", "cpu"]);
        let mut side = containers();
        side.extend(["=sidecar", "resources"]);
        let edits = vec![
            set(&["spec", "replicas"], json!(3)),
            set(&app, json!("web:1.3")),
            set(&mem, json!("512Mi")),
            set(&cpu, json!("1")),
            set(&side, json!({"limits": {"memory": "64Mi"}})),
        ];
        let out = edit(DEPLOYMENT, found[0].span, &edits).unwrap();
        let expected = r#"# the web app
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web   # keep this comment
spec:
  replicas: 3 # two is enough
  template:
    spec:
      containers:
        - name: app
          image: "web:1.3"
          resources:
            limits: {memory: 512Mi, cpu: "1"}   # flow style
        - name: sidecar
          image: 'side:1'
          resources:
            limits:
              memory: 64Mi
---
apiVersion: v1
kind: Service
metadata:
  name: web
"#;
        assert_eq!(out, expected);
    }

    #[test]
    fn a_new_list_item_and_a_new_mapping_are_written_in_block_style() {
        let doc = "spec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: a:1\n        env:\n        - name: A\n          value: \"1\"\n";
        let mut env = containers();
        env.extend(["=app", "env", "=B"]);
        let mut probe = containers();
        probe.extend(["=app", "readinessProbe", "periodSeconds"]);
        let out =
            edit(doc, (0, doc.len()), &[set(&env, json!({"name": "B", "value": "2"})), set(&probe, json!(5))]).unwrap();
        assert_eq!(
            out,
            "spec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: a:1\n        env:\n        - name: A\n          value: \"1\"\n        - name: B\n          value: \"2\"\n        readinessProbe:\n          periodSeconds: 5\n"
        );
        let v = parse(&out).unwrap();
        assert_eq!(v.pointer("/spec/template/spec/containers/0/env/1/value"), Some(&json!("2")));
        assert_eq!(v.pointer("/spec/template/spec/containers/0/readinessProbe/periodSeconds"), Some(&json!(5)));
        assert!(out.starts_with(&doc[..doc.len() - 1]), "the original lines come first, unchanged:\n{out}");
    }

    #[test]
    fn a_string_that_reads_as_another_type_is_quoted() {
        let doc = "data:\n  enabled: yes-please\n  port: '8080'\n";
        let out = edit(
            doc,
            (0, doc.len()),
            &[set(&["data", "enabled"], json!("true")), set(&["data", "port"], json!("9090"))],
        )
        .unwrap();
        assert_eq!(out, "data:\n  enabled: \"true\"\n  port: '9090'\n");
    }

    #[test]
    fn a_kustomize_patch_that_sets_the_field_wins_over_the_base() {
        let base = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n  template:\n    spec:\n      containers:\n        - name: app\n          image: a:1\n          resources:\n            limits:\n              memory: 128Mi\n";
        let patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    spec:\n      containers:\n        - name: app\n          resources:\n            limits:\n              memory: 256Mi # prod needs more\n";
        let kustomization = "resources:\n  - ../../base\npatches:\n  - path: memory.yaml\n";
        let files = vec![
            ("base/deployment.yaml".to_owned(), base.to_owned()),
            ("overlays/prod/kustomization.yaml".to_owned(), kustomization.to_owned()),
            ("overlays/prod/memory.yaml".to_owned(), patch.to_owned()),
        ];
        let found = locate(&files, &wanted());
        assert_eq!(found.len(), 2);
        let mut mem = containers();
        mem.extend(["=app", "resources", "limits", "memory"]);
        let plan = assign(&found, &[set(&mem, json!("512Mi")), set(&["spec", "replicas"], json!(2))]).unwrap();
        let files_for: Vec<(String, usize)> = plan.iter().map(|(i, c)| (found[*i].file.clone(), c.len())).collect();
        assert_eq!(
            files_for,
            vec![("base/deployment.yaml".to_owned(), 1), ("overlays/prod/memory.yaml".to_owned(), 1)]
        );
        let (i, c) = plan.iter().find(|(i, _)| found[**i].patch).unwrap();
        let out = edit(patch, found[*i].span, c).unwrap();
        assert!(out.contains("memory: 512Mi # prod needs more"), "{out}");
    }

    #[test]
    fn another_environments_overlay_patch_is_not_this_targets() {
        let patch = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 5\n";
        let base = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n";
        let files = vec![
            ("base/web.yaml".to_owned(), base.to_owned()),
            (
                "prod/kustomization.yaml".to_owned(),
                "namespace: prod\nresources: [../base]\npatches:\n  - path: replicas.yaml\n".to_owned(),
            ),
            ("prod/replicas.yaml".to_owned(), patch.to_owned()),
        ];
        let found = locate(&files, &wanted());
        assert_eq!(
            found.iter().map(|f| f.file.as_str()).collect::<Vec<_>>(),
            vec!["base/web.yaml"],
            "prod's patch is not shop's"
        );
    }

    #[test]
    fn two_bases_for_one_object_are_ambiguous_and_a_missing_object_is_not_found() {
        let d = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 1\n";
        let files = vec![("a/web.yaml".to_owned(), d.to_owned()), ("b/web.yaml".to_owned(), d.to_owned())];
        let found = locate(&files, &wanted());
        let err = assign(&found, &[set(&["spec", "replicas"], json!(2))]).unwrap_err();
        assert!(err.contains("a/web.yaml, b/web.yaml") && err.contains("spec.ci.gitops.path"), "{err}");
        let other = Wanted { name: "api", ..wanted() };
        assert!(locate(&files, &other).is_empty());
        let elsewhere = Wanted { namespace: "shop", ..wanted() };
        let namespaced = vec![("c.yaml".to_owned(), d.replace("name: web", "name: web\n  namespace: other"))];
        assert!(locate(&namespaced, &elsewhere).is_empty(), "a manifest for another namespace is not the target");
        let helm = vec![("t.yaml".to_owned(), "kind: Deployment\nmetadata:\n  name: {{ .Values.name }}\n".to_owned())];
        assert!(locate(&helm, &wanted()).is_empty());
    }

    #[test]
    fn documents_split_on_markers_only_at_line_start() {
        let text = "a: 1\n---\nb: |\n  x --- y\n--- \nc: 3\n...\n";
        let docs: Vec<&str> = documents(text).iter().map(|(s, e)| &text[*s..*e]).collect();
        assert_eq!(docs, vec!["a: 1\n", "b: |\n  x --- y\n", "c: 3\n"]);
    }
}

//! A watch as a streamed response: events in resourceVersion order, bookmarks, the
//! initial-events-end bookmark, and 410 when the requested version is too old.

use super::*;

/// `?watch=true`: stream newline-delimited watch events until the timeout or the client leaves.
pub(super) fn watch_stream(state: Arc<State>, target: Target, q: &Query, as_table: bool) -> Result<Response, ApiError> {
    let rt = target.rt.clone();
    let mut opts = list_options(&rt, q, true)?;
    opts.limit = None;
    let namespace = rt.namespaced.then(|| target.namespace.clone()).filter(|n| !n.is_empty());
    let bookmarks = q.get("allowWatchBookmarks").is_some_and(|b| b == "true" || b == "1");
    let initial = q.get("sendInitialEvents").is_some_and(|b| b == "true");
    // Capped at a day, so no deadline arithmetic can overflow.
    let timeout = q.get("timeoutSeconds").and_then(|t| t.parse::<u64>().ok()).unwrap_or(1800).min(86_400);
    let rv = q.get("resourceVersion").filter(|r| !r.is_empty()).cloned();
    if initial && q.get("resourceVersionMatch").map(String::as_str) != Some("NotOlderThan") {
        return Err(ApiError::invalid(
            "ListOptions.meta.k8s.io",
            "",
            vec![crate::sandbox::status::Cause {
                reason: "FieldValueForbidden".into(),
                message: "Forbidden: sendInitialEvents requires setting resourceVersionMatch to NotOlderThan".into(),
                field: "resourceVersionMatch".into(),
            }],
        ));
    }
    let from = match rv.as_deref() {
        Some("0") | None => None,
        Some(r) if initial => {
            parse_rv(r)?;
            None
        }
        Some(r) => Some(parse_rv(r)?),
    };
    let store = state.api.store.clone();
    let matches = {
        let opts = opts.clone();
        let namespace = namespace.clone();
        let storage = rt.storage.clone();
        let rt = rt.clone();
        move |storage_key: &str, obj: &Value| {
            if storage_key != storage || namespace.as_deref().is_some_and(|n| ns_of(obj) != n) {
                return false;
            }
            // Selectors see the object as this API version presents it.
            let shown = to_api(&rt, obj.clone());
            opts.labels.matches(shown.pointer("/metadata/labels").unwrap_or(&Value::Null))
                && opts.fields.matches(&shown)
        }
    };
    let render = {
        let rt = rt.clone();
        move |kind: &str, obj: Value| -> String {
            let obj = to_api(&rt, obj);
            let obj = if as_table {
                let meta = json!({"resourceVersion": obj.pointer("/metadata/resourceVersion").cloned().unwrap_or(Value::Null)});
                table(&rt, &[obj], meta, "Metadata")
            } else {
                obj
            };
            format!("{}\n", json!({"type": kind, "object": obj}))
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<String, std::io::Error>>(64);
    let (backlog, mut live, start_rv) = match store.watch(from) {
        Ok(w) => w,
        Err(e) => {
            // kube-apiserver answers 200 and an ERROR event carrying the 410 Status.
            let line = format!("{}\n", json!({"type": "ERROR", "object": e.to_status()}));
            let body = Body::from_stream(futures::stream::iter([Ok::<_, std::io::Error>(line)]));
            return Ok(streaming(body));
        }
    };
    let mut initial_lines = Vec::new();
    if from.is_none() {
        let (objs, _) = store.list(&rt.storage, namespace.as_deref(), Some(start_rv))?;
        for o in objs.into_iter().filter(|o| matches(&rt.storage, o)) {
            initial_lines.push(render("ADDED", o));
        }
        if initial && bookmarks {
            let bm = json!({"type": "BOOKMARK", "object": {"kind": rt.kind, "apiVersion": rt.api_version(),
                "metadata": {"resourceVersion": start_rv.to_string(), "annotations": {"k8s.io/initial-events-end": "true"}}}});
            initial_lines.push(format!("{bm}\n"));
        }
    }
    let interval = state.bookmark_interval;
    let kind = rt.kind.clone();
    let api_version = rt.api_version();
    tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(timeout);
        let mut last_sent = start_rv;
        for line in initial_lines {
            if tx.send(Ok(line)).await.is_err() {
                return;
            }
        }
        let emit = |c: &crate::sandbox::store::Change| -> Option<String> {
            let now = matches(&c.storage, &c.object);
            let before = c.prev.as_ref().is_some_and(|p| matches(&c.storage, p));
            let kind = match (c.kind, before, now) {
                (ChangeKind::Deleted, true, _) => "DELETED",
                (ChangeKind::Deleted, false, _) => return None,
                (_, false, true) => "ADDED",
                (_, true, true) => "MODIFIED",
                (_, true, false) => "DELETED",
                (_, false, false) => return None,
            };
            Some(render(kind, c.object.clone()))
        };
        for c in backlog {
            last_sent = c.rv;
            if let Some(line) = emit(&c)
                && tx.send(Ok(line)).await.is_err()
            {
                return;
            }
        }
        let mut ticker = tokio::time::interval(interval);
        ticker.tick().await;
        let mut bookmarked = last_sent;
        loop {
            tokio::select! {
                // Changes first: a bookmark must never claim a version whose events are
                // still queued for this watcher.
                biased;
                msg = live.recv() => match msg {
                    Ok(c) if c.rv > last_sent => {
                        last_sent = c.rv;
                        if let Some(line) = emit(&c) {
                            bookmarked = c.rv;
                            if tx.send(Ok(line)).await.is_err() {
                                return;
                            }
                        }
                    }
                    Ok(_) => {}
                    Err(RecvError::Lagged(_)) => {
                        let e = ApiError::expired(format!("too old resource version: {last_sent} (watcher fell behind)"));
                        let _ = tx.send(Ok(format!("{}\n", json!({"type": "ERROR", "object": e.to_status()})))).await;
                        return;
                    }
                    Err(RecvError::Closed) => return,
                },
                () = tx.closed() => return,
                () = tokio::time::sleep_until(deadline) => return,
                _ = ticker.tick(), if bookmarks => {
                    // Every change up to last_sent has been seen by this watcher.
                    if last_sent > bookmarked {
                        bookmarked = last_sent;
                        let bm = json!({"type": "BOOKMARK", "object": {"kind": kind, "apiVersion": api_version, "metadata": {"resourceVersion": last_sent.to_string()}}});
                        if tx.send(Ok(format!("{bm}\n"))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) });
    Ok(streaming(Body::from_stream(stream)))
}

pub(super) fn streaming(body: Body) -> Response {
    let mut resp = Response::new(body);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

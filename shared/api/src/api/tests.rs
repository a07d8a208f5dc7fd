//! Unit tests of the API's pure parts.

use super::*;

/// Every route, once.
const ALL: [Route<'static>; 22] = [
    Route::RegisterWorkflow,
    Route::ListWorkflows,
    Route::StartRun,
    Route::ListRuns,
    Route::GetRun("x"),
    Route::History("x"),
    Route::RunEvents("x"),
    Route::Cancel("x"),
    Route::Redrive("x"),
    Route::Rerun("x"),
    Route::Audit,
    Route::Sweep,
    Route::OpenApi,
    Route::Metrics,
    Route::Costs,
    Route::Complete("x", "t"),
    Route::Events,
    Route::BusEvent,
    Route::Waiting,
    Route::Answer,
    Route::Callback("k"),
    Route::Heartbeat("k"),
];

#[test]
fn the_openapi_description_names_exactly_the_routes() {
    let doc: Value = serde_json::from_str(OPENAPI).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut documented: Vec<String> = Vec::new();
    for (path, ops) in doc["paths"].as_object().unwrap() {
        for (method, op) in ops.as_object().unwrap() {
            let m: Method = method.to_uppercase().parse().unwrap();
            let concrete = path.replace("{id}", "x").replace("{task}", "t").replace("{token}", "k");
            let parts: Vec<&str> = concrete.split('/').filter(|p| !p.is_empty()).collect();
            let route = Route::parse(&m, &parts).unwrap_or_else(|| panic!("{method} {path} is no route"));
            assert_eq!(route.action(), format!("{} {path}", m.as_str()), "{method} {path}");
            if matches!(route, Route::Answer | Route::Callback(_) | Route::Heartbeat(_)) {
                // The link's (the task's) token is the credential: no role, no 403.
                assert_eq!(op["security"], json!([]), "{method} {path}");
                assert!(op["responses"].get("401").is_some());
                documented.push(route.action().to_string());
                continue;
            }
            let role = route.needs().as_str();
            assert!(
                op["description"].as_str().unwrap().contains(&format!("`{role}`")),
                "{method} {path} documents its role ({role})"
            );
            for code in ["401", "403"] {
                assert!(op["responses"].get(code).is_some(), "{method} {path} documents {code}");
            }
            documented.push(route.action().to_string());
        }
    }
    documented.sort();
    let mut routes: Vec<String> = ALL.iter().map(|r| r.action().to_string()).collect();
    routes.sort();
    assert_eq!(documented, routes);
}

mod paging_tests {
    use super::*;
    use crate::api::runs::history_page;
    use llmo_core::engine::Event;
    use llmo_runtime::store::Transition;
    use llmo_runtime::view::bounded;

    fn t(version: u64, reason_bytes: usize) -> Transition {
        Transition::new(version, version * 10, Event::Abort { reason: "r".repeat(reason_bytes) })
    }

    #[test]
    fn history_pages_by_count_and_bytes_and_truncates_huge_transitions() {
        let tail: Vec<Transition> = (1..=7).map(|v| t(v, 10)).collect();
        let (page, next) = history_page(tail.clone(), 3);
        assert_eq!(page.len(), 3);
        assert_eq!(next, Some(3));
        let (page, next) = history_page(tail, 10);
        assert_eq!((page.len(), next), (7, None));
        // 200 KB each: a 4 MB page holds 20 of 30.
        let big: Vec<Transition> = (1..=30).map(|v| t(v, 200 * 1024)).collect();
        let (page, next) = history_page(big, 1000);
        assert_eq!((page.len(), next), (20, Some(20)));
        // One transition over the value limit: a marker in its place.
        let (page, next) = history_page(vec![t(1, 300 * 1024), t(2, 5)], 10);
        assert_eq!(next, None);
        assert_eq!(page[0]["event"]["truncated"], true);
        assert_eq!(page[0]["event"]["event"], "abort");
        assert!(page[0]["event"]["bytes"].as_u64().unwrap() > 300 * 1024);
        assert_eq!(page[1]["event"]["reason"], "rrrrr");
    }

    #[test]
    fn values_over_the_limit_come_back_as_markers() {
        assert_eq!(bounded(Some(&json!({"a": 1}))), json!({"a": 1}));
        assert_eq!(bounded(None), Value::Null);
        let big = json!({"text": "x".repeat(VALUE_BYTES)});
        let m = bounded(Some(&big));
        assert_eq!(m["truncated"], true);
        assert_eq!(m["bytes"], json!(VALUE_BYTES + 11));
    }
}

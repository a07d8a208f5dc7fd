//! Providers against a local fake server speaking the real wire formats.

use std::time::{Duration, Instant};

use llmo_core::engine::AttemptResult;
use serde_json::{Value, json};
use wiremock::matchers::{body_partial_json, header, method, path};
use wiremock::{Mock as Route, MockServer, ResponseTemplate};

use super::*;
use crate::executor::test_attempt;

fn config(server: &MockServer, timeout: Duration) -> Config {
    let mut c = Config::builtin();
    for (name, kind, base) in
        [("openai", Kind::Openai, format!("{}/v1", server.uri())), ("anthropic", Kind::Anthropic, server.uri())]
    {
        c.providers.insert(
            name.into(),
            ProviderConfig {
                kind,
                base_url: base,
                api_key: Some(format!("key-{name}")),
                api_key_env: None,
                timeout,
                free: false,
                set_by: None,
                region: None,
                models: Vec::new(),
            },
        );
    }
    c.default_provider = "openai".into();
    c.breaker = config::BreakerConfig { failures: 3, cooldown: Duration::from_secs(60) };
    c
}

fn exec(server: &MockServer) -> LlmExecutor {
    LlmExecutor::new(config(server, Duration::from_secs(5)), false).with_retry(CallRetry {
        max_calls: 3,
        initial: Duration::from_millis(10),
        max_wait: Duration::from_secs(5),
    })
}

fn completion(text: &str, prompt: u64, completion: u64) -> Value {
    json!({
        "id": "chatcmpl-1", "object": "chat.completion", "model": "gpt-4o-mini-2024-07-18",
        "choices": [{ "index": 0, "message": { "role": "assistant", "content": text }, "finish_reason": "stop" }],
        "usage": { "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion }
    })
}

fn dollars(d: f64) -> crate::executor::Allowance {
    crate::executor::Allowance { cost_usd: Some(d), tokens: None }
}

fn chat_route() -> wiremock::MockBuilder {
    Route::given(method("POST")).and(path("/v1/chat/completions"))
}

async fn run(e: &LlmExecutor, with: Value) -> AttemptResult {
    e.execute(&test_attempt("llm", with, None, 1)).await
}

fn output(r: &AttemptResult) -> &Value {
    match r {
        AttemptResult::Succeeded { output, .. } => output,
        other => panic!("expected success, got {other:?}"),
    }
}

fn failure(r: &AttemptResult) -> (&str, bool) {
    match r {
        AttemptResult::Failed { error, retryable, .. } => (error, *retryable),
        other => panic!("expected failure, got {other:?}"),
    }
}

#[tokio::test]
async fn openai_success_sends_the_prompt_and_prices_the_usage() {
    let server = MockServer::start().await;
    chat_route()
        .and(header("authorization", "Bearer key-openai"))
        .and(body_partial_json(json!({
            "model": "gpt-4o-mini", "temperature": 0.2, "max_tokens": 50,
            "messages": [{ "role": "system", "content": "Be brief." }, { "role": "user", "content": "Hi" }]
        })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("Hello!", 1000, 500)))
        .expect(1)
        .mount(&server)
        .await;
    let r = run(
        &exec(&server),
        json!({ "model": "gpt-4o-mini", "system": "Be brief.", "prompt": "Hi", "temperature": 0.2, "max_tokens": 50 }),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["text"], "Hello!");
    assert_eq!(out["model"], "openai/gpt-4o-mini");
    // 1000 × $0.15/M + 500 × $0.60/M
    let cost = out["usage"]["cost_usd"].as_f64().unwrap();
    assert!((cost - 0.00045).abs() < 1e-12, "{cost}");
    assert!(matches!(r, AttemptResult::Succeeded { usage, .. } if usage.tokens == 1500));
}

#[tokio::test]
async fn a_429_waits_for_retry_after_then_succeeds() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(
            ResponseTemplate::new(429)
                .insert_header("retry-after", "1")
                .set_body_json(json!({"error": {"message": "Rate limit reached"}})),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", 1, 1)))
        .expect(1)
        .mount(&server)
        .await;
    let t = Instant::now();
    let r = run(&exec(&server), json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    assert_eq!(output(&r)["text"], "ok");
    assert!(t.elapsed() >= Duration::from_secs(1), "waited {:?}", t.elapsed());
}

#[tokio::test]
async fn a_retry_after_longer_than_the_cap_ends_the_attempt_as_retryable() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(429).insert_header("retry-after", "3600"))
        .expect(1)
        .mount(&server)
        .await;
    let r = run(&exec(&server), json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (e, retryable) = failure(&r);
    assert!(retryable && e.contains("rate limited (429), retry after 3600s"), "{e}");
}

#[tokio::test]
async fn server_errors_are_retried_with_backoff_then_reported_as_retryable() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(500).set_body_string("upstream exploded"))
        .up_to_n_times(2)
        .expect(2)
        .mount(&server)
        .await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("third time", 1, 1)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    let e = exec(&server);
    assert_eq!(output(&run(&e, json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await)["text"], "third time");

    let server = MockServer::start().await;
    chat_route().respond_with(ResponseTemplate::new(503)).expect(3).mount(&server).await;
    let r = run(&exec(&server), json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (e, retryable) = failure(&r);
    assert!(retryable && e.contains("server error 503"), "{e}");
}

#[tokio::test]
async fn a_slow_server_times_out() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(
            ResponseTemplate::new(200).set_body_json(completion("late", 1, 1)).set_delay(Duration::from_secs(2)),
        )
        .mount(&server)
        .await;
    let e = LlmExecutor::new(config(&server, Duration::from_millis(200)), false)
        .with_retry(CallRetry { max_calls: 1, ..CallRetry::default() });
    let t = Instant::now();
    let r = run(&e, json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (err, retryable) = failure(&r);
    assert!(retryable && err.contains("timed out"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn malformed_bodies_and_client_errors_are_not_retried_within_the_attempt() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_string("{\"choices\": ["))
        .expect(1)
        .mount(&server)
        .await;
    let r = run(&exec(&server), json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (e, retryable) = failure(&r);
    assert!(retryable && e.contains("malformed response"), "{e}");

    let server = MockServer::start().await;
    chat_route()
        .respond_with(
            ResponseTemplate::new(401).set_body_json(json!({"error": {"message": "Incorrect API key provided"}})),
        )
        .expect(1)
        .mount(&server)
        .await;
    let r = run(&exec(&server), json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (e, retryable) = failure(&r);
    assert!(!retryable, "a bad key will not get better");
    assert_eq!(e, "openai/gpt-4o-mini: request error 401: Incorrect API key provided");
}

#[tokio::test]
async fn fallback_models_are_tried_in_order_across_providers() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(404).set_body_json(json!({"error": {"message": "model not found"}})))
        .expect(1)
        .mount(&server)
        .await;
    Route::given(method("POST"))
        .and(path("/v1/messages"))
        .and(header("x-api-key", "key-anthropic"))
        .and(header("anthropic-version", "2023-06-01"))
        .and(body_partial_json(json!({ "model": "claude-3-5-haiku-latest", "system": "Be brief.", "messages": [{"role": "user", "content": "Hi"}] })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_1", "type": "message", "role": "assistant", "model": "claude-3-5-haiku-20241022",
            "content": [{ "type": "text", "text": "Hello " }, { "type": "text", "text": "there" }],
            "stop_reason": "end_turn", "usage": { "input_tokens": 2000, "output_tokens": 100 }
        })))
        .expect(1)
        .mount(&server)
        .await;
    let r = run(
        &exec(&server),
        json!({ "model": "gpt-4o-mini", "fallback_models": ["anthropic/claude-3-5-haiku-latest"], "system": "Be brief.", "prompt": "Hi" }),
    )
    .await;
    let out = output(&r);
    assert_eq!(out["text"], "Hello there");
    assert_eq!(out["model"], "anthropic/claude-3-5-haiku-latest");
    assert_eq!(out["fallback_from"], json!(["openai/gpt-4o-mini: request error 404: model not found"]));
    // 2000 × $0.80/M + 100 × $4/M
    assert!((out["usage"]["cost_usd"].as_f64().unwrap() - 0.002).abs() < 1e-12);
}

#[tokio::test]
async fn json_output_is_checked_against_the_output_schema() {
    let schema = json!({ "type": "object", "required": ["kind"], "properties": { "kind": { "enum": ["a", "b"] } } });
    let with = json!({ "model": "gpt-4o-mini", "prompt": "Classify", "output_schema": schema });
    let server = MockServer::start().await;
    chat_route()
        .and(body_partial_json(json!({ "response_format": { "type": "json_schema", "json_schema": { "name": "output", "schema": schema } } })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("{\"kind\": \"c\"}", 5, 5)))
        .up_to_n_times(1)
        .mount(&server)
        .await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("```json\n{\"kind\": \"b\"}\n```", 5, 5)))
        .mount(&server)
        .await;
    let e = exec(&server);
    let r = run(&e, with.clone()).await;
    let (err, retryable) = failure(&r);
    assert!(retryable, "another attempt may answer well");
    assert!(err.contains("does not match output_schema at `/kind`"), "{err}");
    assert!(
        matches!(r, AttemptResult::Failed { usage, .. } if usage.tokens == 10),
        "the bad answer's tokens still count"
    );
    let r = run(&e, with).await;
    assert_eq!(output(&r)["json"], json!({ "kind": "b" }), "fenced JSON is accepted");
}

#[tokio::test]
async fn the_circuit_opens_after_repeated_failures_and_stops_calling() {
    let server = MockServer::start().await;
    chat_route().respond_with(ResponseTemplate::new(500)).expect(3).mount(&server).await;
    let e = LlmExecutor::new(config(&server, Duration::from_secs(5)), false)
        .with_retry(CallRetry { max_calls: 1, ..CallRetry::default() });
    for _ in 0..3 {
        failure(&run(&e, json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await);
    }
    let r = run(&e, json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (err, retryable) = failure(&r);
    assert!(retryable && err.contains("circuit open for provider `openai`"), "{err}");
    // `expect(3)`: the fourth attempt never reached the server (checked when `server` drops).
}

/// A provider's circuit is per tenant: t1's failing calls open it for t1 only; t2's call
/// still reaches the provider.
#[tokio::test]
async fn one_tenants_failures_do_not_open_a_provider_for_another_tenant() {
    let server = MockServer::start().await;
    chat_route().respond_with(ResponseTemplate::new(500)).expect(4).mount(&server).await;
    let e = LlmExecutor::new(config(&server, Duration::from_secs(5)), false)
        .with_retry(CallRetry { max_calls: 1, ..CallRetry::default() });
    let as_tenant = |tenant: &str| {
        let mut a = test_attempt("llm", json!({ "model": "gpt-4o-mini", "prompt": "Hi" }), None, 1);
        a.tenant = Some(tenant.into());
        a
    };
    for _ in 0..3 {
        failure(&e.execute(&as_tenant("t1")).await);
    }
    let r = e.execute(&as_tenant("t1")).await;
    let (err, _) = failure(&r);
    assert!(err.contains("circuit open for provider `openai`"), "{err}");
    let r = e.execute(&as_tenant("t2")).await;
    let (err, _) = failure(&r);
    assert!(!err.contains("circuit open"), "t2's call reached the provider: {err}");
    // `expect(4)`: t1's three and t2's one (checked when `server` drops).
}

#[tokio::test]
async fn anthropic_is_asked_for_json_in_the_system_prompt_and_rate_limits_are_retried() {
    let server = MockServer::start().await;
    Route::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(
            ResponseTemplate::new(529).set_body_json(
                json!({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}),
            ),
        )
        .up_to_n_times(1)
        .expect(1)
        .mount(&server)
        .await;
    Route::given(method("POST"))
        .and(path("/v1/messages"))
        .and(body_partial_json(json!({ "max_tokens": 1024 })))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "content": [{ "type": "text", "text": "{\"n\": 3}" }], "usage": { "input_tokens": 10, "output_tokens": 4 }
        })))
        .expect(1)
        .mount(&server)
        .await;
    let r = run(
        &exec(&server),
        json!({ "provider": "anthropic", "model": "claude-sonnet-4-5", "prompt": "Count", "response_format": "json" }),
    )
    .await;
    assert_eq!(output(&r)["json"], json!({ "n": 3 }));
    let sent = &server.received_requests().await.unwrap()[1];
    let body: Value = serde_json::from_slice(&sent.body).unwrap();
    assert!(body["system"].as_str().unwrap().contains("single JSON value"), "{body}");
}

#[tokio::test]
async fn mock_mode_answers_offline_and_the_judge_grades() {
    let e = LlmExecutor::new(Config::builtin(), true);
    let r = run(
        &e,
        json!({ "provider": "anthropic", "model": "claude-sonnet-4-5", "prompt": "Outline an article about Rust" }),
    )
    .await;
    assert_eq!(output(&r)["text"], "[mock claude-sonnet-4-5] Outline an article about Rust");
    assert_eq!(output(&r)["model"], "mock/claude-sonnet-4-5");
    let a = test_attempt("evaluate", json!(null), None, 1);
    let (score, _) = e.judge(&a, Usage::default(), "text", "good", "gpt-4o-mini", None).await;
    let score = score.unwrap();
    assert_eq!(score, 0.8);
    // Unknown providers are named.
    let e = LlmExecutor::new(Config::builtin(), false);
    let r = run(&e, json!({ "provider": "nope", "model": "m", "prompt": "p" })).await;
    let (err, retryable) = failure(&r);
    assert!(
        !retryable && err.contains("unknown provider `nope` (known: anthropic, bedrock, mock, ollama, openai)"),
        "{err}"
    );
}

#[tokio::test]
async fn under_a_cost_budget_an_unpriced_model_is_not_called() {
    let server = MockServer::start().await;
    chat_route()
        .and(body_partial_json(json!({ "model": "gpt-4o-mini" })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("priced", 10, 5)))
        .expect(1)
        .mount(&server)
        .await;
    // Any call of the unpriced model would be answered: the test counts that none is made.
    chat_route()
        .and(body_partial_json(json!({ "model": "my-finetune" })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("unpriced", 10, 5)))
        .expect(1)
        .mount(&server)
        .await;
    let e = exec(&server);
    let with = json!({ "model": "my-finetune", "prompt": "Hi", "fallback_models": ["gpt-4o-mini"] });
    // With a budget: the unpriced model is skipped (said in the output), the priced fallback answers.
    let mut a = test_attempt("llm", with.clone(), None, 1);
    a.allowance = Some(dollars(1.0));
    let r = e.execute(&a).await;
    let out = output(&r);
    assert_eq!(out["text"], "priced");
    let skipped = out["fallback_from"][0].as_str().unwrap();
    assert!(skipped.contains("openai/my-finetune: not called") && skipped.contains("no known price"), "{skipped}");
    // Alone under a budget, it fails for good, naming the model.
    let mut alone = test_attempt("llm", json!({ "model": "my-finetune", "prompt": "Hi" }), None, 1);
    alone.allowance = Some(dollars(1.0));
    let r = e.execute(&alone).await;
    let (error, retryable) = failure(&r);
    assert!(error.contains("my-finetune") && error.contains("no known price"), "{error}");
    assert!(!retryable);
    // Without a budget it is called: the one call its route expects.
    let r = run(&e, json!({ "model": "my-finetune", "prompt": "Hi" })).await;
    assert_eq!(output(&r)["text"], "unpriced");
}

/// The pre-call check prices the prompt as rendered (not as written) plus `max_tokens`: a
/// short template that renders to a long prompt is refused when its worst case does not fit
/// in the budget left, and no request is made.
#[tokio::test]
async fn the_budget_check_prices_the_rendered_prompt_and_max_tokens() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", 10, 5)))
        .expect(1)
        .mount(&server)
        .await;
    let e = exec(&server);
    // gpt-4o-mini: $0.15 in / $0.60 out per million tokens. 400,000 bytes are at most 400,024
    // tokens with the chat format's ≈ $0.0600 of prompt, plus 1,000 tokens of answer ($0.0006).
    let long = "x".repeat(400_000);
    let mut a = test_attempt("llm", json!({ "model": "gpt-4o-mini", "prompt": long, "max_tokens": 1000 }), None, 1);
    a.allowance = Some(dollars(0.01));
    let r = e.execute(&a).await;
    let (error, retryable) = failure(&r);
    assert!(
        error.contains("not called: it could cost $0.060604") && error.contains("$0.010000 this attempt holds"),
        "{error}"
    );
    assert!(!retryable);
    // max_tokens counts too: a short prompt with a huge answer allowance.
    let mut b = test_attempt("llm", json!({ "model": "gpt-4o-mini", "prompt": "Hi", "max_tokens": 100000 }), None, 1);
    b.allowance = Some(dollars(0.01));
    let r = e.execute(&b).await;
    let (error, _) = failure(&r);
    assert!(error.contains("not called: it could cost $0.060004"), "{error}");
    // Within the budget it is called: the one request the route expects.
    let mut c = test_attempt("llm", json!({ "model": "gpt-4o-mini", "prompt": "Hi", "max_tokens": 1000 }), None, 1);
    c.allowance = Some(dollars(0.01));
    assert_eq!(output(&e.execute(&c).await)["text"], "ok");
}

/// A provider's answer is read up to a cap: an 11 MB body fails the call for good (it is not
/// retried, and it is not read whole).
#[tokio::test]
async fn an_oversized_model_answer_is_refused() {
    let server = MockServer::start().await;
    let huge = completion(&"x".repeat(11 << 20), 1, 1);
    chat_route().respond_with(ResponseTemplate::new(200).set_body_json(huge)).expect(1).mount(&server).await;
    let r = run(&exec(&server), json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (error, retryable) = failure(&r);
    assert!(error.contains("larger than the limit of 10485760 bytes"), "{error}");
    assert!(!retryable);
}

/// Under a budget the answer's length is bounded: a task without `max_tokens` is sent the
/// default the reservation counted, so the worst case is real.
#[tokio::test]
async fn under_a_budget_max_tokens_is_always_sent() {
    let server = MockServer::start().await;
    chat_route()
        .and(body_partial_json(json!({ "max_tokens": llmo_core::engine::budget::DEFAULT_MAX_TOKENS })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", 10, 5)))
        .expect(1)
        .mount(&server)
        .await;
    let mut a = test_attempt("llm", json!({ "model": "gpt-4o-mini", "prompt": "Hi" }), None, 1);
    a.allowance = Some(dollars(1.0));
    assert_eq!(output(&exec(&server).execute(&a).await)["text"], "ok");
}

/// An `evaluate` executor whose judge's model answers `answer` to exactly one call (the server
/// checks the count when dropped).
async fn judged_once(answer: Value) -> (MockServer, crate::executor::Evaluate) {
    let server = MockServer::start().await;
    chat_route().respond_with(ResponseTemplate::new(200).set_body_json(answer)).expect(1).mount(&server).await;
    let judge = Arc::new(exec(&server));
    (server, crate::executor::Evaluate { judge: Some(judge) })
}

/// Under a token budget an unpriced model is bounded by its tokens: a call whose prompt and
/// `max_tokens` do not fit in what the attempt holds is not made (no price let it through).
#[tokio::test]
async fn under_a_token_budget_an_unpriced_model_is_bounded_by_its_tokens() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", 10, 5)))
        .expect(1)
        .mount(&server)
        .await;
    let tokens = |n| crate::executor::Allowance { cost_usd: None, tokens: Some(n) };
    let with = json!({ "model": "my-finetune", "prompt": "Hi", "max_tokens": 100 });
    let mut a = test_attempt("llm", with.clone(), None, 1);
    a.allowance = Some(tokens(50));
    let r = exec(&server).execute(&a).await;
    let (error, _) = failure(&r);
    assert!(error.contains("not called") && error.contains("50 tokens"), "{error}");
    // Room for its 2 + 24 prompt tokens and 100 of answer: the one call the route expects.
    a.allowance = Some(tokens(126));
    assert_eq!(output(&exec(&server).execute(&a).await)["text"], "ok");
}

/// A judge whose answer is no grade was still paid for: the failed attempt carries its usage
/// (it was lost before, so a retried judge cost money the run never counted).
#[tokio::test]
async fn a_judge_answer_that_is_not_json_is_counted() {
    let (_server, evaluate) = judged_once(completion("I think it is fine", 1000, 100)).await;
    let with = json!({ "input": "some text", "checks": [
        { "kind": "llm_judge", "model": "gpt-4o-mini", "criteria": "is it fine?", "threshold": 0.5 }
    ]});
    let r = evaluate.execute(&test_attempt("evaluate", with, None, 1)).await;
    match r {
        AttemptResult::Failed { error, retryable, usage } => {
            assert!(error.contains("not JSON") && retryable, "{error}");
            assert_eq!(usage.tokens, 1100);
            assert!((usage.cost_usd - (1000.0 * 0.15 + 100.0 * 0.6) / 1e6).abs() < 1e-12, "{usage:?}");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// Two judges share their attempt's allowance: the second is not called when what the first
/// spent leaves too little for its worst case.
#[tokio::test]
async fn judges_share_the_allowance_of_their_attempt() {
    let (_server, evaluate) = judged_once(completion("{\"score\": 0.9}", 1000, 300)).await;
    let with = json!({ "input": "t", "checks": [
        { "kind": "llm_judge", "model": "gpt-4o-mini", "criteria": "a", "threshold": 0.5 },
        { "kind": "llm_judge", "model": "gpt-4o-mini", "criteria": "b", "threshold": 0.5 }
    ]});
    // One judge's worst case: ~150 tokens of prompt and 300 of answer ≈ $0.0002; the first
    // answer costs $0.00033 (1,000 + 300 tokens), so $0.0004 leaves no room for the second.
    let mut a = test_attempt("evaluate", with, None, 1);
    a.allowance = Some(dollars(0.0004));
    match evaluate.execute(&a).await {
        AttemptResult::Failed { error, usage, .. } => {
            assert!(error.contains("not called") && error.contains("this attempt holds"), "{error}");
            assert_eq!(usage.tokens, 1300, "the first judge's answer is counted");
        }
        other => panic!("expected a failure, got {other:?}"),
    }
}

/// A provider that redirects is not followed: the key never reaches the other host (reqwest's
/// default policy kept `x-api-key` across hosts), and the call fails for good.
#[tokio::test]
async fn a_redirecting_provider_is_not_followed() {
    let elsewhere = MockServer::start().await;
    Route::given(method("POST")).respond_with(ResponseTemplate::new(200)).expect(0).mount(&elsewhere).await;
    let server = MockServer::start().await;
    Route::given(method("POST"))
        .respond_with(
            ResponseTemplate::new(307).insert_header("location", format!("{}/v1/messages", elsewhere.uri()).as_str()),
        )
        .expect(2)
        .mount(&server)
        .await;
    for provider in ["openai", "anthropic"] {
        let r = run(&exec(&server), json!({ "provider": provider, "model": "gpt-4o-mini", "prompt": "Hi" })).await;
        let (error, _) = failure(&r);
        assert!(error.contains("307"), "{provider}: {error}");
    }
    assert!(elsewhere.received_requests().await.unwrap().is_empty());
}

/// Policies apply to the model as rendered, when the call is made: a templated model the
/// validator could not check (`{{ inputs.model }}` = `claude-opus-4-1` under `*opus*`) is
/// refused without a request and the allowed fallback answers; with no allowed candidate
/// the attempt fails for good, having called nothing.
#[tokio::test]
async fn policies_refuse_denied_models_as_rendered_before_calling() {
    use llmo_core::source::SourceFile;
    use llmo_core::validate::Validator;
    let server = MockServer::start().await;
    chat_route()
        .and(body_partial_json(json!({ "model": "gpt-4o-mini" })))
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", 5, 1)))
        .expect(1)
        .mount(&server)
        .await;
    let e = LlmExecutor::new(config(&server, Duration::from_secs(5)), false);
    let wf = "apiVersion: llm-orchestrator/v1\nkind: Workflow\nmetadata: { name: w }\nspec:\n  inputs: { model: { type: string } }\n  tasks:\n    - { id: guard, type: policy, with: { deny_models: [\"*opus*\"] } }\n    - { id: a, type: llm, depends_on: [guard], with: { model: \"{{ inputs.model }}\", prompt: Hi } }\n";
    let checked =
        Validator::default().validate(&SourceFile::new("w.yaml", wf)).checked.expect("a templated model validates");
    let plan = Arc::new(llmo_core::engine::Plan::new(checked));
    let attempt = |with: Value| {
        let mut a = test_attempt("llm", with, None, 1);
        a.plan = plan.clone();
        a
    };
    let r = e
        .execute(&attempt(json!({ "model": "claude-opus-4-1", "fallback_models": ["gpt-4o-mini"], "prompt": "Hi" })))
        .await;
    assert_eq!(output(&r)["text"], "ok");
    assert!(output(&r)["fallback_from"][0].as_str().unwrap().contains("denied by policy `guard` (`*opus*`)"), "{r:?}");
    let r = e.execute(&attempt(json!({ "model": "claude-opus-4-1", "prompt": "Hi" }))).await;
    let (err, retryable) = failure(&r);
    assert!(!retryable && err.contains("model `openai/claude-opus-4-1` is denied by policy `guard`"), "{err}");
    // `expect(1)`: only the allowed fallback was ever called.
}

/// A provider whose base URL a config file set connects only where the egress policy
/// allows: a file naming a loopback listener gets a refusal, and the listener no request
/// (nor the key); the operator's policy (`LLMO_EGRESS_ALLOW`) lets it through.
#[tokio::test]
async fn a_config_files_base_url_is_under_the_egress_policy() {
    let server = MockServer::start().await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(completion("ok", 5, 1)))
        .expect(1)
        .mount(&server)
        .await;
    let yaml = format!("providers:\n  local: {{ kind: openai, base_url: '{}/v1', free: true }}\n", server.uri());
    let config = Config::from_yaml(".llmo/config.yaml", &yaml).unwrap();
    let with = json!({ "provider": "local", "model": "m", "prompt": "Hi" });
    let keys: Arc<dyn crate::secrets::Secrets> = Arc::new(crate::secrets::EnvSecrets);
    let strict = LlmExecutor::build(config.clone(), false, keys.clone(), &crate::egress::Egress::strict());
    let r = run(&strict, with.clone()).await;
    let (err, retryable) = failure(&r);
    assert!(!retryable && err.contains("provider `local` (base_url from .llmo/config.yaml): egress refused:"), "{err}");
    let allowed = LlmExecutor::build(config, false, keys, &crate::egress::Egress::loopback());
    assert_eq!(output(&run(&allowed, with).await)["text"], "ok");
    // `expect(1)`: only the allowed executor's call arrived.
}

/// Prompt-cache tokens are priced at their own rates: Anthropic's cache reads at 0.1x input
/// and writes at 1.25x, OpenAI's cached input tokens (part of `prompt_tokens`) at the model's
/// cached rate; before, every one of them was priced as full input.
#[tokio::test]
async fn cached_prompt_tokens_are_priced_at_their_own_rates() {
    let server = MockServer::start().await;
    Route::given(method("POST"))
        .and(path("/v1/messages"))
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "msg_2", "type": "message", "role": "assistant", "model": "claude-sonnet-4-20250514",
            "content": [{ "type": "text", "text": "ok" }], "stop_reason": "end_turn",
            "usage": { "input_tokens": 100, "cache_creation_input_tokens": 1000, "cache_read_input_tokens": 10000, "output_tokens": 50 }
        })))
        .mount(&server)
        .await;
    chat_route()
        .respond_with(ResponseTemplate::new(200).set_body_json(json!({
            "id": "c", "object": "chat.completion", "model": "gpt-4o-2024-08-06",
            "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
            "usage": { "prompt_tokens": 2000, "completion_tokens": 100, "prompt_tokens_details": { "cached_tokens": 1500 } }
        })))
        .mount(&server)
        .await;
    let e = exec(&server);
    let out =
        output(&run(&e, json!({ "provider": "anthropic", "model": "claude-sonnet-4", "prompt": "Hi" })).await).clone();
    // 100 x $3 + 1,000 x $3.75 (write) + 10,000 x $0.30 (read) + 50 x $15, per million.
    assert!((out["usage"]["cost_usd"].as_f64().unwrap() - 0.0078).abs() < 1e-12, "{out}");
    assert_eq!(
        (out["usage"]["cache_read_tokens"].as_u64(), out["usage"]["cache_write_tokens"].as_u64()),
        (Some(10000), Some(1000))
    );
    assert_eq!(out["usage"]["prompt_tokens"], 11100);
    let out = output(&run(&e, json!({ "model": "gpt-4o", "prompt": "Hi" })).await).clone();
    // 500 x $2.50 + 1,500 cached x $1.25 + 100 x $10, per million.
    assert!((out["usage"]["cost_usd"].as_f64().unwrap() - 0.004125).abs() < 1e-12, "{out}");
    // A configured cached price overrides the published ratio.
    let mut p = crate::providers::config::Price::new(2.0, 8.0);
    p.cached_input = Some(0.1);
    assert!((p.cost("my-model", 1_000_000, 1_000_000, 0, 0) - 0.1).abs() < 1e-12);
}

/// A provider that refuses connections: once its circuit opens, the calls it refuses say why
/// it opened (the connection error) before the circuit, so the root cause is not lost behind
/// `server error 503: circuit open`.
#[tokio::test]
async fn a_circuit_open_error_names_the_failure_that_opened_it() {
    let server = MockServer::start().await;
    let mut c = config(&server, Duration::from_secs(5));
    // A port nothing listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    c.providers.get_mut("openai").unwrap().base_url = format!("http://{closed}/v1");
    let e = LlmExecutor::new(c, false).with_retry(CallRetry { max_calls: 1, ..CallRetry::default() });
    for _ in 0..3 {
        failure(&run(&e, json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await);
    }
    let r = run(&e, json!({ "model": "gpt-4o-mini", "prompt": "Hi" })).await;
    let (err, _) = failure(&r);
    let cause = err.find("network error").or_else(|| err.find("error sending request")).or_else(|| err.find("connect"));
    let circuit = err.find("circuit open for provider `openai`");
    assert!(cause.is_some() && circuit.is_some() && cause < circuit, "the cause first: {err}");
}

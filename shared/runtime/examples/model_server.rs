//! A local OpenAI-compatible chat server for the I/O-bound benchmark: every
//! `POST /v1/chat/completions` is answered after a fixed latency (default 200 ms) with a short
//! completion. Prints `listening on <addr>` once bound.
//!
//!   cargo run --release -p llmo-runtime --example model_server -- [LATENCY_MS] [ADDR]

use std::time::Duration;

use axum::routing::post;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let latency = Duration::from_millis(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200));
    let addr = args.get(2).cloned().unwrap_or_else(|| "127.0.0.1:0".into());
    let app = axum::Router::new().route(
        "/v1/chat/completions",
        post(move |body: String| async move {
            tokio::time::sleep(latency).await;
            let model = serde_json::from_str::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["model"].as_str().map(str::to_string))
                .unwrap_or_default();
            let body = serde_json::json!({
                "id": "c", "object": "chat.completion", "model": model,
                "choices": [{ "index": 0, "message": { "role": "assistant", "content": "ok" }, "finish_reason": "stop" }],
                "usage": { "prompt_tokens": 8, "completion_tokens": 1, "total_tokens": 9 }
            });
            ([("content-type", "application/json")], body.to_string())
        }),
    );
    // A deep accept queue: a client opening hundreds of connections at once must not see its
    // handshakes dropped (each drop costs it a 200 ms retransmission, and the benchmark would
    // measure this server). `TcpListener::bind` asks for 1,024 at most.
    let addr: std::net::SocketAddr = addr.parse().expect("ADDR is host:port");
    let socket =
        if addr.is_ipv4() { tokio::net::TcpSocket::new_v4() } else { tokio::net::TcpSocket::new_v6() }.expect("socket");
    socket.set_reuseaddr(true).expect("SO_REUSEADDR");
    socket.bind(addr).expect("bind");
    let listener = socket.listen(4096).expect("listen");
    println!("listening on {}", listener.local_addr().expect("address"));
    axum::serve(listener, app).await.expect("serve");
}

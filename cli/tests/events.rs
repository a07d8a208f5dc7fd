//! A run's event stream over HTTP: `llmo serve` answers `GET /runs/{id}/events` as
//! server-sent events. A client sees the run's transitions in order while it runs (before its
//! end); a client that reconnects with `Last-Event-ID` gets exactly the events it missed, no
//! gap and no repeat; a malformed or another run's `Last-Event-ID` is a 400, another tenant's
//! run a 404, a stream without a token a 401; `llmo watch --api` follows the run to its end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{command, text};
use serde_json::{Value, json};

const SECRET: &str = "the-events-test-jwt-secret-of-32-bytes-or-more";

const WORKFLOW: &str = r#"apiVersion: llm-orchestrator/v1
kind: Workflow
metadata: { name: reviewed }
spec:
  tasks:
    - { id: draft, type: transform, with: { output: "a draft" } }
    - id: review
      type: wait
      depends_on: [draft]
      with: { approval: { prompt: "Publish it?" } }
    - { id: publish, type: transform, depends_on: [review], with: { output: "published: {{ tasks.draft.output }}" } }
  outputs:
    said: "{{ tasks.publish.output }}"
"#;

fn token(tenant: &str, role: &str) -> String {
    let out = command()
        .args(["token", "--tenant", tenant, "--role", role, "--sub", "tester"])
        .env("LLMO_JWT_SECRET", SECRET)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

/// A request over a fresh connection; the answer as text (head and body).
fn request(addr: &str, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&Value>) -> (u16, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let body = body.map(Value::to_string).unwrap_or_default();
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    (out.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0), out)
}

fn json_body(resp: &str) -> Value {
    serde_json::from_str(resp.split("\r\n\r\n").nth(1).unwrap_or_default()).unwrap_or_default()
}

/// One event read off a stream: `(id, event, data)`.
type Event = (String, String, Value);

/// A stream opened on `path`: reads events as they come (the response is chunked).
struct Stream {
    reader: BufReader<TcpStream>,
}

impl Stream {
    fn open(addr: &str, path: &str, token: &str, last: Option<&str>) -> Stream {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let last = last.map(|l| format!("Last-Event-ID: {l}\r\n")).unwrap_or_default();
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n{last}Connection: close\r\n\r\n"
        )
        .unwrap();
        let mut reader = BufReader::new(s);
        let mut status = String::new();
        reader.read_line(&mut status).unwrap();
        assert!(status.starts_with("HTTP/1.1 200"), "{status}");
        loop {
            let mut h = String::new();
            reader.read_line(&mut h).unwrap();
            if h == "\r\n" {
                break;
            }
            if h.to_ascii_lowercase().starts_with("content-type") {
                assert!(h.contains("text/event-stream"), "{h}");
            }
        }
        Stream { reader }
    }

    /// The next event (chunk sizes and comments skipped).
    fn next(&mut self) -> Option<Event> {
        let (mut id, mut event, mut data) = (String::new(), String::new(), String::new());
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).ok()? == 0 {
                return None;
            }
            let line = line.trim_end_matches(['\r', '\n']);
            if let Some(v) = line.strip_prefix("id: ") {
                id = v.to_string();
            } else if let Some(v) = line.strip_prefix("event: ") {
                event = v.to_string();
            } else if let Some(v) = line.strip_prefix("data: ") {
                data = v.to_string();
            } else if line.is_empty() && !event.is_empty() {
                return Some((id, event, serde_json::from_str(&data).unwrap()));
            }
        }
    }
}

fn version(e: &Event) -> u64 {
    e.0.split('-').nth(1).unwrap().parse().unwrap()
}

#[test]
fn a_run_streams_its_events_and_a_reconnect_resumes_without_gaps_or_repeats() {
    let dir = std::env::temp_dir().join(format!("llmo-events-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let state = dir.join("serve.db");
    let mut server = command()
        .args(["serve", "--state", state.to_str().unwrap(), "--addr", "127.0.0.1:0", "--workers", "2"])
        .env("LLMO_JWT_SECRET", SECRET)
        .env_remove("LLMO_AUTH")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(server.stderr.take().unwrap()).lines();
    let addr = loop {
        let l = lines.next().expect("the server says where it listens").unwrap();
        if let Some(rest) = l.strip_prefix("llmo serve: http://") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || lines.for_each(drop));
    let dev = token("acme", "developer");
    let bearer = format!("Bearer {dev}");
    let auth = [("Authorization", bearer.as_str())];
    let (code, resp) = request(&addr, "POST", "/runs", &auth, Some(&json!({"source": WORKFLOW})));
    assert_eq!(code, 201, "{resp}");
    let run = json_body(&resp)["run_id"].as_str().unwrap().to_string();
    let path = format!("/runs/{run}/events");

    // The stream shows the run's transitions as they happen: the review waits, the run has not
    // ended, and the events came in order.
    let mut s = Stream::open(&addr, &path, &dev, None);
    let mut first: Vec<Event> = Vec::new();
    while !first.iter().any(|e| e.2["tasks"]["review"] == "waiting") {
        first.push(s.next().expect("events before the run ends"));
    }
    assert!(first.iter().all(|e| e.1 == "transition"), "{first:?}");
    assert_eq!(first.iter().map(version).collect::<Vec<_>>(), (1..=first.len() as u64).collect::<Vec<_>>());
    assert_eq!(first[0].2["event"]["event"], "start");
    assert_eq!(first.last().unwrap().2["run"], "running");
    drop(s);

    // Refused: malformed and another run's ids, another tenant's caller, no token.
    let last = first.last().unwrap().0.clone();
    let bad = |id: &str| request(&addr, "GET", &path, &[("Authorization", &bearer), ("Last-Event-ID", id)], None);
    let (code, resp) = bad("not-an-id");
    assert_eq!(code, 400, "{resp}");
    let (code, resp) = bad(&format!("0000ffff-{}", &last[9..]));
    assert_eq!(code, 400, "{resp}");
    assert!(resp.contains("another run"), "{resp}");
    let (code, resp) = bad(&last.replace(&format!("-{}-", version(first.last().unwrap())), "-9999-"));
    assert_eq!(code, 400, "ahead of the run: {resp}");
    let other = format!("Bearer {}", token("globex", "admin"));
    let (code, resp) = request(&addr, "GET", &path, &[("Authorization", &other)], None);
    assert_eq!(code, 404, "another tenant's run: {resp}");
    let (code, resp) = request(&addr, "GET", &path, &[], None);
    assert_eq!(code, 401, "{resp}");

    // At most 16 streams of a tenant at once: the 17th is a 429; a closed one gives its
    // place back.
    let open: Vec<Stream> = (0..16).map(|_| Stream::open(&addr, &path, &dev, Some(&last))).collect();
    let (code, resp) = bad(&last);
    assert_eq!(code, 429, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("retry-after: 5"), "{resp}");
    drop(open);
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let mut s = TcpStream::connect(&addr).unwrap();
        write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: {bearer}\r\nLast-Event-ID: {last}\r\n\r\n")
            .unwrap();
        let mut head = [0u8; 12];
        s.read_exact(&mut head).unwrap();
        if &head == b"HTTP/1.1 200" {
            break;
        }
        assert!(Instant::now() < until, "the places of closed streams were not given back");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Approved meanwhile; the client comes back with the last id it saw: the rest, once.
    let (code, resp) =
        request(&addr, "POST", &format!("/runs/{run}/tasks/review/complete"), &auth, Some(&json!({"approved": true})));
    assert_eq!(code, 200, "{resp}");
    let mut s = Stream::open(&addr, &path, &dev, Some(&last));
    let mut rest: Vec<Event> = Vec::new();
    while rest.last().is_none_or(|e| e.1 != "end") {
        rest.push(s.next().expect("the rest, to the end"));
    }
    let end = rest.pop().unwrap();
    assert_eq!(end.2["status"], "succeeded", "{end:?}");
    assert_eq!(end.2["outputs"]["said"], "published: a draft");
    let n = first.len() as u64;
    assert_eq!(rest.iter().map(version).collect::<Vec<_>>(), (n + 1..=n + rest.len() as u64).collect::<Vec<_>>());
    assert!(rest.iter().any(|e| e.2["tasks"]["publish"] == "succeeded"), "{rest:?}");
    assert!(s.next().is_none(), "the stream ends with the run");
    // After the end: a 204 (nothing more will come; an EventSource stops reconnecting).
    let (code, resp) = bad(&end.0);
    assert_eq!(code, 204, "{resp}");

    // From the start, after the end: the same events, in one stream.
    let mut s = Stream::open(&addr, &path, &dev, None);
    let mut all = Vec::new();
    while let Some(e) = s.next() {
        all.push(e);
    }
    let joined: Vec<&Event> = first.iter().chain(&rest).chain([&end]).collect();
    assert_eq!(all.iter().collect::<Vec<_>>(), joined);

    // `llmo watch --api` follows it to the end (exit 0: it succeeded).
    let out =
        command().args(["watch", &run, "--api", &format!("http://{addr}")]).env("LLMO_TOKEN", &dev).output().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(said.contains("review → waiting") && said.contains("run succeeded"), "{said}");

    server.kill().unwrap();
    server.wait().unwrap();
    std::fs::remove_dir_all(&dir).ok();
}

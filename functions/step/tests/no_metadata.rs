//! Outside AWS a function asks the instance-metadata service for nothing: with no region or
//! credentials in its environment, `step --help` prints its usage and `step --local` fails its
//! requests, and neither opens a connection to the metadata endpoint (pointed here at a local
//! listener that counts connections; the SDK's default chain would probe it for region and
//! credentials). With `LLMO_ALLOW_IMDS=1` the same process does probe it, which shows the
//! listener would see a probe.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

/// A listener counting the connections made to it; its address.
async fn metadata() -> (String, Arc<AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let n = Arc::new(AtomicUsize::new(0));
    let seen = n.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            seen.fetch_add(1, Ordering::SeqCst);
            drop(s);
        }
    });
    (format!("http://{addr}"), n)
}

fn step(endpoint: &str, home: &std::path::Path) -> tokio::process::Command {
    let mut c = tokio::process::Command::new(env!("CARGO_BIN_EXE_step"));
    c.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("AWS_CONFIG_FILE", home.join("none"))
        .env("AWS_SHARED_CREDENTIALS_FILE", home.join("none"))
        .env("AWS_EC2_METADATA_SERVICE_ENDPOINT", endpoint)
        .env("RUST_LOG", "off")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_function_probes_the_instance_metadata_service_outside_aws() {
    let home = std::env::temp_dir().join(format!("llmo-no-imds-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let (endpoint, probes) = metadata().await;

    let out = step(&endpoint, &home).arg("--help").output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("step --local"), "the usage is printed");

    let mut local = step(&endpoint, &home).arg("--local").spawn().unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = local.kill().await;
    assert_eq!(probes.load(Ordering::SeqCst), 0, "nothing asked the metadata endpoint");

    // The listener does see a process that is allowed to ask.
    let mut allowed = step(&endpoint, &home).arg("--local").env("LLMO_ALLOW_IMDS", "1").spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while probes.load(Ordering::SeqCst) == 0 && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ = allowed.kill().await;
    assert!(probes.load(Ordering::SeqCst) > 0, "with LLMO_ALLOW_IMDS=1 the SDK's chain asks it");
    let _ = std::fs::remove_dir_all(home);
}

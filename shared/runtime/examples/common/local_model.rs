//! The local OpenAI-compatible model server for benchmarks: `model_server` (an example of
//! llmo-runtime, in Rust so that it is never the bottleneck), started from beside the running
//! example's binary and stopped when dropped.

use std::io::BufRead;

use llmo_runtime::providers::Config;

pub struct ModelServer {
    child: std::process::Child,
    /// `host:port` it listens on.
    pub addr: String,
}

impl ModelServer {
    /// Starts the server answering every chat completion after `latency_ms`
    /// (`cargo build --release -p llmo-runtime --example model_server` builds it).
    pub fn start(latency_ms: u64) -> ModelServer {
        let bin = std::env::current_exe().expect("this binary's path").with_file_name("model_server");
        let mut child = std::process::Command::new(&bin)
            .arg(latency_ms.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("{}: {e} (cargo build --release -p llmo-runtime --example model_server)", bin.display())
            });
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().expect("its stdout")).read_line(&mut line).expect("its address");
        let addr = line.trim().strip_prefix("listening on ").expect("the server prints its address").to_string();
        ModelServer { child, addr }
    }

    /// A providers' config whose `local` provider (OpenAI wire format, no prices) is this server.
    pub fn config(&self) -> Config {
        Config::from_yaml(
            "bench.yaml",
            &format!("providers:\n  local: {{ kind: openai, base_url: 'http://{}/v1', free: true }}\n", self.addr),
        )
        .expect("the providers' config")
    }
}

impl Drop for ModelServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! Lambda functions on this machine: `cargo lambda watch` serving the Invoke API and the
//! Runtime API on a loopback port, with function binaries (built with `lambda_runtime`)
//! polling it as they would Lambda's. Point `LLMO_LAMBDA_ENDPOINT` at [`LocalFunctions::endpoint`]
//! and `type: function` tasks invoke them. The tests use it with the test function
//! (`examples/test_function.rs`); `cargo lambda watch` is installed by
//! `localstack/stack.sh install` (in `.venv/tools/bin`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

/// `cargo lambda watch` and the function processes behind it; stopped when dropped.
pub struct LocalFunctions {
    port: u16,
    project: PathBuf,
    children: Vec<Child>,
}

/// The `cargo-lambda` binary: the project's venv first, then `PATH`.
pub fn cargo_lambda(repo_root: &Path) -> Option<PathBuf> {
    let venv = repo_root.join(".venv/tools/bin/cargo-lambda");
    if venv.exists() {
        return Some(venv);
    }
    std::env::var_os("PATH")?.to_str()?.split(':').map(|d| PathBuf::from(d).join("cargo-lambda")).find(|p| p.exists())
}

impl LocalFunctions {
    /// Starts `cargo_lambda watch` on a free loopback port and one `binary` process per name in
    /// `names` (each its own function, one invocation at a time, as a Lambda instance).
    pub async fn start(cargo_lambda: &Path, binary: &Path, names: &[&str]) -> Result<LocalFunctions, String> {
        if !binary.exists() {
            return Err(format!("{} does not exist (build it first)", binary.display()));
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port: {e}"))?
            .port();
        // watch serves only functions its project has as binaries: a project of these names.
        let project = std::env::temp_dir().join(format!("llmo-functions-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&project).map_err(|e| e.to_string())?;
        let bins: String = names.iter().map(|n| format!("[[bin]]\nname = \"{n}\"\npath = \"main.rs\"\n")).collect();
        let manifest = format!(
            "[package]\nname = \"functions\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n\n{bins}"
        );
        std::fs::write(project.join("Cargo.toml"), manifest).map_err(|e| e.to_string())?;
        std::fs::write(project.join("main.rs"), "fn main() {}\n").map_err(|e| e.to_string())?;
        let watch = Command::new(cargo_lambda)
            .args(["lambda", "watch", "--only-lambda-apis", "--invoke-address", "127.0.0.1", "--invoke-port"])
            .arg(port.to_string())
            .current_dir(&project)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("{}: {e}", cargo_lambda.display()))?;
        let mut me = LocalFunctions { port, project, children: vec![watch] };
        let up = async {
            while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(60), up)
            .await
            .map_err(|_| "cargo lambda watch did not listen within 60 s".to_string())?;
        for name in names {
            let child = Command::new(binary)
                .env("AWS_LAMBDA_RUNTIME_API", format!("http://127.0.0.1:{port}/.rt/{name}"))
                .env("AWS_LAMBDA_FUNCTION_NAME", name)
                .env("AWS_LAMBDA_FUNCTION_VERSION", "1")
                .env("AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "128")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("{}: {e}", binary.display()))?;
            me.children.push(child);
        }
        Ok(me)
    }

    /// The Invoke API's address (`LLMO_LAMBDA_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for LocalFunctions {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.project);
    }
}

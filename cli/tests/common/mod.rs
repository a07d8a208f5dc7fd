//! What the CLI's integration tests share.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// `llmo` with no provider keys or config from the environment of whoever runs the tests.
pub fn command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_llmo"));
    c.current_dir(root()).env("NO_COLOR", "1");
    for k in [
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "ANTHROPIC_API_KEY",
        "ANTHROPIC_BASE_URL",
        "LLMO_CONFIG",
        "LLMO_DEFAULT_PROVIDER",
    ] {
        c.env_remove(k);
    }
    c
}

pub fn llmo(args: &[&str]) -> Output {
    command().args(args).output().expect("llmo runs")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

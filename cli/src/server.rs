//! `llmo serve`: the REST API of the deployed system on this machine, on one SQLite file, with
//! step workers, the sweeper and the registered workflows' schedules in the process
//! (`llmo_api::local`, `llmo_api::schedules`).
//!
//! Authentication: with `LLMO_AUTH` set, as the `api` function's local mode (`hs256` with
//! `LLMO_JWT_SECRET`, or `jwks`). Without it, development tokens: HS256 with
//! `LLMO_JWT_SECRET`, else with a random secret kept beside the state file
//! (`<state>.jwt-secret`, readable only by its owner, so tokens outlive a restart); the server
//! prints an admin token of tenant `local` at start.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use llmo_api::auth::Auth;
use llmo_api::local::{Local, Settings};

use crate::run::Exec;

pub struct Options {
    pub state: PathBuf,
    pub addr: String,
    pub workers: usize,
    pub exec: Exec,
    /// Tenant and lifetime of the printed development token.
    pub tenant: String,
    pub token_days: u64,
}

/// The development secret: `LLMO_JWT_SECRET`, else the one kept beside `state` (made once).
/// The secret answer links and callbacks' task tokens are keyed from, for runs kept in
/// `state`: `LLMO_LINK_SECRET`, else derived from the state file's development secret (so
/// `llmo run --state F`, `llmo callback --state F` and `llmo serve --state F` agree).
pub(crate) fn local_link_secret(state: &Path) -> Result<Vec<u8>> {
    match std::env::var("LLMO_LINK_SECRET").ok().filter(|s| !s.is_empty()) {
        Some(s) if s.len() < 32 => bail!("LLMO_LINK_SECRET must be at least 32 bytes"),
        Some(s) => Ok(s.into_bytes()),
        None => Ok(format!("links:{}", dev_secret(state)?.0).into_bytes()),
    }
}

fn dev_secret(state: &Path) -> Result<(String, Option<PathBuf>)> {
    if let Some(s) = std::env::var("LLMO_JWT_SECRET").ok().filter(|s| !s.is_empty()) {
        return Ok((s, None));
    }
    let mut p = state.as_os_str().to_owned();
    p.push(".jwt-secret");
    let path = PathBuf::from(p);
    match std::fs::read_to_string(&path) {
        Ok(s) if s.trim().len() >= 32 => return Ok((s.trim().to_string(), Some(path))),
        Ok(_) => bail!("{}: a development secret of at least 32 characters", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    }
    let secret = crate::serve::token()? + &crate::serve::token()?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts.open(&path).with_context(|| format!("creating {}", path.display()))?;
    std::io::Write::write_all(&mut f, secret.as_bytes()).with_context(|| format!("writing {}", path.display()))?;
    Ok((secret, Some(path)))
}

pub fn serve(o: Options) -> Result<ExitCode> {
    let addr: std::net::SocketAddr =
        o.addr.parse().with_context(|| format!("--addr {}: an address like 127.0.0.1:8080", o.addr))?;
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    let config = crate::run::config(&o.exec)?;
    // Scripted answers for every workflow served (not checked against one workflow).
    let fixtures = match &o.exec.fixtures {
        Some(p) => llmo_runtime::fixtures::Fixtures::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => Default::default(),
    };
    let mut executors = crate::run::registry_with(&o.exec, fixtures)?;
    let mut settings = Settings::new(o.state.clone());
    settings.durability = o.exec.durability;
    settings.workers = o.workers.max(1);
    let env_auth = std::env::var("LLMO_AUTH").ok().filter(|v| !v.is_empty());
    if env_auth.is_none() && !addr.ip().is_loopback() {
        bail!(
            "--addr {addr} is reachable from other machines, and the development tokens' secret sits beside the state file: \
             set LLMO_AUTH (hs256 with your own LLMO_JWT_SECRET, or jwks) to serve beyond this machine"
        );
    }
    let (auth, dev) = match env_auth {
        Some(_) => (rt.block_on(Auth::from_env(false)).map_err(anyhow::Error::msg)?, None),
        None => {
            let (secret, file) = dev_secret(&o.state)?;
            (Auth::hs256(secret.as_bytes(), llmo_api::auth::DEFAULT_AUDIENCE), Some((secret, file)))
        }
    };
    if auth.is_api_gateway() {
        bail!("LLMO_AUTH=apigateway trusts API Gateway's authorizer, which `llmo serve` does not have");
    }
    // Approvals' single-use links: `LLMO_LINK_SECRET`, else (development) derived from the
    // development secret.
    let links = match std::env::var("LLMO_LINK_SECRET").ok().filter(|s| !s.is_empty()) {
        Some(s) if s.len() < 32 => bail!("LLMO_LINK_SECRET must be at least 32 bytes"),
        Some(s) => Some(s.into_bytes()),
        None => dev.as_ref().map(|(s, _)| format!("links:{s}").into_bytes()),
    };
    let metrics = llmo_runtime::meter::prometheus();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("--addr {addr}: binding (is another server on it?)"))?;
    let bound = listener.local_addr()?;
    // Callbacks' task tokens are keyed from the link secret and answered here
    // (`LLMO_PUBLIC_URL` when the server is reached through another address).
    if let Some(secret) = &links {
        let public = std::env::var("LLMO_PUBLIC_URL").ok().filter(|v| !v.is_empty());
        llmo_runtime::callbacks::Callbacks::new(secret, Some(public.unwrap_or_else(|| format!("http://{bound}"))))
            .install(&mut executors);
    }
    let mut local = rt
        .block_on(Local::open(settings, executors, config, o.exec.mock))
        .with_context(|| format!("opening {}", o.state.display()))?;
    local.configure(|api| {
        api.auth = Some(auth);
        api.links = links;
        api.metrics = metrics;
    });
    {
        let _rt = rt.enter();
        local.start();
    }
    let api = local.api.clone();
    let schedules =
        rt.block_on(llmo_api::schedules::Schedules::start(api.clone(), local.store.clone(), local.stopping()));
    eprintln!("llmo serve: http://{bound} (state {}; {} step workers)", o.state.display(), o.workers.max(1));
    if let Some((secret, file)) = &dev {
        let token = crate::remote::token(
            secret,
            "local-admin",
            &o.tenant,
            &["admin".into(), "operator".into()],
            o.token_days * 86_400,
            llmo_api::auth::DEFAULT_AUDIENCE,
            None,
        )?;
        match file {
            Some(f) => eprintln!("development tokens are signed with the secret in {}", f.display()),
            None => eprintln!("development tokens are signed with $LLMO_JWT_SECRET"),
        }
        eprintln!("an admin token of tenant `{}`, valid {} days:", o.tenant, o.token_days);
        eprintln!("  export LLMO_API_URL=http://{bound} LLMO_TOKEN={token}");
        eprintln!("runs: http://{bound}/ui#token={token}");
    }
    let limits = llmo_api::server::ServeLimits::allowing(&std::env::var("LLMO_ALLOWED_HOSTS").unwrap_or_default());
    let gate = api.clone();
    let admit = move |parts| {
        let api = gate.clone();
        async move { api.admit(parts).await }
    };
    let streamer = api.clone();
    let handler = move |req| {
        let api = api.clone();
        async move { api.handle(req).await }
    };
    let stream = move |req: llmo_api::Request| {
        let api = streamer.clone();
        async move { api.open_events(&req).await }
    };
    let stopped = async {
        let _ = tokio::signal::ctrl_c().await;
        eprintln!("llmo serve: stopping (steps in flight get 30 s to finish; Ctrl-C again to stop at once)");
    };
    rt.block_on(async {
        tokio::spawn(async {
            // A second Ctrl-C stops at once: what is in flight runs again at the next start.
            let _ = tokio::signal::ctrl_c().await;
            let _ = tokio::signal::ctrl_c().await;
            eprintln!("llmo serve: stopped; steps in flight run again at the next start");
            std::process::exit(130);
        });
        llmo_api::server::serve_on(listener, limits, admit, handler, stream, stopped).await
    })?;
    rt.block_on(async {
        schedules.stop().await;
        local.shutdown(Duration::from_secs(30)).await;
    });
    eprintln!("llmo serve: stopped");
    Ok(ExitCode::SUCCESS)
}

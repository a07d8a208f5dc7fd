//! Callbacks: a `function` or `http` task with a `callback` setting sends a single-use task
//! token with its call, then waits (holding no compute) until the token's holder answers
//! (`POST /callbacks/{token}`, `llmo callback`), a heartbeat is missed, or its timeout passes.
//! Like Step Functions' `.waitForTaskToken`.
//!
//! The pure part: the setting, its bounds, and the token's claims. Signing and checking
//! tokens is the runtime's (`llmo_runtime::callbacks`); the wait itself is the engine's
//! (`engine::machine`: the send's success moves the unit to `Waiting`, an answer or a timeout
//! ends it, once).

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::model::Duration;

/// `callback` on a `function` or `http` task: after its call succeeds, the task waits for the
/// answer to the task token it sent (the `function`'s event carries it as `llmo.callback`,
/// an `http` request as the `Llmo-Callback-Token` and `Llmo-Callback-Url` headers).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CallbackWith {
    /// The longest the task waits for its answer after its call succeeded (default `24h`,
    /// at most `365d`). A timeout fails the attempt, and `retry` applies: a new attempt sends
    /// again, with a new token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// The attempt fails (and `retry` applies) when no heartbeat
    /// (`POST /callbacks/{token}/heartbeat`) came for this long, counted from the call's
    /// success and then from each heartbeat. At least `1s`, at most `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat: Option<Duration>,
}

/// The default of `callback.timeout`.
pub const DEFAULT_TIMEOUT_MS: u64 = 24 * 3_600_000;
/// The longest `callback.timeout`.
pub const MAX_TIMEOUT_MS: u64 = 365 * 86_400_000;
/// The shortest `callback.heartbeat`.
pub const MIN_HEARTBEAT_MS: u64 = 1_000;
/// The largest output (or error) an answer may carry, as JSON.
pub const ANSWER_BYTES: usize = 256 * 1024;

impl CallbackWith {
    pub fn timeout_ms(&self) -> u64 {
        self.timeout.map_or(DEFAULT_TIMEOUT_MS, |d| d.0.as_millis() as u64)
    }

    pub fn heartbeat_ms(&self) -> Option<u64> {
        self.heartbeat.map(|d| d.0.as_millis() as u64)
    }

    /// The setting's bounds: `(field, message)` for the first it breaks.
    pub fn check(&self) -> Result<(), (&'static str, String)> {
        let t = self.timeout_ms();
        if t == 0 || t > MAX_TIMEOUT_MS {
            return Err(("timeout", format!("`timeout` is more than 0 and at most 365d (got {t} ms)")));
        }
        if let Some(h) = self.heartbeat_ms() {
            if h < MIN_HEARTBEAT_MS {
                return Err(("heartbeat", format!("`heartbeat` is at least 1s (got {h} ms)")));
            }
            if h > t {
                return Err(("heartbeat", "`heartbeat` is at most the callback's `timeout`".to_string()));
            }
        }
        Ok(())
    }
}

/// What a signed token naming one attempt says: a callback's task token (audience
/// [`AUDIENCE`]) or an approval's answer link (audience `llmo-answer`). It is useless once
/// that attempt stopped waiting, whatever its `exp`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AttemptClaims {
    pub aud: String,
    /// Seconds since the epoch: the attempt's timeout and some slack.
    pub exp: u64,
    /// The run's tenant (`-` for a run without one).
    pub tenant: String,
    pub run: String,
    /// The task's id.
    pub task: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub item: Option<u32>,
    pub attempt: u32,
}

/// The claims of a callback's task token.
pub type CallbackClaims = AttemptClaims;

/// The audience of task tokens (answer links have another: neither is taken for the other).
pub const AUDIENCE: &str = "llmo-callback";

#[cfg(test)]
mod tests {
    use super::*;

    fn cb(timeout: Option<&str>, heartbeat: Option<&str>) -> CallbackWith {
        CallbackWith {
            timeout: timeout.map(|s| Duration::parse(s).unwrap()),
            heartbeat: heartbeat.map(|s| Duration::parse(s).unwrap()),
        }
    }

    #[test]
    fn bounds() {
        assert_eq!(cb(None, None).timeout_ms(), DEFAULT_TIMEOUT_MS);
        assert!(cb(Some("1h"), Some("1m")).check().is_ok());
        assert!(cb(None, Some("24h")).check().is_ok());
        assert_eq!(cb(Some("366d"), None).check().unwrap_err().0, "timeout");
        assert_eq!(cb(Some("0s"), None).check().unwrap_err().0, "timeout");
        assert_eq!(cb(Some("1h"), Some("500ms")).check().unwrap_err().0, "heartbeat");
        assert_eq!(cb(Some("1m"), Some("2m")).check().unwrap_err().0, "heartbeat");
    }
}

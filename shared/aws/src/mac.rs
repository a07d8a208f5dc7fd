//! Queue messages the functions trust: every body our functions send carries an HMAC-SHA256
//! of itself, which every function checks before acting on it.
//!
//! A step message is a run id and an event; without this, any principal allowed to send to
//! the step queue (a misconfigured role, a compromised neighbour) could approve an approval
//! restricted to one person, inject task outputs, redrive with unchecked inputs, or name any
//! run in an unreadable message so that the dead-letter handler fails it. With it, a message
//! is acted on only when it was made by a holder of the key: the deployment's functions,
//! which record answers and redrives only through the API's checks.
//!
//! Wire form: `s1.<key id>.<hex HMAC-SHA256 of BODY>.<BODY>`, where BODY is the message as it
//! was before (the versioned envelope, or a claim check whose S3 object is itself signed).
//! A message that fails the check is *forged*: logged, counted
//! (`llmo_forged_messages_total`) and deleted, never dead-lettered (the dead-letter handler
//! would fail the run it names). A message that passes and still does not decode (a newer
//! producer's) goes the dead-letter way as before.
//!
//! Keys come from the secret source, read by each function's main ([`KeyRing::load`]): the
//! Secrets Manager secret `LLMO_QUEUE_KEY_ARN` names (deployed: its `AWSCURRENT` version
//! signs; `AWSCURRENT`, `AWSPENDING` and `AWSPREVIOUS` verify), else `LLMO_QUEUE_KEYS`
//! (comma-separated, the first signs; local stacks). With neither, messages are neither
//! signed nor checked (a local stack without a key; the template always sets one).
//!
//! Rotation loses no message: a message signed with a key this container does not know makes
//! it read the secret again (at most once a minute) before refusing it, and the previous key
//! keeps verifying what was signed before the rotation. To rotate: `aws secretsmanager
//! put-secret-value --secret-id ARN --secret-string NEW` (the old value becomes
//! `AWSPREVIOUS`).

use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Shortest key accepted (bytes).
pub const MIN_KEY_BYTES: usize = 32;

#[derive(Clone)]
struct Key {
    id: String,
    secret: Vec<u8>,
}

impl Key {
    fn new(secret: Vec<u8>) -> Self {
        // The id names the key without revealing it: the first 8 hex digits of its hash.
        let id: String = Sha256::digest(&secret).iter().take(4).map(|b| format!("{b:02x}")).collect();
        Key { id, secret }
    }

    fn mac(&self, body: &str) -> HmacSha256 {
        let mut m = HmacSha256::new_from_slice(&self.secret).expect("HMAC takes any key length");
        m.update(body.as_bytes());
        m
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("forged or corrupted message: {0}")]
pub struct Forged(pub String);

/// The keys messages are signed and checked with.
#[derive(Clone)]
pub struct Keys {
    /// The first signs; all verify.
    keys: Vec<Key>,
}

impl Keys {
    /// `secrets`: the signing key first, then older ones still accepted. Each at least
    /// [`MIN_KEY_BYTES`].
    pub fn new(secrets: Vec<Vec<u8>>) -> Result<Self, String> {
        if secrets.is_empty() {
            return Err("no queue key".into());
        }
        if secrets.iter().any(|s| s.len() < MIN_KEY_BYTES) {
            return Err(format!("a queue key must be at least {MIN_KEY_BYTES} bytes"));
        }
        Ok(Keys { keys: secrets.into_iter().map(Key::new).collect() })
    }

    /// The signing key's id.
    pub fn signing_id(&self) -> &str {
        &self.keys[0].id
    }

    /// `body`, signed with the signing key.
    pub fn sign(&self, body: &str) -> String {
        let k = &self.keys[0];
        let tag: String = k.mac(body).finalize().into_bytes().iter().map(|b| format!("{b:02x}")).collect();
        format!("s1.{}.{tag}.{body}", k.id)
    }

    /// The body a signed message carries, if one of the keys signed it.
    pub fn verify<'a>(&self, signed: &'a str) -> Result<&'a str, Forged> {
        let mut parts = signed.splitn(4, '.');
        let (Some("s1"), Some(id), Some(tag), Some(body)) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(Forged("the message is not signed".into()));
        };
        let key = self.keys.iter().find(|k| k.id == id).ok_or_else(|| Forged(format!("unknown key `{id}`")))?;
        let tag = (0..tag.len())
            .step_by(2)
            .map(|i| tag.get(i..i + 2).and_then(|h| u8::from_str_radix(h, 16).ok()))
            .collect::<Option<Vec<u8>>>()
            .filter(|t| t.len() == 32)
            .ok_or_else(|| Forged("malformed signature".into()))?;
        // Constant-time comparison.
        key.mac(body).verify_slice(&tag).map_err(|_| Forged("the signature does not match".into()))?;
        Ok(body)
    }
}

/// A deployment's keys, read again from the secret when a message names a key this
/// container does not know (a rotation).
pub struct KeyRing {
    keys: RwLock<Keys>,
    /// Where they come from, when they can be read again.
    source: Option<(aws_sdk_secretsmanager::Client, String)>,
    read_at: Mutex<Instant>,
}

/// The shortest time between two reads of the secret.
const REREAD: Duration = Duration::from_secs(60);

impl KeyRing {
    /// Fixed keys (no secret to read again).
    pub fn fixed(keys: Keys) -> Self {
        KeyRing { keys: RwLock::new(keys), source: None, read_at: Mutex::new(Instant::now()) }
    }

    /// The keys of this deployment (see the module's documentation); `None`: none set.
    pub async fn load(secretsmanager: &aws_sdk_secretsmanager::Client) -> Result<Option<Self>, String> {
        if let Ok(arn) = std::env::var("LLMO_QUEUE_KEY_ARN")
            && !arn.is_empty()
        {
            let keys = read(secretsmanager, &arn).await?;
            return Ok(Some(KeyRing {
                keys: RwLock::new(keys),
                source: Some((secretsmanager.clone(), arn)),
                read_at: Mutex::new(Instant::now()),
            }));
        }
        match std::env::var("LLMO_QUEUE_KEYS").ok().filter(|v| !v.is_empty()) {
            Some(list) => Keys::new(list.split(',').map(|k| k.trim().as_bytes().to_vec()).collect())
                .map(|k| Some(Self::fixed(k)))
                .map_err(|e| format!("LLMO_QUEUE_KEYS: {e}")),
            None => Ok(None),
        }
    }

    pub fn sign(&self, body: &str) -> String {
        self.keys.read().expect("keys").sign(body)
    }

    /// Whether `body` is signed with one of the keys as they are now (no reading again).
    pub fn is_signed(&self, body: &str) -> bool {
        self.keys.read().expect("keys").verify(body).is_ok()
    }

    /// The body `signed` carries; a key not known here makes the ring read the secret again
    /// first (at most once per [`REREAD`]).
    pub async fn verify(&self, signed: &str) -> Result<String, Forged> {
        let first = self.keys.read().expect("keys").verify(signed).map(str::to_string);
        match first {
            Err(Forged(why)) if why.starts_with("unknown key") && self.source.is_some() => {
                let due = {
                    let mut at = self.read_at.lock().expect("read_at");
                    let due = at.elapsed() >= REREAD;
                    if due {
                        *at = Instant::now();
                    }
                    due
                };
                if due && let Some((client, arn)) = &self.source {
                    match read(client, arn).await {
                        Ok(keys) => *self.keys.write().expect("keys") = keys,
                        Err(e) => tracing::warn!(error = %e, "the queue keys were not read again"),
                    }
                }
                self.keys.read().expect("keys").verify(signed).map(str::to_string)
            }
            other => other,
        }
    }
}

/// The secret's current key (signs) and its pending and previous ones (verify).
async fn read(client: &aws_sdk_secretsmanager::Client, arn: &str) -> Result<Keys, String> {
    let mut secrets = Vec::new();
    for stage in ["AWSCURRENT", "AWSPENDING", "AWSPREVIOUS"] {
        match client.get_secret_value().secret_id(arn).version_stage(stage).send().await {
            Ok(out) => secrets.push(out.secret_string().unwrap_or_default().as_bytes().to_vec()),
            // Only the current version always exists.
            Err(e)
                if stage != "AWSCURRENT"
                    && e.as_service_error().is_some_and(|e| e.is_resource_not_found_exception()) => {}
            Err(e) => {
                return Err(format!(
                    "reading the queue key ({stage}): {}",
                    aws_sdk_secretsmanager::error::DisplayErrorContext(e)
                ));
            }
        }
    }
    Keys::new(secrets)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(c: char) -> Vec<u8> {
        c.to_string().repeat(32).into_bytes()
    }

    #[test]
    fn a_signed_body_verifies_and_any_change_does_not() {
        let keys = Keys::new(vec![key('a')]).unwrap();
        let body = r#"{"v":1,"kind":"event","run_id":"r","event":{"type":"start"}}"#;
        let signed = keys.sign(body);
        assert_eq!(keys.verify(&signed), Ok(body));
        // Another run, another body: the tag no longer matches.
        let tampered = signed.replace("\"r\"", "\"other\"");
        assert_eq!(keys.verify(&tampered), Err(Forged("the signature does not match".into())));
        assert!(keys.verify(body).is_err(), "unsigned");
        // Signed with a key this deployment does not hold.
        let theirs = Keys::new(vec![key('z')]).unwrap().sign(body);
        assert!(keys.verify(&theirs).unwrap_err().0.starts_with("unknown key"));
        let short = Keys::new(vec![b"short".to_vec()]);
        assert!(short.is_err());
    }

    /// A rotation: messages signed with the previous key (in flight when the key changed)
    /// still verify; new ones are signed with the new key.
    #[test]
    fn the_previous_key_still_verifies_after_a_rotation() {
        let old = Keys::new(vec![key('a')]).unwrap();
        let rotated = Keys::new(vec![key('b'), key('a')]).unwrap();
        let in_flight = old.sign("x");
        assert_eq!(rotated.verify(&in_flight), Ok("x"));
        let new = rotated.sign("y");
        assert!(old.verify(&new).is_err(), "signed with the new key");
        assert_eq!(rotated.verify(&new), Ok("y"));
    }
}

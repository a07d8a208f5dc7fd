//! Who is calling the API: bearer JWTs, roles and tenants.
//!
//! Deployed, API Gateway's JWT authorizer verifies the token (issuer, audience, signature,
//! expiry) and the handler reads the verified claims from the request context
//! ([`Auth::ApiGateway`]). Locally, the API verifies the same tokens itself with the
//! `jsonwebtoken` crate ([`Auth::Verify`]): HS256 with a shared secret for development, RS256 or
//! ES256 against a JWKS (a file, or a URL fetched at start and again for an unknown key id).
//!
//! Claims: `sub` (who), the tenant claim (`tenant` by default: 1-64 of `A-Za-z0-9_.-`), the
//! roles claim (`roles` by default: a list, or a space- or comma-separated string). Roles:
//! `viewer` reads, `developer` also registers workflows and starts and cancels runs, `admin`
//! also reads the audit trail; `operator` together with `admin` may act on another tenant's
//! runs (`?tenant=`). A caller with none of these roles is refused.
//!
//! | variable | meaning |
//! | --- | --- |
//! | `LLMO_AUTH` | `apigateway` (trust the authorizer's claims; the default under Lambda), `hs256`, `jwks` |
//! | `LLMO_JWT_SECRET` | the HS256 secret (`hs256`), at least 32 bytes |
//! | `LLMO_JWKS` | a JWKS file path or `https://` URL (`jwks`) |
//! | `LLMO_JWT_AUDIENCE` | the audience tokens must carry (default `llmo-api`) |
//! | `LLMO_JWT_ISSUER` | the issuer tokens must carry (unchecked when unset with `hs256`; required with `jwks`) |
//! | `LLMO_TENANT_CLAIM`, `LLMO_ROLES_CLAIM` | claim names (default `tenant`, `roles`) |

use std::collections::HashMap;
use std::sync::RwLock;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde_json::{Map, Value};

use crate::Request;

/// The claims API Gateway's JWT authorizer verified, as the Lambda glue puts them in a
/// request's extensions (`llmo_aws::api::request`); [`Auth::ApiGateway`] reads them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthorizerClaims(pub HashMap<String, String>);

/// The default audience of local tokens.
pub const DEFAULT_AUDIENCE: &str = "llmo-api";

/// What a caller may do, in increasing order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Viewer,
    Developer,
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Developer => "developer",
            Role::Admin => "admin",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    pub tenant: String,
    /// The highest role the token grants.
    pub role: Role,
    /// An admin who may act on other tenants' runs.
    pub operator: bool,
}

impl Principal {
    pub fn may(&self, need: Role) -> bool {
        self.role >= need
    }

    /// The tenant a request acts on: its own, or (operators only) the one it names.
    pub fn acting_tenant<'a>(&'a self, asked: Option<&'a str>) -> Result<&'a str, AuthError> {
        match asked {
            None => Ok(&self.tenant),
            Some(t) if t == self.tenant => Ok(&self.tenant),
            Some(t) if self.operator && valid_tenant(t) => Ok(t),
            Some(t) if self.operator => {
                // Checked as a token's tenant is: it is spliced into every key of the tenant.
                Err(AuthError::BadTenant(format!("`?tenant=` is not a tenant name (1-64 of A-Za-z0-9_.-): `{t}`")))
            }
            Some(_) => Err(AuthError::Forbidden("only an operator may act on another tenant".into())),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// 401: no credentials, or credentials that do not verify.
    #[error("{0}")]
    Unauthenticated(String),
    /// 403: a verified caller without the role a route needs.
    #[error("{0}")]
    Forbidden(String),
    /// 400: an operator named a tenant that cannot be one.
    #[error("{0}")]
    BadTenant(String),
}

/// Claim names.
#[derive(Debug, Clone)]
pub struct Claims {
    pub tenant: String,
    pub roles: String,
}

impl Default for Claims {
    fn default() -> Self {
        Claims { tenant: "tenant".into(), roles: "roles".into() }
    }
}

/// Keys that verify tokens locally.
pub enum Keys {
    Hs256(DecodingKey),
    Jwks { set: RwLock<JwkSet>, url: Option<String>, fetched: RwLock<Instant> },
}

/// How the API authenticates.
pub enum Auth {
    /// Behind API Gateway's JWT authorizer: the verified claims are in the request context.
    ApiGateway { claims: Claims },
    /// The API verifies tokens itself (local mode).
    Verify { keys: Keys, audience: String, issuer: Option<String>, claims: Claims },
}

impl Auth {
    /// An HS256 verifier (development and tests).
    pub fn hs256(secret: &[u8], audience: &str) -> Self {
        Auth::Verify {
            keys: Keys::Hs256(DecodingKey::from_secret(secret)),
            audience: audience.into(),
            issuer: None,
            claims: Claims::default(),
        }
    }

    /// From the environment (see the module's table); `in_lambda` picks the default mode.
    pub async fn from_env(in_lambda: bool) -> Result<Self, String> {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let claims = Claims {
            tenant: var("LLMO_TENANT_CLAIM").unwrap_or_else(|| "tenant".into()),
            roles: var("LLMO_ROLES_CLAIM").unwrap_or_else(|| "roles".into()),
        };
        let audience = var("LLMO_JWT_AUDIENCE").unwrap_or_else(|| DEFAULT_AUDIENCE.into());
        let issuer = var("LLMO_JWT_ISSUER");
        let mode = var("LLMO_AUTH").unwrap_or_else(|| {
            if in_lambda {
                "apigateway".into()
            } else if var("LLMO_JWKS").is_some() {
                "jwks".into()
            } else {
                "hs256".into()
            }
        });
        match mode.as_str() {
            "apigateway" => Ok(Auth::ApiGateway { claims }),
            "hs256" => {
                let secret = var("LLMO_JWT_SECRET").ok_or(
                    "LLMO_JWT_SECRET is not set: the API verifies HS256 tokens with it (or set LLMO_JWKS for RS256/ES256)",
                )?;
                if secret.len() < 32 {
                    return Err("LLMO_JWT_SECRET must be at least 32 bytes".into());
                }
                Ok(Auth::Verify {
                    keys: Keys::Hs256(DecodingKey::from_secret(secret.as_bytes())),
                    audience,
                    issuer,
                    claims,
                })
            }
            "jwks" => {
                let src = var("LLMO_JWKS").ok_or("LLMO_JWKS (a JWKS file or URL) is not set")?;
                let issuer = issuer.ok_or("LLMO_JWT_ISSUER is required with LLMO_JWKS")?;
                Self::jwks(&src, &issuer, &audience, claims).await
            }
            other => Err(format!("LLMO_AUTH={other}: expected apigateway, hs256 or jwks")),
        }
    }

    /// A verifier of RS256/ES256 tokens against a JWKS: a file, or an `http(s)://` URL (fetched
    /// now, and again, at most once a minute, when a token names a key it does not hold).
    pub async fn jwks(source: &str, issuer: &str, audience: &str, claims: Claims) -> Result<Self, String> {
        if source.starts_with("http://") {
            // Keys fetched in clear could be swapped on the way: only a local test server.
            let url = reqwest::Url::parse(source).ok();
            let host = url.as_ref().and_then(|u| u.host_str()).unwrap_or_default();
            let ip = host.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>();
            let loopback = host == "localhost" || ip.is_ok_and(|ip| ip.is_loopback());
            if !loopback {
                return Err(format!("LLMO_JWKS {source}: keys are fetched over https:// only (http:// for loopback)"));
            }
        }
        let (set, url) = if source.starts_with("https://") || source.starts_with("http://") {
            (fetch_jwks(source).await?, Some(source.to_string()))
        } else {
            let text = std::fs::read_to_string(source).map_err(|e| format!("LLMO_JWKS {source}: {e}"))?;
            (serde_json::from_str(&text).map_err(|e| format!("LLMO_JWKS {source}: not a JWKS: {e}"))?, None)
        };
        Ok(Auth::Verify {
            keys: Keys::Jwks { set: RwLock::new(set), url, fetched: RwLock::new(Instant::now()) },
            audience: audience.into(),
            issuer: Some(issuer.into()),
            claims,
        })
    }

    /// Whether requests are verified by API Gateway (only valid under Lambda).
    pub fn is_api_gateway(&self) -> bool {
        matches!(self, Auth::ApiGateway { .. })
    }

    /// The caller of `req`.
    pub async fn authenticate(&self, req: &Request) -> Result<Principal, AuthError> {
        match self {
            Auth::ApiGateway { claims } => {
                let Some(jwt) = req.extensions().get::<AuthorizerClaims>() else {
                    return Err(AuthError::Unauthenticated(
                        "no verified token (the API's JWT authorizer is missing)".into(),
                    ));
                };
                let map: Map<String, Value> =
                    jwt.0.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
                principal(&map, claims)
            }
            Auth::Verify { keys, audience, issuer, claims } => {
                let token = bearer(req)?;
                let header = jsonwebtoken::decode_header(token)
                    .map_err(|e| AuthError::Unauthenticated(format!("the bearer token is not a JWT: {e}")))?;
                let (key, alg) = match keys {
                    Keys::Hs256(k) => (k.clone(), Algorithm::HS256),
                    Keys::Jwks { .. } => self.jwk_key(keys, header.kid.as_deref(), header.alg).await?,
                };
                if header.alg != alg {
                    return Err(AuthError::Unauthenticated(format!(
                        "token algorithm {:?} is not accepted",
                        header.alg
                    )));
                }
                let mut v = Validation::new(alg);
                v.leeway = 30;
                v.validate_nbf = true;
                v.set_audience(&[audience]);
                if let Some(iss) = issuer {
                    v.set_issuer(&[iss]);
                }
                v.set_required_spec_claims(&["exp", "aud", "sub"]);
                let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key, &v)
                    .map_err(|e| AuthError::Unauthenticated(format!("the token does not verify: {e}")))?;
                if issuer.is_none() && data.claims.contains_key("iss") {
                    // Issued by someone this API was not told to trust.
                    return Err(AuthError::Unauthenticated(
                        "the token names an issuer and this API is configured with none (LLMO_JWT_ISSUER)".into(),
                    ));
                }
                principal(&data.claims, claims)
            }
        }
    }

    async fn jwk_key(
        &self,
        keys: &Keys,
        kid: Option<&str>,
        alg: Algorithm,
    ) -> Result<(DecodingKey, Algorithm), AuthError> {
        let Keys::Jwks { set, url, fetched } = keys else { unreachable!("called for JWKS keys") };
        if !matches!(alg, Algorithm::RS256 | Algorithm::ES256) {
            return Err(AuthError::Unauthenticated(format!("token algorithm {alg:?} is not accepted (RS256, ES256)")));
        }
        let kid = kid.ok_or_else(|| AuthError::Unauthenticated("the token names no key (`kid`)".into()))?;
        let found = set.read().expect("jwks lock").find(kid).cloned();
        let jwk = match found {
            Some(j) => j,
            None => {
                // Keys rotate: fetch the set again, at most once a minute.
                let stale = fetched.read().expect("jwks lock").elapsed() > Duration::from_secs(60);
                match url {
                    Some(u) if stale => {
                        *fetched.write().expect("jwks lock") = Instant::now();
                        match fetch_jwks(u).await {
                            Ok(fresh) => *set.write().expect("jwks lock") = fresh,
                            Err(e) => tracing::warn!(error = %e, "could not fetch the JWKS again"),
                        }
                    }
                    _ => {}
                }
                set.read()
                    .expect("jwks lock")
                    .find(kid)
                    .cloned()
                    .ok_or_else(|| AuthError::Unauthenticated(format!("no key `{kid}` in the JWKS")))?
            }
        };
        let key = DecodingKey::from_jwk(&jwk)
            .map_err(|e| AuthError::Unauthenticated(format!("key `{kid}` cannot verify: {e}")))?;
        Ok((key, alg))
    }
}

async fn fetch_jwks(url: &str) -> Result<JwkSet, String> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().map_err(|e| e.to_string())?;
    let resp = client.get(url).send().await.map_err(|e| format!("JWKS {url}: {e}"))?;
    let bytes = resp.bytes().await.map_err(|e| format!("JWKS {url}: {e}"))?;
    if bytes.len() > 1 << 20 {
        return Err(format!("JWKS {url}: larger than 1 MiB"));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("JWKS {url}: not a JWKS: {e}"))
}

fn bearer(req: &Request) -> Result<&str, AuthError> {
    let h = req
        .headers()
        .get("authorization")
        .ok_or_else(|| AuthError::Unauthenticated("no bearer token (Authorization: Bearer <JWT>)".into()))?;
    let h = h.to_str().map_err(|_| AuthError::Unauthenticated("the Authorization header is not text".into()))?;
    match h.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.trim().is_empty() => Ok(token.trim()),
        _ => Err(AuthError::Unauthenticated("the Authorization header is not `Bearer <JWT>`".into())),
    }
}

pub use llmo_core::tenant::valid as valid_tenant;

/// The roles a claim lists: a JSON list, or a string (`a b`, `a,b`, or API Gateway's
/// flattened `[a b]`).
fn roles_of(v: Option<&Value>) -> Vec<String> {
    match v {
        Some(Value::Array(a)) => a.iter().filter_map(Value::as_str).map(str::to_string).collect(),
        Some(Value::String(s)) => s
            .trim_matches(|c| c == '[' || c == ']')
            .split(|c: char| c == ',' || c.is_whitespace())
            .map(|r| r.trim_matches('"'))
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

fn principal(map: &Map<String, Value>, names: &Claims) -> Result<Principal, AuthError> {
    let subject = map
        .get("sub")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| AuthError::Unauthenticated("the token has no subject (`sub`)".into()))?;
    let tenant = map
        .get(&names.tenant)
        .and_then(Value::as_str)
        .ok_or_else(|| AuthError::Forbidden(format!("the token has no tenant (claim `{}`)", names.tenant)))?;
    if !valid_tenant(tenant) {
        return Err(AuthError::Forbidden(format!("the token's tenant `{tenant}` is not a valid tenant name")));
    }
    let roles = roles_of(map.get(&names.roles));
    let role = roles
        .iter()
        .filter_map(|r| match r.as_str() {
            "viewer" => Some(Role::Viewer),
            "developer" => Some(Role::Developer),
            "admin" => Some(Role::Admin),
            _ => None,
        })
        .max()
        .ok_or_else(|| {
            AuthError::Forbidden(format!(
                "the token grants no role (claim `{}`: viewer, developer or admin)",
                names.roles
            ))
        })?;
    let operator = role == Role::Admin && roles.iter().any(|r| r == "operator");
    Ok(Principal { subject: subject.to_string(), tenant: tenant.to_string(), role, operator })
}

/// Mints an HS256 token (development, tests, `llmo token`).
pub fn mint_hs256(secret: &[u8], claims: &HashMap<&str, Value>) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("HS256 encoding cannot fail")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(pairs: &[(&str, Value)]) -> Map<String, Value> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
    }

    #[test]
    fn roles_from_lists_strings_and_api_gateway_flattening() {
        assert_eq!(roles_of(Some(&serde_json::json!(["viewer", "admin"]))), ["viewer", "admin"]);
        assert_eq!(roles_of(Some(&Value::String("[developer operator]".into()))), ["developer", "operator"]);
        assert_eq!(roles_of(Some(&Value::String("viewer,developer".into()))), ["viewer", "developer"]);
        assert!(roles_of(None).is_empty());
    }

    #[test]
    fn the_highest_role_counts_and_operator_needs_admin() {
        let n = Claims::default();
        let p = principal(
            &claims(&[
                ("sub", "u".into()),
                ("tenant", "acme".into()),
                ("roles", serde_json::json!(["viewer", "developer", "operator"])),
            ]),
            &n,
        )
        .unwrap();
        assert_eq!((p.role, p.operator), (Role::Developer, false));
        let p = principal(
            &claims(&[("sub", "u".into()), ("tenant", "acme".into()), ("roles", "admin operator".into())]),
            &n,
        )
        .unwrap();
        assert_eq!((p.role, p.operator), (Role::Admin, true));
        assert!(p.acting_tenant(Some("other")).is_ok());
        let d = Principal { operator: false, ..p };
        assert!(d.acting_tenant(Some("other")).is_err());
        assert_eq!(d.acting_tenant(Some("acme")), Ok("acme"));
    }

    #[test]
    fn tokens_without_subject_tenant_or_role_are_refused() {
        let n = Claims::default();
        assert!(matches!(
            principal(&claims(&[("tenant", "a".into()), ("roles", "viewer".into())]), &n),
            Err(AuthError::Unauthenticated(_))
        ));
        assert!(matches!(
            principal(&claims(&[("sub", "u".into()), ("roles", "viewer".into())]), &n),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            principal(&claims(&[("sub", "u".into()), ("tenant", "a#b".into()), ("roles", "viewer".into())]), &n),
            Err(AuthError::Forbidden(_))
        ));
        assert!(matches!(
            principal(&claims(&[("sub", "u".into()), ("tenant", "a".into()), ("roles", "root".into())]), &n),
            Err(AuthError::Forbidden(_))
        ));
    }

    fn fixture(name: &str) -> String {
        format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
    }

    fn es256(kid: &str, iss: &str, aud: &str) -> String {
        let key =
            jsonwebtoken::EncodingKey::from_ec_pem(&std::fs::read(fixture("es256-test-only.pem")).unwrap()).unwrap();
        let mut header = jsonwebtoken::Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
        let claims = serde_json::json!({"sub": "u", "tenant": "acme", "roles": ["viewer"], "iss": iss, "aud": aud, "exp": now + 600});
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    fn request(token: &str) -> Request {
        http::Request::builder().header("authorization", format!("Bearer {token}")).body(crate::Body::Empty).unwrap()
    }

    #[tokio::test]
    async fn es256_tokens_verify_against_a_jwks_file_or_url() {
        const ISS: &str = "https://issuer.test";
        let file = Auth::jwks(&fixture("jwks.json"), ISS, "llmo-api", Claims::default()).await.unwrap();
        let ok = file.authenticate(&request(&es256("test-es256", ISS, "llmo-api"))).await.unwrap();
        assert_eq!((ok.tenant.as_str(), ok.role), ("acme", Role::Viewer));
        let refused = |r: Result<Principal, AuthError>| matches!(r, Err(AuthError::Unauthenticated(_)));
        assert!(refused(file.authenticate(&request(&es256("other-key", ISS, "llmo-api"))).await), "unknown kid");
        assert!(
            refused(file.authenticate(&request(&es256("test-es256", "https://evil.test", "llmo-api"))).await),
            "issuer"
        );
        assert!(refused(file.authenticate(&request(&es256("test-es256", ISS, "someone-else"))).await), "audience");
        // An HS256 token (e.g. one signed with the public key as its secret) is refused outright.
        let jwks_text = std::fs::read(fixture("jwks.json")).unwrap();
        let mut hs = std::collections::HashMap::new();
        hs.insert("sub", serde_json::json!("u"));
        hs.insert("tenant", serde_json::json!("acme"));
        hs.insert("roles", serde_json::json!(["admin"]));
        hs.insert("iss", serde_json::json!(ISS));
        hs.insert("aud", serde_json::json!("llmo-api"));
        hs.insert("exp", serde_json::json!(u64::MAX / 2));
        assert!(refused(file.authenticate(&request(&mint_hs256(&jwks_text, &hs))).await), "alg confusion");
        // The same keys served over HTTP.
        let server = wiremock::MockServer::start().await;
        wiremock::Mock::given(wiremock::matchers::path("/.well-known/jwks.json"))
            .respond_with(wiremock::ResponseTemplate::new(200).set_body_raw(jwks_text, "application/json"))
            .mount(&server)
            .await;
        let url = Auth::jwks(&format!("{}/.well-known/jwks.json", server.uri()), ISS, "llmo-api", Claims::default())
            .await
            .unwrap();
        assert!(url.authenticate(&request(&es256("test-es256", ISS, "llmo-api"))).await.is_ok());
        // Over plain http only from loopback: elsewhere the keys could be swapped on the way.
        for elsewhere in ["http://keys.example.com/jwks.json", "http://[2001:db8::1]/jwks.json", "http://10.0.0.1:80/k"]
        {
            let e = Auth::jwks(elsewhere, ISS, "llmo-api", Claims::default()).await;
            assert!(e.err().unwrap().contains("https:// only"), "{elsewhere}");
        }
    }

    #[test]
    fn an_operators_tenant_is_checked_like_a_tokens() {
        let op = Principal { subject: "ops".into(), tenant: "acme".into(), role: Role::Admin, operator: true };
        assert_eq!(op.acting_tenant(Some("globex")), Ok("globex"));
        for bad in ["a#b", "", "t1#RUNS#0", &"x".repeat(65), "a b"] {
            assert!(matches!(op.acting_tenant(Some(bad)), Err(AuthError::BadTenant(_))), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn tokens_not_yet_valid_or_from_an_unconfigured_issuer_are_refused() {
        let secret = b"0123456789abcdef0123456789abcdef";
        let auth = Auth::hs256(secret, "llmo-api");
        let now = llmo_runtime::ports::now_ms() / 1000;
        let token = |extra: &[(&str, Value)]| {
            let mut c: std::collections::HashMap<&str, Value> = [
                ("sub", serde_json::json!("u")),
                ("tenant", serde_json::json!("acme")),
                ("roles", serde_json::json!(["viewer"])),
                ("aud", serde_json::json!("llmo-api")),
                ("exp", serde_json::json!(now + 600)),
            ]
            .into();
            for (k, v) in extra {
                c.insert(k, v.clone());
            }
            mint_hs256(secret, &c)
        };
        assert!(auth.authenticate(&request(&token(&[]))).await.is_ok());
        let early = auth.authenticate(&request(&token(&[("nbf", serde_json::json!(now + 3600))]))).await;
        assert!(matches!(early, Err(AuthError::Unauthenticated(m)) if m.contains("ImmatureSignature")), "nbf");
        let foreign = auth.authenticate(&request(&token(&[("iss", serde_json::json!("https://evil.test"))]))).await;
        assert!(matches!(foreign, Err(AuthError::Unauthenticated(m)) if m.contains("names an issuer")), "iss");
    }
}

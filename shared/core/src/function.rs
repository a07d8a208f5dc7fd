//! `type: function`: an AWS Lambda function as a task. The pure part: the `with` block, the
//! grammar of a function reference (`NAME`, `NAME:QUALIFIER`, a partial or full ARN), and the
//! operator's allowlist that a reference must match before anything is invoked. The invocation
//! itself is the `llmo-lambda` crate's.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// `type: function`: invokes an AWS Lambda function synchronously (the Invoke API,
/// `RequestResponse`) within the task's timeout. Output: the function's JSON answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FunctionWith {
    /// `NAME`, `NAME:QUALIFIER` (a version or alias), or an ARN
    /// (`arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`). A template. It must be one
    /// the operator allows (`LLMO_ALLOWED_FUNCTIONS`; deployed: the `InvokableFunctions`
    /// parameter).
    #[schemars(length(min = 1, max = 256))]
    pub function: String,
    /// The event the function receives, a JSON object whose strings are templates. The engine
    /// adds one field to it, `llmo`: `{ idempotency_key, run_id, task, item, attempt }` (the
    /// key is the same on every attempt and redelivery of this task item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Map<String, Value>>,
    /// Wait for a callback after the function answered: the event's `llmo.callback` holds
    /// `{ token, url }`, and the task ends when the token is answered (see
    /// [`crate::callback::CallbackWith`]). Its output is then the answer's `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub callback: Option<crate::callback::CallbackWith>,
}

/// Lambda's own limit on a synchronous invocation's request and response (6 MB).
pub const MAX_PAYLOAD_BYTES: usize = 6 * 1024 * 1024;

/// A parsed function reference.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FunctionRef {
    pub name: String,
    pub qualifier: Option<String>,
    pub region: Option<String>,
    pub account: Option<String>,
}

impl FunctionRef {
    /// Parses what Lambda's Invoke API accepts as `FunctionName` (with its qualifier):
    /// `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME[:QUALIFIER]` and
    /// `arn:PARTITION:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = |why: &str| Err(format!("`{s}` is not a Lambda function name or ARN: {why}"));
        if s.is_empty() || s.len() > 256 {
            return bad("it must be 1 to 256 characters");
        }
        let parts: Vec<&str> = s.split(':').collect();
        let (region, account, rest) = match parts.as_slice() {
            ["arn", partition, "lambda", region, account, "function", rest @ ..] if partition.starts_with("aws") => {
                (Some(*region), Some(*account), rest)
            }
            ["arn", ..] => return bad("an ARN is `arn:aws:lambda:REGION:ACCOUNT:function:NAME[:QUALIFIER]`"),
            [account, "function", rest @ ..] => (None, Some(*account), rest),
            rest => (None, None, rest),
        };
        let (name, qualifier) = match rest {
            [name] => (*name, None),
            [name, q] => (*name, Some(*q)),
            _ => return bad("too many `:`"),
        };
        let word = |w: &str| !w.is_empty() && w.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
        if name.len() > 64 || !word(name) {
            return bad("a name is 1 to 64 letters, digits, `-` and `_`");
        }
        if let Some(q) = qualifier
            && (q.len() > 128 || !(q == "$LATEST" || word(q)))
        {
            return bad("a qualifier is a version, an alias or `$LATEST`");
        }
        if let Some(a) = account
            && (a.len() != 12 || !a.chars().all(|c| c.is_ascii_digit()))
        {
            return bad("an account is 12 digits");
        }
        if let Some(r) = region
            && (r.is_empty() || !r.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            return bad("a region is like `eu-west-1`");
        }
        Ok(FunctionRef {
            name: name.to_string(),
            qualifier: qualifier.map(str::to_string),
            region: region.map(str::to_string),
            account: account.map(str::to_string),
        })
    }

    /// Does the allowlist entry `self` admit `asked`? The names must be equal; an entry's
    /// qualifier, account and region, where it names them, must be the asked one's (an entry
    /// without a qualifier admits every version and alias; a bare name asked is the caller's
    /// own account and region, which IAM then decides).
    pub fn admits(&self, asked: &FunctionRef) -> bool {
        let same = |entry: &Option<String>, asked: &Option<String>| match (entry, asked) {
            (Some(e), Some(a)) => e == a,
            _ => true,
        };
        self.name == asked.name
            && self.qualifier.as_ref().is_none_or(|q| asked.qualifier.as_ref() == Some(q))
            && same(&self.account, &asked.account)
            && same(&self.region, &asked.region)
    }
}

/// The functions a deployment lets workflows invoke (the operator's list: a workflow can only
/// name what is on it). An entry is `REF` (for every tenant) or `REF@TENANT` (for that tenant's
/// runs only; list it once per tenant). Empty: none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AllowedFunctions(Vec<(FunctionRef, Option<String>)>);

impl AllowedFunctions {
    /// From a comma- or space-separated list of entries.
    pub fn parse(list: &str) -> Result<Self, String> {
        list.split([',', ' ', '\n'])
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(|entry| match entry.rsplit_once('@') {
                Some((r, tenant)) => {
                    if !crate::tenant::valid(tenant) {
                        return Err(format!("`{entry}`: `{tenant}` is not a tenant id"));
                    }
                    Ok((FunctionRef::parse(r)?, Some(tenant.to_string())))
                }
                None => Ok((FunctionRef::parse(entry)?, None)),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(AllowedFunctions)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The asked reference, if the list admits it for a run of `tenant` (`None`: a run
    /// without one, which only entries for every tenant admit); else why not.
    pub fn check(&self, asked: &str, tenant: Option<&str>) -> Result<FunctionRef, String> {
        let r = FunctionRef::parse(asked)?;
        if self.0.is_empty() {
            return Err(format!(
                "function `{asked}` is not allowed: this deployment allows no Lambda functions (LLMO_ALLOWED_FUNCTIONS)"
            ));
        }
        let listed: Vec<&Option<String>> = self.0.iter().filter(|(e, _)| e.admits(&r)).map(|(_, t)| t).collect();
        if listed.is_empty() {
            return Err(format!("function `{asked}` is not allowed: it is not in LLMO_ALLOWED_FUNCTIONS"));
        }
        if !listed.iter().any(|t| t.is_none() || t.as_deref() == tenant) {
            return Err(format!(
                "function `{asked}` is not allowed for {}: LLMO_ALLOWED_FUNCTIONS lists it for other tenants only",
                tenant.map_or("a run without a tenant".to_string(), |t| format!("tenant `{t}`"))
            ));
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_parse_as_lambda_takes_them() {
        let r = FunctionRef::parse("resize").unwrap();
        assert_eq!((r.name.as_str(), r.qualifier), ("resize", None));
        let r = FunctionRef::parse("resize:live").unwrap();
        assert_eq!(r.qualifier.as_deref(), Some("live"));
        let r = FunctionRef::parse("arn:aws:lambda:eu-west-1:123456789012:function:resize:$LATEST").unwrap();
        assert_eq!(r.region.as_deref(), Some("eu-west-1"));
        assert_eq!(r.account.as_deref(), Some("123456789012"));
        assert_eq!(r.qualifier.as_deref(), Some("$LATEST"));
        let r = FunctionRef::parse("123456789012:function:resize").unwrap();
        assert_eq!(r.account.as_deref(), Some("123456789012"));
        for bad in ["", "a b", "a:b:c", "arn:aws:s3:::bucket", "12:function:x", "x:ver sion", "../x", &"n".repeat(65)] {
            assert!(FunctionRef::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_allowlist_admits_only_what_it_names() {
        let none = AllowedFunctions::default();
        assert!(none.check("resize", None).unwrap_err().contains("allows no Lambda functions"));
        let list =
            AllowedFunctions::parse("resize, arn:aws:lambda:eu-west-1:123456789012:function:score:live").unwrap();
        assert!(list.check("resize", None).is_ok());
        assert!(list.check("resize:7", None).is_ok());
        assert!(list.check("arn:aws:lambda:us-east-1:999999999999:function:resize", None).is_ok());
        assert!(list.check("score:live", None).is_ok());
        assert!(list.check("score", None).unwrap_err().contains("not in LLMO_ALLOWED_FUNCTIONS"));
        assert!(list.check("score:other", None).is_err());
        assert!(list.check("arn:aws:lambda:eu-west-1:999999999999:function:score:live", None).is_err());
        assert!(list.check("other", None).is_err());
        assert!(AllowedFunctions::parse("ok, not valid!").is_err());
    }

    #[test]
    fn an_entry_for_a_tenant_admits_only_that_tenants_runs() {
        let list = AllowedFunctions::parse("router@acme, router@globex, score").unwrap();
        assert!(list.check("router", Some("acme")).is_ok());
        assert!(list.check("router:live", Some("globex")).is_ok());
        let e = list.check("router", Some("initech")).unwrap_err();
        assert!(e.contains("not allowed for tenant `initech`"), "{e}");
        assert!(list.check("router", None).unwrap_err().contains("a run without a tenant"));
        assert!(list.check("score", Some("initech")).is_ok(), "an entry without a tenant is every tenant's");
        assert!(list.check("score", None).is_ok());
        assert!(AllowedFunctions::parse("router@").is_err());
        assert!(AllowedFunctions::parse("router@no#such").is_err());
        assert!(AllowedFunctions::parse("router@-").is_err(), "`-` is no tenant");
    }
}

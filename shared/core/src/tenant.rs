//! Tenant names: who a run, a workflow definition or an audit record belongs to.

/// Whether `t` is a tenant name: 1-64 of `A-Za-z0-9_.-`, not starting with `.` or `-` (so no
/// tenant can be `-`, the key the stores give runs without a tenant, and none contains the `#`
/// that separates the parts of a key).
pub fn valid(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 64
        && t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
        && !t.starts_with(['.', '-'])
}

#[cfg(test)]
mod tests {
    #[test]
    fn tenant_names() {
        for ok in ["acme", "a", "team_1.prod-eu", &"x".repeat(64)] {
            assert!(super::valid(ok), "{ok}");
        }
        for bad in ["", "-", "-a", ".a", "a#b", "a b", "ü", &"x".repeat(65)] {
            assert!(!super::valid(bad), "{bad}");
        }
    }
}

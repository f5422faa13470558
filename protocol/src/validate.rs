//! Input rules shared by the coordinator (checked before a command is proposed) and shard
//! workers. Every refusal names the field and says exactly what is wrong and where.

/// A value that breaks an input rule.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct InvalidInput {
    /// Field (or kind of value) that is wrong.
    pub field: &'static str,
    /// What is wrong with it.
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> InvalidInput {
    InvalidInput {
        field,
        reason: reason.into(),
    }
}

/// Longest shard id, cluster id, provider name, region, AZ or capacity type.
pub const MAX_ID_LEN: usize = 63;
/// Longest topology domain.
pub const MAX_DOMAIN_LEN: usize = 253;
/// Longest address or endpoint.
pub const MAX_ADDRESS_LEN: usize = 255;
/// Most items in one batch command.
pub const MAX_BATCH: usize = 50_000;
/// Most quotas a heartbeat reports (see `ShardSummary.quotas`); a coordinator ignores a
/// report with more.
pub const MAX_QUOTA_REPORTS: usize = 256;
/// Most clusters a heartbeat reports the demand of (see `ShardSummary.cluster_demand`): the
/// largest first, so a shard serving more clusters leaves out the smallest.
pub const MAX_CLUSTER_REPORTS: usize = 1_024;

/// Longest shard lease a registration or heartbeat may ask for: a week. Longer leases would
/// keep a dead shard's domains from moving for practically ever.
pub const MAX_LEASE_MS: u64 = 7 * 24 * 3_600_000;

/// A requested shard lease: 0 (the coordinator's default) or 1 ms to [`MAX_LEASE_MS`].
pub fn validate_lease_ms(value: u64) -> Result<(), InvalidInput> {
    if value > MAX_LEASE_MS {
        return Err(invalid(
            "lease_ttl_ms",
            format!("{value} is above the maximum of {MAX_LEASE_MS} (7 days)"),
        ));
    }
    Ok(())
}

/// A heartbeat's summary: at most [`MAX_QUOTA_REPORTS`] quotas, each named by valid ids, none
/// twice; the demand of at most [`MAX_CLUSTER_REPORTS`] clusters, each a valid id.
pub fn validate_summary(summary: &crate::pb::ShardSummary) -> Result<(), InvalidInput> {
    if summary.quotas.len() > MAX_QUOTA_REPORTS {
        return Err(invalid(
            "summary.quotas",
            format!(
                "{} quotas reported; at most {MAX_QUOTA_REPORTS}",
                summary.quotas.len()
            ),
        ));
    }
    let mut seen = std::collections::BTreeSet::new();
    for quota in &summary.quotas {
        validate_id("summary.quotas.provider", &quota.provider)?;
        validate_id("summary.quotas.region", &quota.region)?;
        if !seen.insert((quota.provider.as_str(), quota.region.as_str())) {
            return Err(invalid(
                "summary.quotas",
                format!("{}/{} reported twice", quota.provider, quota.region),
            ));
        }
    }
    if summary.cluster_demand.len() > MAX_CLUSTER_REPORTS {
        return Err(invalid(
            "summary.cluster_demand",
            format!(
                "{} clusters reported; at most {MAX_CLUSTER_REPORTS}",
                summary.cluster_demand.len()
            ),
        ));
    }
    for cluster in summary.cluster_demand.keys() {
        validate_id("summary.cluster_demand", cluster)?;
    }
    Ok(())
}

/// Ids: 1 to 63 characters, lowercase letters and digits first, then also `.`, `_`, `-`.
pub fn validate_id(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    let len = value.chars().count();
    if len == 0 || len > MAX_ID_LEN {
        return Err(invalid(
            field,
            format!("{value:?} must be 1 to {MAX_ID_LEN} characters (it has {len})"),
        ));
    }
    for (position, c) in value.chars().enumerate() {
        let ok = c.is_ascii_lowercase()
            || c.is_ascii_digit()
            || (position > 0 && matches!(c, '.' | '_' | '-'));
        if !ok {
            return Err(invalid(
                field,
                format!(
                    "{value:?} contains invalid character {c:?} at position {position} \
                     (allowed: a-z 0-9, and . _ - after the first character)"
                ),
            ));
        }
    }
    Ok(())
}

/// Addresses and endpoints: non-empty, at most 255 bytes, no whitespace or control characters.
pub fn validate_address(field: &'static str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    if value.len() > MAX_ADDRESS_LEN {
        return Err(invalid(
            field,
            format!(
                "is {} bytes, above the limit of {MAX_ADDRESS_LEN}",
                value.len()
            ),
        ));
    }
    if let Some((position, c)) = value
        .chars()
        .enumerate()
        .find(|(_, c)| c.is_whitespace() || c.is_control())
    {
        return Err(invalid(
            field,
            format!(
                "{value:?} contains whitespace or a control character {c:?} at position {position}"
            ),
        ));
    }
    Ok(())
}

/// A parsed topology domain: `label=value` pairs joined by `/`, e.g.
/// `topology.kubernetes.io/zone=az-a/rack=r17`. Labels may carry one Kubernetes-style prefix
/// (`prefix/name`); values never contain `/`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DomainKey {
    pairs: Vec<(String, String)>,
}

fn name_chars_ok(s: &str) -> Option<char> {
    s.chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
}

impl DomainKey {
    /// Parses and checks a domain.
    pub fn parse(s: &str) -> Result<DomainKey, InvalidInput> {
        let field = "domain";
        if s.is_empty() {
            return Err(invalid(field, "must not be empty"));
        }
        if s.len() > MAX_DOMAIN_LEN {
            return Err(invalid(
                field,
                format!("is {} bytes, above the limit of {MAX_DOMAIN_LEN}", s.len()),
            ));
        }
        if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
            return Err(invalid(
                field,
                format!("{s:?} contains non-ASCII character {c:?}"),
            ));
        }
        let tokens: Vec<&str> = s.split('=').collect();
        if tokens.len() < 2 {
            return Err(invalid(
                field,
                format!("{s:?} has no label=value pair (expected e.g. zone=az-a/rack=r17)"),
            ));
        }
        let mut labels = Vec::with_capacity(tokens.len() - 1);
        let mut values = Vec::with_capacity(tokens.len() - 1);
        labels.push(tokens[0]);
        for (i, token) in tokens[1..tokens.len() - 1].iter().enumerate() {
            let Some((value, next_label)) = token.split_once('/') else {
                return Err(invalid(
                    field,
                    format!(
                        "{s:?}: pair {} has no '/' before the next label (near {token:?})",
                        i + 1
                    ),
                ));
            };
            values.push(value);
            labels.push(next_label);
        }
        values.push(tokens[tokens.len() - 1]);
        let mut pairs = Vec::with_capacity(labels.len());
        for (label, value) in labels.into_iter().zip(values) {
            check_label(s, label)?;
            if value.is_empty() {
                return Err(invalid(
                    field,
                    format!("{s:?}: label {label:?} has an empty value"),
                ));
            }
            if value.contains('/') {
                return Err(invalid(
                    field,
                    format!(
                        "{s:?}: value {value:?} of label {label:?} contains '/' (or the domain ends with '/')"
                    ),
                ));
            }
            if let Some(c) = name_chars_ok(value) {
                return Err(invalid(
                    field,
                    format!(
                        "{s:?}: value {value:?} contains invalid character {c:?} (allowed: A-Z a-z 0-9 . _ -)"
                    ),
                ));
            }
            if pairs.iter().any(|(l, _): &(String, String)| l == label) {
                return Err(invalid(
                    field,
                    format!("{s:?}: label {label:?} appears twice"),
                ));
            }
            pairs.push((label.to_string(), value.to_string()));
        }
        Ok(DomainKey { pairs })
    }

    /// The `(label, value)` pairs in order.
    pub fn pairs(&self) -> &[(String, String)] {
        &self.pairs
    }

    /// The domain written back out; equal to the parsed input.
    pub fn as_canonical(&self) -> String {
        self.pairs
            .iter()
            .map(|(l, v)| format!("{l}={v}"))
            .collect::<Vec<_>>()
            .join("/")
    }

    /// The value of `label`, if present.
    pub fn get(&self, label: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(l, _)| l == label)
            .map(|(_, v)| v.as_str())
    }
}

fn check_label(domain: &str, label: &str) -> Result<(), InvalidInput> {
    let field = "domain";
    if label.is_empty() {
        return Err(invalid(field, format!("{domain:?} has an empty label")));
    }
    let (prefix, name) = match label.split_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, label),
    };
    for (what, part) in prefix
        .map(|p| ("label prefix", p))
        .into_iter()
        .chain([("label", name)])
    {
        if part.is_empty() {
            return Err(invalid(
                field,
                format!("{domain:?}: empty {what} in {label:?}"),
            ));
        }
        if let Some(c) = name_chars_ok(part) {
            return Err(invalid(
                field,
                format!(
                    "{domain:?}: {what} {part:?} contains invalid character {c:?} (allowed: A-Z a-z 0-9 . _ -)"
                ),
            ));
        }
    }
    Ok(())
}

/// Checks a domain's syntax.
pub fn validate_domain(value: &str) -> Result<(), InvalidInput> {
    DomainKey::parse(value).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_style_domain_parses() {
        let d = DomainKey::parse("topology.kubernetes.io/zone=az-a/rack=r17").expect("valid");
        assert_eq!(
            d.pairs(),
            &[
                (
                    "topology.kubernetes.io/zone".to_string(),
                    "az-a".to_string()
                ),
                ("rack".to_string(), "r17".to_string())
            ]
        );
        assert_eq!(
            d.as_canonical(),
            "topology.kubernetes.io/zone=az-a/rack=r17"
        );
        assert_eq!(d.get("rack"), Some("r17"));
        assert!(DomainKey::parse("zone=a").is_ok());
    }

    #[test]
    fn malformed_domains_are_refused_with_the_reason() {
        for (bad, needle) in [
            ("", "empty"),
            ("rack", "no label=value"),
            ("=b", "empty label"),
            ("a==b", "no '/'"),
            ("a=b/", "contains '/'"),
            ("a=b/c", "contains '/'"),
            ("a=b/c=d/", "contains '/'"),
            ("zöne=a", "non-ASCII"),
            ("a=b c", "invalid character"),
            ("a=b/a=c", "twice"),
            ("p/q/r=b", "invalid character '/'"),
            ("/r=b", "empty label prefix"),
        ] {
            let error = DomainKey::parse(bad).expect_err(bad);
            assert_eq!(error.field, "domain");
            assert!(error.reason.contains(needle), "{bad:?}: {}", error.reason);
        }
        let long = format!("a={}", "b".repeat(260));
        assert!(validate_domain(&long).unwrap_err().reason.contains("253"));
    }

    #[test]
    fn ids_follow_the_rules() {
        assert!(validate_id("shard", "s1").is_ok());
        assert!(validate_id("shard", "shard-1.a_b").is_ok());
        assert!(validate_id("shard", &"a".repeat(63)).is_ok());
        assert!(
            validate_id("shard", &"a".repeat(64))
                .unwrap_err()
                .reason
                .contains("63")
        );
        assert!(validate_id("shard", "").is_err());
        assert!(
            validate_id("shard", "-a")
                .unwrap_err()
                .reason
                .contains("position 0")
        );
        assert!(
            validate_id("shard", "S1")
                .unwrap_err()
                .reason
                .contains("'S'")
        );
        assert!(validate_id("shard", "a b").is_err());
    }

    #[test]
    fn addresses_follow_the_rules() {
        assert!(validate_address("address", "127.0.0.1:7801").is_ok());
        assert!(validate_address("address", "").is_err());
        assert!(validate_address("address", "a b").is_err());
        assert!(validate_address("address", &"a".repeat(256)).is_err());
    }
}

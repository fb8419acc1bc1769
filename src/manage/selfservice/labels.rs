//! What marks an object as a client's self-service object, and the labels the operator's own
//! selectors need on what this API writes.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// `"true"` on every resource and Secret the self-service API creates; it never lists,
/// reads, changes or deletes an object without it.
pub const SELF_SERVICE_LABEL: &str = "connect.vehicles.io/self-service";
/// The owning client as a label value (see [`client_label_value`]); the exact id is in the
/// annotation of the same name and in the resource's `spec.clientId`.
pub const CLIENT_LABEL: &str = "connect.vehicles.io/client";
/// On a self-service Secret: `{kind}/{name}` of the resource it holds the credentials of.
pub const CREDENTIALS_OF_ANNOTATION: &str = "connect.vehicles.io/credentials-of";
/// On a self-service Secret: the credentials it holds (`basic,signingSecret`), so they can
/// be named without reading any value.
pub const CREDENTIALS_ANNOTATION: &str = "connect.vehicles.io/credentials";
/// Namespace annotation: the one client whose self-service namespace this is.
pub const NAMESPACE_ANNOTATION: &str = "connect.vehicles.io/self-service-client";

/// A client id as a label value. Ids may hold `:` and `@` and be 128 long; label values may
/// not, so such an id is labelled by a digest of it (the exact id is checked besides).
pub fn client_label_value(client: &str) -> String {
    let fits = client.len() <= 63
        && client
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        && client.starts_with(|c: char| c.is_ascii_alphanumeric())
        && client.ends_with(|c: char| c.is_ascii_alphanumeric());
    if fits {
        return client.to_string();
    }
    let digest = Sha256::digest(client.as_bytes());
    let hex: String = digest.iter().take(24).map(|b| format!("{b:02x}")).collect();
    format!("sha256-{hex}")
}

/// The label selector of a client's self-service objects.
pub fn selector(client: &str) -> String {
    format!(
        "{SELF_SERVICE_LABEL}=true,{CLIENT_LABEL}={}",
        client_label_value(client)
    )
}

/// The labels an object needs to match `selector` (the operator's `--watch-label-selector`
/// or `--secret-selector`), so that what this API writes is served by this operator:
/// `k=v`, `k==v` and `k in (v, …)` (its first value) add `k: v`; a bare `k` adds `k: "true"`;
/// negative terms (`!=`, `notin`, `!k`) need nothing.
pub fn required_by(selector: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for term in split_terms(selector) {
        let term = term.trim();
        if term.is_empty() || term.starts_with('!') || term.contains("!=") {
            continue;
        }
        if let Some((k, v)) = term.split_once("==").or_else(|| term.split_once('=')) {
            out.insert(k.trim().to_string(), v.trim().to_string());
        } else if let Some((k, values)) = term.split_once(" in ") {
            let first = values
                .trim()
                .trim_start_matches('(')
                .trim_end_matches(')')
                .split(',')
                .next()
                .unwrap_or_default();
            out.insert(k.trim().to_string(), first.trim().to_string());
        } else if !term.contains(" notin ") {
            out.insert(term.to_string(), "true".to_string());
        }
    }
    out
}

/// Splits a selector at the commas between its terms (not those inside `in (a, b)`).
fn split_terms(selector: &str) -> Vec<&str> {
    let (mut terms, mut depth, mut start) = (Vec::new(), 0usize, 0usize);
    for (i, c) in selector.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                terms.push(&selector[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    terms.push(&selector[start..]);
    terms
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values() {
        assert_eq!(client_label_value("dealer-1"), "dealer-1");
        let odd = client_label_value("ops@dealer:1");
        assert!(odd.starts_with("sha256-") && odd.len() <= 63, "{odd}");
        assert_ne!(odd, client_label_value("ops@dealer:2"));
        assert!(client_label_value(&"a".repeat(64)).starts_with("sha256-"));
        assert!(client_label_value("a.").starts_with("sha256-"));
    }

    #[test]
    fn selector_requirements() {
        let want = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        assert_eq!(required_by(""), want(&[]));
        assert_eq!(
            required_by("a=1, b==2,c in (x, y),d,e!=3,!f,g notin (z)"),
            want(&[("a", "1"), ("b", "2"), ("c", "x"), ("d", "true")])
        );
    }
}

//! Which clients a namespace may receive events of: the Namespace annotation
//! `connect.vehicles.io/clients: "dealer-123,dealer-456"` (`*` for all). No annotation, no
//! clients: a cluster admin opts each namespace in.

use std::collections::BTreeSet;

use k8s_openapi::api::core::v1::Namespace;

use crate::api::CLIENTS_ANNOTATION;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AllowedClients {
    All,
    Only(BTreeSet<String>),
}

impl AllowedClients {
    /// Parses the annotation's value; `None` (no annotation) allows nothing.
    pub fn parse(value: Option<&str>) -> Self {
        let mut set = BTreeSet::new();
        for part in value.unwrap_or_default().split(',') {
            let part = part.trim();
            if part == "*" {
                return AllowedClients::All;
            }
            if !part.is_empty() {
                set.insert(part.to_string());
            }
        }
        AllowedClients::Only(set)
    }

    pub fn of(ns: &Namespace) -> Self {
        Self::parse(
            ns.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(CLIENTS_ANNOTATION))
                .map(String::as_str),
        )
    }

    pub fn allows(&self, client_id: &str) -> bool {
        match self {
            AllowedClients::All => true,
            AllowedClients::Only(set) => set.contains(client_id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn annotation_values() {
        let none = AllowedClients::parse(None);
        assert!(!none.allows("dealer-123"));
        assert!(!AllowedClients::parse(Some("")).allows(""));
        let two = AllowedClients::parse(Some(" dealer-123 ,dealer-456,,"));
        assert!(two.allows("dealer-123") && two.allows("dealer-456"));
        assert!(!two.allows("dealer-12") && !two.allows("dealer-1234"));
        assert_eq!(AllowedClients::parse(Some("a, *")), AllowedClients::All);
        assert!(AllowedClients::parse(Some("*")).allows("anyone"));
    }
}

//! Which replica writes each resource's status: the live member with the highest score for
//! the resource (rendezvous hashing), so every replica names the same writer from the same
//! member list, and a member joining or leaving moves only its share of resources.

use sha2::Digest as _;

use crate::routing::TargetKey;
use crate::store::jetstream::owners::Owners;

#[derive(Debug)]
pub struct MemberWriters {
    owners: Owners,
}

impl MemberWriters {
    pub fn new(owners: Owners) -> Self {
        MemberWriters { owners }
    }
}

fn score(member: &str, key: &str) -> u64 {
    let digest = sha2::Sha256::new()
        .chain_update(member)
        .chain_update([0])
        .chain_update(key)
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The writer of `key` among `members`; none while the list is empty.
pub(super) fn writer_of<'a>(members: &'a [String], key: &str) -> Option<&'a str> {
    members
        .iter()
        .max_by_key(|m| (score(m, key), m.as_str()))
        .map(String::as_str)
}

impl crate::status::StatusWriters for MemberWriters {
    fn writes(&self, key: &TargetKey) -> bool {
        let members = self.owners.members();
        // Before the first round lists anyone (start-up), a replica writes what it sees.
        writer_of(&members, &key.to_string()).is_none_or(|w| w == self.owners.id())
    }

    fn changes(&self) -> tokio::sync::watch::Receiver<Vec<String>> {
        self.owners.watch_members()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_writer_per_key_and_a_leaving_member_moves_only_its_keys() {
        let three: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = ["a", "c"].iter().map(|s| s.to_string()).collect();
        let keys: Vec<String> = (0..300).map(|i| format!("webhook/ns/sub-{i}")).collect();
        let mut per = std::collections::BTreeMap::new();
        for k in &keys {
            let before = writer_of(&three, k).unwrap();
            *per.entry(before).or_insert(0) += 1;
            let after = writer_of(&two, k).unwrap();
            if before != "b" {
                assert_eq!(before, after, "{k} moved although its writer stayed");
            }
        }
        // Spread over all three (about 100 each).
        assert!(per.values().all(|n| *n > 60), "{per:?}");
        assert_eq!(writer_of(&[], "x"), None);
    }
}

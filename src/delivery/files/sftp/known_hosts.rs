//! Host-key pinning against OpenSSH `known_hosts` *contents* (not a path).
//!
//! Parsing is done by the `ssh-key` crate (`ssh_key::known_hosts::KnownHosts`, re-exported by
//! russh as `russh::keys::ssh_key`). That crate only parses: it splits markers, host patterns
//! (plain patterns or `|1|salt|hash`) and the public key, but has no matching logic. The matching
//! rules below follow OpenSSH's `hostfile.c` / `match.c`:
//!
//! * the name looked up is `host` for port 22 and `[host]:port` otherwise, lower-cased
//!   (OpenSSH lower-cases the host name before lookups);
//! * plain patterns support `*` / `?` globs and `!` negation (a matching negated pattern makes
//!   the whole line not match), compared case-insensitively;
//! * hashed entries match when `HMAC-SHA1(key = salt, data = name) == hash`;
//! * `@revoked` lines: a presented key equal to *any* revoked key is refused (stricter than
//!   OpenSSH, which only consults revoked lines whose host pattern matches);
//! * `@cert-authority` lines are ignored: the client never negotiates host certificates
//!   (russh's `Preferred::host_key_certificates` is empty by default), so a CA key is never a
//!   valid plain host key;
//! * lines that fail to parse (unknown key type, garbage) are skipped and counted, as OpenSSH does.

use russh::keys::ssh_key::known_hosts::{Entry, HostPatterns, KnownHosts, Marker};
use russh::keys::ssh_key::{Algorithm, PublicKey};

/// Outcome of checking a presented server key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HostKeyVerdict {
    /// A non-revoked line for this host carries exactly this key.
    Trusted,
    /// The key appears on a `@revoked` line.
    Revoked,
    /// There are lines for this host, but none carries this key.
    Mismatch,
    /// No line matches this host at all.
    Unknown,
}

/// Parsed `known_hosts` contents.
#[derive(Debug, Clone, Default)]
pub(crate) struct KnownHostsDb {
    entries: Vec<Entry>,
    skipped_lines: usize,
}

impl KnownHostsDb {
    /// Parses `known_hosts` file contents. Never fails: unparsable lines are skipped and counted.
    pub(crate) fn parse(contents: &str) -> Self {
        let mut entries = Vec::new();
        let mut skipped_lines = 0;
        for item in KnownHosts::new(contents) {
            match item {
                Ok(entry) => entries.push(entry),
                Err(_) => skipped_lines += 1,
            }
        }
        Self {
            entries,
            skipped_lines,
        }
    }

    /// Number of usable lines.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    /// Number of non-empty, non-comment lines that could not be parsed.
    pub(crate) fn skipped_lines(&self) -> usize {
        self.skipped_lines
    }

    /// The name OpenSSH looks up: `host` for port 22, `[host]:port` otherwise (lower-cased).
    pub(crate) fn lookup_name(host: &str, port: u16) -> String {
        let host = host.to_ascii_lowercase();
        if port == 22 {
            host
        } else {
            format!("[{host}]:{port}")
        }
    }

    /// Key algorithms of the plain (unmarked) lines matching `host`/`port`, in file order.
    /// Used to order the host-key algorithms offered during key exchange, like OpenSSH does,
    /// so that a server with several host keys presents the one that is pinned.
    pub(crate) fn key_algorithms_for(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = Self::lookup_name(host, port);
        let mut out: Vec<Algorithm> = Vec::new();
        for e in &self.entries {
            if e.marker().is_none() && entry_matches(e, &name) {
                let alg = e.public_key().algorithm();
                if !out.contains(&alg) {
                    out.push(alg);
                }
            }
        }
        out
    }

    /// Checks a presented server key for `host`/`port`.
    pub(crate) fn verify(&self, host: &str, port: u16, key: &PublicKey) -> HostKeyVerdict {
        // Compare key material only: `PublicKey: PartialEq` also compares the comment.
        let presented = key.key_data();
        if self
            .entries
            .iter()
            .any(|e| e.marker() == Some(&Marker::Revoked) && e.public_key().key_data() == presented)
        {
            return HostKeyVerdict::Revoked;
        }
        let name = Self::lookup_name(host, port);
        let mut host_known = false;
        for e in &self.entries {
            if e.marker().is_some() || !entry_matches(e, &name) {
                continue;
            }
            if e.public_key().key_data() == presented {
                return HostKeyVerdict::Trusted;
            }
            host_known = true;
        }
        if host_known {
            HostKeyVerdict::Mismatch
        } else {
            HostKeyVerdict::Unknown
        }
    }
}

fn entry_matches(entry: &Entry, name: &str) -> bool {
    match entry.host_patterns() {
        HostPatterns::HashedName { salt, hash } => {
            // OpenSSH's `|1|` hashed names: HMAC-SHA1 keyed with the salt.
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA1_FOR_LEGACY_USE_ONLY, salt);
            ring::hmac::verify(&key, name.as_bytes(), hash).is_ok()
        }
        HostPatterns::Patterns(patterns) => {
            let mut matched = false;
            for p in patterns {
                let (negated, p) = match p.strip_prefix('!') {
                    Some(rest) => (true, rest),
                    None => (false, p.as_str()),
                };
                if glob_match(&p.to_ascii_lowercase(), name) {
                    if negated {
                        return false;
                    }
                    matched = true;
                }
            }
            matched
        }
    }
}

/// OpenSSH-style glob: `*` matches any run of characters, `?` exactly one.
fn glob_match(pattern: &str, text: &str) -> bool {
    wildmatch::WildMatch::new(pattern).matches(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Two real ed25519 public keys (generated with ssh-keygen for these tests).
    const KEY_A: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB9dG4kjRhQTtWTVzd2t27+t0DEHBPW7iOD23TUiYLio";
    const KEY_B: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJsdbzvcK/pbsVlxjH9u5ur41yQVDT6nkhp7e/H22pDO";

    fn key(s: &str) -> PublicKey {
        PublicKey::from_openssh(s).expect("test key")
    }

    #[test]
    fn glob() {
        assert!(glob_match("*.example.com", "a.example.com"));
        assert!(!glob_match("*.example.com", "example.com"));
        assert!(glob_match("[10.0.0.?]:2222", "[10.0.0.7]:2222"));
        assert!(glob_match("*", ""));
        assert!(!glob_match("a", ""));
    }

    #[test]
    fn plain_port_and_negation() {
        let db = KnownHostsDb::parse(&format!(
            "# comment\n\nSFTP.example.com,[sftp.example.com]:2222 {KEY_A}\n*.corp,!bad.corp {KEY_B} c\n"
        ));
        let a = key(KEY_A);
        let b = key(KEY_B);
        assert_eq!(
            db.verify("sftp.example.com", 22, &a),
            HostKeyVerdict::Trusted
        );
        assert_eq!(
            db.verify("sftp.example.com", 2222, &a),
            HostKeyVerdict::Trusted
        );
        assert_eq!(
            db.verify("sftp.example.com", 2223, &a),
            HostKeyVerdict::Unknown
        );
        assert_eq!(
            db.verify("sftp.example.com", 22, &b),
            HostKeyVerdict::Mismatch
        );
        assert_eq!(db.verify("x.corp", 22, &b), HostKeyVerdict::Trusted);
        assert_eq!(db.verify("bad.corp", 22, &b), HostKeyVerdict::Unknown);
    }

    #[test]
    fn hashed() {
        // What `ssh-keygen -H` (OpenSSH 9.2) made of "[127.0.0.1]:2222 KEY_A".
        let line =
            format!("|1|uT0r1Ez6+mqI/Q0CIHIM2+GeBhM=|YimKym9He2jRxIG6uI9yQkvud28= {KEY_A}\n");
        let db = KnownHostsDb::parse(&line);
        assert_eq!(
            db.verify("127.0.0.1", 2222, &key(KEY_A)),
            HostKeyVerdict::Trusted
        );
        assert_eq!(
            db.verify("127.0.0.1", 22, &key(KEY_A)),
            HostKeyVerdict::Unknown
        );
        assert_eq!(
            db.verify("127.0.0.1", 2222, &key(KEY_B)),
            HostKeyVerdict::Mismatch
        );
    }

    #[test]
    fn markers_and_garbage() {
        let db = KnownHostsDb::parse(&format!(
            "garbage line\n@cert-authority *.example.com {KEY_B}\n@revoked * {KEY_A}\nh {KEY_A}\n@bogus h {KEY_A}\n"
        ));
        assert_eq!(db.skipped_lines(), 2);
        assert_eq!(db.verify("h", 22, &key(KEY_A)), HostKeyVerdict::Revoked);
        // A CA key is not a host key.
        assert_eq!(
            db.verify("a.example.com", 22, &key(KEY_B)),
            HostKeyVerdict::Unknown
        );
    }
}

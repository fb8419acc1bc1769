//! Standard Webhooks signatures.

use base64::Engine as _;

/// Standard Webhooks `webhook-signature` value: `v1,<base64 HMAC-SHA256>` per key over
/// `"{msg_id}.{timestamp}.{body}"`, space separated, so receivers can rotate keys.
pub fn sign(keys: &[Vec<u8>], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    sign_with(&hmac_keys(keys), msg_id, timestamp, body)
}

/// The HMAC keys of `keys`, prepared once per target rather than on every request.
pub fn hmac_keys(keys: &[Vec<u8>]) -> Vec<ring::hmac::Key> {
    keys.iter()
        .map(|k| ring::hmac::Key::new(ring::hmac::HMAC_SHA256, k))
        .collect()
}

/// [`sign`] with prepared keys.
pub fn sign_with(keys: &[ring::hmac::Key], msg_id: &str, timestamp: i64, body: &[u8]) -> String {
    let prefix = format!("{msg_id}.{timestamp}.");
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::with_capacity(keys.len() * 48);
    for key in keys {
        let mut ctx = ring::hmac::Context::with_key(key);
        ctx.update(prefix.as_bytes());
        ctx.update(body);
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str("v1,");
        b64.encode_string(ctx.sign().as_ref(), &mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_matches_the_standard_webhooks_test_vector() {
        let keys =
            crate::controller::secrets::decode_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
                .unwrap();
        let sig = sign(
            &keys,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1614265330,
            br#"{"test": 2432232314}"#,
        );
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn sign_emits_one_signature_per_key_in_order() {
        let k1 = b"0123456789abcdef".to_vec();
        let k2 = b"fedcba9876543210".to_vec();
        let both = sign(&[k1.clone(), k2.clone()], "id", 1, b"{}");
        let one = sign(&[k1], "id", 1, b"{}");
        let two = sign(&[k2], "id", 1, b"{}");
        assert_eq!(both, format!("{one} {two}"));
        assert_ne!(one, two);
        assert_ne!(one, sign(&[b"0123456789abcdef".to_vec()], "id", 2, b"{}"));
        assert_eq!(sign(&[], "id", 1, b"{}"), "");
    }
}

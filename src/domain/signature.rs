//! Razorpay's webhook signature: the lowercase hex HMAC-SHA256 of the raw request
//! body, keyed with the webhook secret (reference/razorpay.md §2).
//!
//! The body is the bytes exactly as received; re-serialising parsed JSON is the
//! classic way to make every signature fail. Comparison is constant-time
//! (`Mac::verify_slice`), and only lowercase hex is accepted, as Razorpay's own
//! SDKs do.

use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The lowercase hex signature Razorpay would send for `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = new_mac(secret);
    mac.update(body);
    hex::encode(mac.finalize().into_bytes())
}

/// True when `signature` is the lowercase hex HMAC-SHA256 of `body` under `secret`.
pub fn verify(secret: &[u8], body: &[u8], signature: &str) -> bool {
    let Some(expected) = decode_lowercase_hex_32(signature) else {
        return false;
    };
    let mut mac = new_mac(secret);
    mac.update(body);
    mac.verify_slice(&expected).is_ok()
}

fn new_mac(secret: &[u8]) -> HmacSha256 {
    // HMAC accepts keys of any length; this cannot fail.
    match HmacSha256::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

fn decode_lowercase_hex_32(text: &str) -> Option<[u8; 32]> {
    let bytes = text.as_bytes();
    if bytes.len() != 64 || !bytes.iter().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(bytes, &mut out).ok()?;
    Some(out)
}

/// The checkout's success-callback signature (SPEC §5): HMAC-SHA256 of
/// `razorpay_order_id + "|" + razorpay_payment_id` under the API key secret.
pub fn verify_checkout(
    key_secret: &[u8],
    razorpay_order_id: &str,
    razorpay_payment_id: &str,
    signature: &str,
) -> bool {
    let message = format!("{razorpay_order_id}|{razorpay_payment_id}");
    verify(key_secret, message.as_bytes(), signature)
}

/// The webhook secrets in force: the current one and, during a rotation, the
/// previous one (events created before the change stay signed with it).
#[derive(Clone)]
pub struct WebhookVerifier {
    current: Vec<u8>,
    previous: Option<Vec<u8>>,
}

impl WebhookVerifier {
    pub fn new(current: &str, previous: Option<&str>) -> Self {
        Self {
            current: current.as_bytes().to_vec(),
            previous: previous.map(|p| p.as_bytes().to_vec()),
        }
    }

    pub fn verify(&self, body: &[u8], signature: &str) -> bool {
        verify(&self.current, body, signature)
            || self
                .previous
                .as_deref()
                .is_some_and(|previous| verify(previous, body, signature))
    }
}

impl std::fmt::Debug for WebhookVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookVerifier")
            .field("rotation", &self.previous.is_some())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // reference/razorpay.md §2, agreed by both official SDKs and openssl.
    const SECRET: &[u8] = b"whsec_test_123";
    const BODY: &[u8] = br#"{"entity":"event","event":"payment.captured"}"#;
    const SIGNATURE: &str = "afab959aab684b042f79999eee67e3974f7ed3628acb0aeac7d6fce6210d23fd";

    #[test]
    fn reference_test_vector() {
        assert_eq!(sign(SECRET, BODY), SIGNATURE);
        assert!(verify(SECRET, BODY, SIGNATURE));
    }

    #[test]
    fn upper_case_hex_is_rejected() {
        assert!(!verify(SECRET, BODY, &SIGNATURE.to_uppercase()));
    }

    #[test]
    fn any_one_byte_change_in_the_body_is_rejected() {
        for i in 0..BODY.len() {
            let mut body = BODY.to_vec();
            body[i] ^= 0x01;
            assert!(!verify(SECRET, &body, SIGNATURE), "byte {i}");
        }
        let mut longer = BODY.to_vec();
        longer.push(b'\n');
        assert!(!verify(SECRET, &longer, SIGNATURE));
    }

    #[test]
    fn wrong_secret_and_malformed_signatures_are_rejected() {
        assert!(!verify(b"whsec_test_124", BODY, SIGNATURE));
        assert!(!verify(SECRET, BODY, ""));
        assert!(!verify(SECRET, BODY, &SIGNATURE[..63]));
        assert!(!verify(SECRET, BODY, &format!("{SIGNATURE}00")));
        assert!(!verify(
            SECRET,
            BODY,
            &format!("sha256={}", &SIGNATURE[7..])
        ));
        let mut flipped = SIGNATURE.to_owned();
        flipped.replace_range(0..1, "b");
        assert!(!verify(SECRET, BODY, &flipped));
    }

    #[test]
    fn checkout_signature_covers_order_and_payment_ids() {
        let signature = sign(b"key_secret", b"order_P1x2y3z4|pay_29QQoUBi66xm2f");
        assert!(verify_checkout(
            b"key_secret",
            "order_P1x2y3z4",
            "pay_29QQoUBi66xm2f",
            &signature
        ));
        assert!(!verify_checkout(
            b"key_secret",
            "order_P1x2y3z4",
            "pay_other",
            &signature
        ));
        assert!(!verify_checkout(
            b"other_secret",
            "order_P1x2y3z4",
            "pay_29QQoUBi66xm2f",
            &signature
        ));
    }

    #[test]
    fn rotation_accepts_both_secrets_and_nothing_else() {
        let rotating = WebhookVerifier::new("new-secret", Some("whsec_test_123"));
        assert!(rotating.verify(BODY, SIGNATURE));
        assert!(rotating.verify(BODY, &sign(b"new-secret", BODY)));
        assert!(!rotating.verify(BODY, &sign(b"other", BODY)));
        let settled = WebhookVerifier::new("new-secret", None);
        assert!(!settled.verify(BODY, SIGNATURE));
    }
}

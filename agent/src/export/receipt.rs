//! The receipt `import-export` writes and `export confirm` checks (pure).
//!
//! A receipt names the export file (its id) and the readings the FHIR server committed, each
//! as a 16-byte tag `HMAC-SHA256(receipt key, "vitalgate-export receipt v1\0" ‖ reading id)`
//! truncated, and carries a MAC over all of it under the same key. The receipt key is random
//! per export file, travels only inside the encrypted file, and is kept sealed in the gateway's
//! store. So a receipt can lie on the stick in clear: it reveals nothing about the readings
//! (not even their ids), and only someone who could open the export file can write one that
//! `export confirm` accepts.
//!
//! Text form (JSON, one object):
//! `{"format":"vitalgate-export-receipt/1","file_id":"<32 hex>","delivered":["<32 hex>",…],"mac":"<64 hex>"}`
//! with `delivered` sorted; `mac = HMAC-SHA256(receipt key, "vitalgate-export receipt mac v1\0"
//! ‖ file id ‖ every tag in order)`.

use std::collections::BTreeSet;

use ring::hmac;
use serde::{Deserialize, Serialize};

const TAG_CONTEXT: &[u8] = b"vitalgate-export receipt v1\0";
const MAC_CONTEXT: &[u8] = b"vitalgate-export receipt mac v1\0";
pub const FORMAT: &str = "vitalgate-export-receipt/1";

/// Which readings of one export file the server committed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Receipt {
    pub file_id: [u8; 16],
    pub delivered: BTreeSet<[u8; 16]>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReceiptError {
    #[error("not a vitalgate export receipt: {0}")]
    Malformed(String),
    #[error("the receipt's MAC does not verify: it was not written for this export file, or it was changed")]
    BadMac,
}

#[derive(Serialize, Deserialize)]
struct Wire {
    format: String,
    file_id: String,
    delivered: Vec<String>,
    mac: String,
}

/// The tag of `reading_id` under an export file's receipt key.
pub fn tag(receipt_key: &[u8; 32], reading_id: &[u8; 32]) -> [u8; 16] {
    let key = hmac::Key::new(hmac::HMAC_SHA256, receipt_key);
    let mut ctx = hmac::Context::with_key(&key);
    ctx.update(TAG_CONTEXT);
    ctx.update(reading_id);
    let mut out = [0u8; 16];
    out.copy_from_slice(&ctx.sign().as_ref()[..16]);
    out
}

impl Receipt {
    fn mac_input(&self) -> Vec<u8> {
        let mut m = Vec::with_capacity(MAC_CONTEXT.len() + 16 + 16 * self.delivered.len());
        m.extend_from_slice(MAC_CONTEXT);
        m.extend_from_slice(&self.file_id);
        for t in &self.delivered {
            m.extend_from_slice(t);
        }
        m
    }

    /// The receipt's text, MAC'd under `receipt_key`.
    pub fn encode(&self, receipt_key: &[u8; 32]) -> String {
        let key = hmac::Key::new(hmac::HMAC_SHA256, receipt_key);
        let mac = hmac::sign(&key, &self.mac_input());
        let wire = Wire {
            format: FORMAT.into(),
            file_id: hex::encode(self.file_id),
            delivered: self.delivered.iter().map(hex::encode).collect(),
            mac: hex::encode(mac.as_ref()),
        };
        let mut s = serde_json::to_string(&wire).unwrap_or_default();
        s.push('\n');
        s
    }

    /// Parses a receipt without checking its MAC; returns it and the MAC to check with
    /// [`Receipt::verify`] once the receipt key is known (the gateway looks it up by file id).
    ///
    /// # Errors
    ///
    /// [`ReceiptError::Malformed`].
    pub fn parse(text: &str) -> Result<(Receipt, Vec<u8>), ReceiptError> {
        let bad = |why: &str| ReceiptError::Malformed(why.to_string());
        let wire: Wire = serde_json::from_str(text).map_err(|e| bad(&e.to_string()))?;
        if wire.format != FORMAT {
            return Err(bad("unknown format"));
        }
        let mut file_id = [0u8; 16];
        hex::decode_to_slice(&wire.file_id, &mut file_id).map_err(|_| bad("file_id"))?;
        let mut delivered = BTreeSet::new();
        for t in &wire.delivered {
            let mut tag = [0u8; 16];
            hex::decode_to_slice(t, &mut tag).map_err(|_| bad("delivered tag"))?;
            delivered.insert(tag);
        }
        let mac = hex::decode(&wire.mac).map_err(|_| bad("mac"))?;
        Ok((Receipt { file_id, delivered }, mac))
    }

    /// Checks `mac` (from [`Receipt::parse`]) under `receipt_key`.
    ///
    /// # Errors
    ///
    /// [`ReceiptError::BadMac`].
    pub fn verify(&self, mac: &[u8], receipt_key: &[u8; 32]) -> Result<(), ReceiptError> {
        let key = hmac::Key::new(hmac::HMAC_SHA256, receipt_key);
        hmac::verify(&key, &self.mac_input(), mac).map_err(|_| ReceiptError::BadMac)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_receipt_round_trips_and_a_changed_one_does_not_verify() {
        let key = [3u8; 32];
        let mut r = Receipt {
            file_id: [1; 16],
            ..Receipt::default()
        };
        r.delivered.insert(tag(&key, &[7; 32]));
        r.delivered.insert(tag(&key, &[8; 32]));
        let text = r.encode(&key);
        assert!(
            !text.contains(&hex::encode([7u8; 32])),
            "no reading id in clear"
        );
        let (back, mac) = Receipt::parse(&text).unwrap();
        assert_eq!(back, r);
        back.verify(&mac, &key).unwrap();
        assert_eq!(back.verify(&mac, &[4; 32]), Err(ReceiptError::BadMac));
        let mut more = back.clone();
        more.delivered.insert(tag(&key, &[9; 32]));
        assert_eq!(more.verify(&mac, &key), Err(ReceiptError::BadMac));
        assert!(Receipt::parse("{}").is_err());
    }

    #[test]
    fn tags_depend_on_the_key_and_the_reading() {
        assert_ne!(tag(&[1; 32], &[7; 32]), tag(&[2; 32], &[7; 32]));
        assert_ne!(tag(&[1; 32], &[7; 32]), tag(&[1; 32], &[8; 32]));
    }
}

//! The hybrid post-quantum key exchange X25519MLKEM768 (draft-ietf-tls-ecdhe-mlkem, TLS
//! `NamedGroup` 0x11EC) as a rustls [`SupportedKxGroup`], client side, on ring.
//!
//! ring has no ML-KEM. X25519 comes from ring's `agreement` (an ephemeral key per handshake);
//! ML-KEM-768 (FIPS 203) from RustCrypto's pure-Rust `ml-kem`, its key-generation seeds `d` and
//! `z` drawn from ring's `SystemRandom` (the same source as every other key in the handshake).
//!
//! Wire layout (the draft, section "X25519MLKEM768"; the ML-KEM part comes FIRST for this group,
//! unlike SecP256r1MLKEM768):
//!
//! | what | bytes |
//! |---|---|
//! | client key share | ML-KEM-768 encapsulation key (1184) ‖ X25519 public key (32) = 1216 |
//! | server key share | ML-KEM-768 ciphertext (1088) ‖ X25519 public key (32) = 1120 |
//! | shared secret | ML-KEM-768 shared secret (32) ‖ X25519 shared secret (32) = 64 |
//!
//! A server share of any other length, or an X25519 public key that ring refuses (one giving
//! an all-zero secret), is `PeerMisbehaved::InvalidKeyShare`: the handshake fails, nothing
//! panics. ML-KEM decapsulation itself cannot fail (implicit rejection: a forged ciphertext
//! gives a secret the server does not have, and the handshake's Finished check fails).
//!
//! [`ActiveKeyExchange::hybrid_component`] exposes the X25519 half, so with X25519 also in the
//! client's groups rustls sends a second, X25519-only key share in the same ClientHello: a
//! server without X25519MLKEM768 picks it and no HelloRetryRequest round trip is needed.
//!
//! Client side only: the agent never terminates TLS. [`SupportedKxGroup::start_and_complete`]
//! (the server side, which would have to check the client's encapsulation key per FIPS 203
//! 7.2) refuses.

use ml_kem::kem::Decapsulate as _;
use ml_kem::{EncodedSizeUser as _, KemCore as _, MlKem768};
use ring::agreement;
use ring::rand::{SecureRandom as _, SystemRandom};
use rustls::crypto::{ActiveKeyExchange, CompletedKeyExchange, SharedSecret, SupportedKxGroup};
use rustls::ffdhe_groups::FfdheGroup;
use rustls::{Error, NamedGroup, PeerMisbehaved, ProtocolVersion};

/// ML-KEM-768 encapsulation key (FIPS 203 table 3: 384·k + 32, k = 3).
pub const MLKEM768_ENCAPSULATION_KEY_LEN: usize = 1184;
/// ML-KEM-768 ciphertext (32·(du·k + dv), du = 10, dv = 4).
pub const MLKEM768_CIPHERTEXT_LEN: usize = 1088;
/// An X25519 public key or shared secret.
pub const X25519_LEN: usize = 32;
/// The client's key share: encapsulation key ‖ X25519 public key.
pub const CLIENT_SHARE_LEN: usize = MLKEM768_ENCAPSULATION_KEY_LEN + X25519_LEN;
/// The server's key share: ciphertext ‖ X25519 public key.
pub const SERVER_SHARE_LEN: usize = MLKEM768_CIPHERTEXT_LEN + X25519_LEN;
/// The combined secret: ML-KEM shared secret ‖ X25519 shared secret.
pub const SHARED_SECRET_LEN: usize = 32 + X25519_LEN;

/// The X25519MLKEM768 group (client side).
#[derive(Debug)]
pub struct X25519MlKem768;

/// For [`rustls::crypto::CryptoProvider::kx_groups`].
pub static X25519MLKEM768: &dyn SupportedKxGroup = &X25519MlKem768;

const INVALID_KEY_SHARE: Error = Error::PeerMisbehaved(PeerMisbehaved::InvalidKeyShare);

impl SupportedKxGroup for X25519MlKem768 {
    fn start(&self) -> Result<Box<dyn ActiveKeyExchange>, Error> {
        let rng = SystemRandom::new();
        // FIPS 203 ML-KEM.KeyGen: d and z, 32 random bytes each, from an approved RBG.
        let mut d = ml_kem::B32::default();
        let mut z = ml_kem::B32::default();
        rng.fill(&mut d)
            .and_then(|()| rng.fill(&mut z))
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let (dk, ek) = MlKem768::generate_deterministic(&d, &z);
        d.fill(0);
        z.fill(0);
        let x25519 = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng)
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let x25519_pub = x25519
            .compute_public_key()
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        let mut share = Vec::with_capacity(CLIENT_SHARE_LEN);
        share.extend_from_slice(&ek.as_bytes());
        share.extend_from_slice(x25519_pub.as_ref());
        if share.len() != CLIENT_SHARE_LEN {
            return Err(Error::General(format!(
                "X25519MLKEM768: client key share of {} bytes, expected {CLIENT_SHARE_LEN}",
                share.len()
            )));
        }
        Ok(Box::new(Active { dk, x25519, share }))
    }

    /// The server side: not offered (the agent is a TLS client only).
    fn start_and_complete(&self, _client_share: &[u8]) -> Result<CompletedKeyExchange, Error> {
        Err(Error::General(
            "X25519MLKEM768 is implemented for TLS clients only".into(),
        ))
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn name(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }

    /// TLS 1.3 only: a TLS 1.2 handshake never offers it.
    fn usable_for_version(&self, version: ProtocolVersion) -> bool {
        version == ProtocolVersion::TLSv1_3
    }
}

/// One handshake's key pair: the ML-KEM decapsulation key (zeroized on drop) and the X25519
/// ephemeral key (ring wipes it), with the share sent for them.
struct Active {
    dk: <MlKem768 as ml_kem::KemCore>::DecapsulationKey,
    x25519: agreement::EphemeralPrivateKey,
    /// Encapsulation key ‖ X25519 public key ([`CLIENT_SHARE_LEN`] bytes).
    share: Vec<u8>,
}

/// ring's X25519 with our ephemeral key and the peer's 32-byte public key.
fn x25519_agree(key: agreement::EphemeralPrivateKey, peer: &[u8]) -> Result<Vec<u8>, Error> {
    if peer.len() != X25519_LEN {
        return Err(INVALID_KEY_SHARE);
    }
    agreement::agree_ephemeral(
        key,
        &agreement::UnparsedPublicKey::new(&agreement::X25519, peer),
        <[u8]>::to_vec,
    )
    .map_err(|_| INVALID_KEY_SHARE)
}

impl ActiveKeyExchange for Active {
    fn complete(self: Box<Self>, peer_pub_key: &[u8]) -> Result<SharedSecret, Error> {
        if peer_pub_key.len() != SERVER_SHARE_LEN {
            return Err(INVALID_KEY_SHARE);
        }
        let (ct, x25519_peer) = peer_pub_key.split_at(MLKEM768_CIPHERTEXT_LEN);
        let ct = ml_kem::Ciphertext::<MlKem768>::try_from(ct).map_err(|_| INVALID_KEY_SHARE)?;
        let Active { dk, x25519, .. } = *self;
        let mlkem_secret = dk.decapsulate(&ct).map_err(|()| INVALID_KEY_SHARE)?;
        let x25519_secret = x25519_agree(x25519, x25519_peer)?;
        let mut secret = Vec::with_capacity(SHARED_SECRET_LEN);
        secret.extend_from_slice(&mlkem_secret);
        secret.extend_from_slice(&x25519_secret);
        Ok(SharedSecret::from(secret))
    }

    fn hybrid_component(&self) -> Option<(NamedGroup, &[u8])> {
        Some((
            NamedGroup::X25519,
            &self.share[MLKEM768_ENCAPSULATION_KEY_LEN..],
        ))
    }

    fn complete_hybrid_component(
        self: Box<Self>,
        peer_pub_key: &[u8],
    ) -> Result<SharedSecret, Error> {
        Ok(SharedSecret::from(x25519_agree(self.x25519, peer_pub_key)?))
    }

    fn pub_key(&self) -> &[u8] {
        &self.share
    }

    fn ffdhe_group(&self) -> Option<FfdheGroup<'static>> {
        None
    }

    fn group(&self) -> NamedGroup {
        NamedGroup::X25519MLKEM768
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ml_kem::EncapsulateDeterministic as _;

    /// The server side, for tests only: encapsulates to the client's key and does X25519,
    /// answering (server share, shared secret) in the draft's layout.
    fn server_side(client_share: &[u8]) -> (Vec<u8>, Vec<u8>) {
        assert_eq!(client_share.len(), CLIENT_SHARE_LEN);
        let (ek, x_client) = client_share.split_at(MLKEM768_ENCAPSULATION_KEY_LEN);
        let ek = ml_kem::Encoded::<<MlKem768 as ml_kem::KemCore>::EncapsulationKey>::try_from(ek)
            .unwrap();
        let ek = <MlKem768 as ml_kem::KemCore>::EncapsulationKey::from_bytes(&ek);
        let rng = SystemRandom::new();
        let mut m = ml_kem::B32::default();
        rng.fill(&mut m).unwrap();
        let (ct, ss) = ek.encapsulate_deterministic(&m).unwrap();
        let x = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        let x_pub = x.compute_public_key().unwrap();
        let x_ss = x25519_agree(x, x_client).unwrap();
        (
            [ct.as_slice(), x_pub.as_ref()].concat(),
            [ss.as_slice(), &x_ss].concat(),
        )
    }

    fn secret_bytes(s: &SharedSecret) -> Vec<u8> {
        s.secret_bytes().to_vec()
    }

    #[test]
    fn the_group_is_0x11ec_for_tls13_only() {
        assert_eq!(u16::from(X25519MLKEM768.name()), 0x11EC);
        assert!(X25519MLKEM768.usable_for_version(ProtocolVersion::TLSv1_3));
        assert!(!X25519MLKEM768.usable_for_version(ProtocolVersion::TLSv1_2));
        assert!(X25519MLKEM768
            .start_and_complete(&[0; CLIENT_SHARE_LEN])
            .is_err());
    }

    #[test]
    fn the_client_share_is_the_encapsulation_key_then_the_x25519_key() {
        let kx = X25519MLKEM768.start().unwrap();
        assert_eq!(kx.group(), NamedGroup::X25519MLKEM768);
        let share = kx.pub_key();
        assert_eq!(share.len(), 1216);
        let (group, x25519) = kx.hybrid_component().unwrap();
        assert_eq!(group, NamedGroup::X25519);
        assert_eq!(x25519.len(), 32);
        assert_eq!(&share[1184..], x25519, "X25519 last");
        // The first 1184 bytes parse as an ML-KEM-768 encapsulation key and encode back the same.
        let ek = ml_kem::Encoded::<<MlKem768 as ml_kem::KemCore>::EncapsulationKey>::try_from(
            &share[..1184],
        )
        .unwrap();
        let parsed = <MlKem768 as ml_kem::KemCore>::EncapsulationKey::from_bytes(&ek);
        assert_eq!(parsed.as_bytes().as_slice(), &share[..1184]);
        // Fresh keys each handshake.
        let other = X25519MLKEM768.start().unwrap();
        assert_ne!(other.pub_key(), share);
    }

    #[test]
    fn a_round_trip_with_a_server_gives_both_sides_the_same_64_byte_secret() {
        let kx = X25519MLKEM768.start().unwrap();
        let (server_share, server_secret) = server_side(kx.pub_key());
        assert_eq!(server_share.len(), 1120);
        let client_secret = secret_bytes(&kx.complete(&server_share).unwrap());
        assert_eq!(client_secret.len(), 64);
        assert_eq!(
            client_secret, server_secret,
            "ML-KEM secret first, then X25519"
        );
    }

    #[test]
    fn the_x25519_component_alone_agrees_with_a_classical_server() {
        let kx = X25519MLKEM768.start().unwrap();
        let (_, client_x25519) = kx.hybrid_component().unwrap();
        let rng = SystemRandom::new();
        let server = agreement::EphemeralPrivateKey::generate(&agreement::X25519, &rng).unwrap();
        let server_pub = server.compute_public_key().unwrap();
        let server_secret = x25519_agree(server, client_x25519).unwrap();
        let client_secret = kx.complete_hybrid_component(server_pub.as_ref()).unwrap();
        assert_eq!(secret_bytes(&client_secret), server_secret);
    }

    #[test]
    fn a_malformed_server_share_is_an_error() {
        let bad = |share: &[u8]| {
            let kx = X25519MLKEM768.start().unwrap();
            kx.complete(share).err()
        };
        for len in [0, 32, 1088, 1119, 1121, 1216] {
            assert_eq!(bad(&vec![7; len]), Some(INVALID_KEY_SHARE), "{len} bytes");
        }
        // Right length, but an X25519 key of low order (all zeros: the secret would be zero).
        let kx = X25519MLKEM768.start().unwrap();
        let (mut share, _) = server_side(kx.pub_key());
        share[1088..].fill(0);
        assert_eq!(kx.complete(&share).err(), Some(INVALID_KEY_SHARE));
        // A wrong-length classical share for the X25519 component.
        let kx = X25519MLKEM768.start().unwrap();
        assert_eq!(
            kx.complete_hybrid_component(&[9; 31]).err(),
            Some(INVALID_KEY_SHARE)
        );
    }

    #[test]
    fn a_tampered_ciphertext_gives_a_different_secret_not_a_panic() {
        let kx = X25519MLKEM768.start().unwrap();
        let (mut share, server_secret) = server_side(kx.pub_key());
        share[0] ^= 1;
        let client = secret_bytes(&kx.complete(&share).unwrap());
        assert_ne!(client[..32], server_secret[..32], "implicit rejection");
        assert_eq!(client[32..], server_secret[32..]);
    }
}

//! Domain-separated signing: every signature covers `"agentmesh/v1/<context>\0" ‖ bytes`.

use crate::error::CryptoError;
use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Length of an ed25519 signature in bytes.
pub const SIGNATURE_LEN: usize = 64;

/// The purposes a signature may serve. A signature made for one context never verifies for
/// another, so a signed record cannot be replayed as a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Context {
    /// A node's own gossip record.
    NodeRecord,
    /// A membership (admission) certificate signed by the mesh root.
    AdmissionCert,
    /// A revocation signed by the mesh root.
    Revocation,
    /// A quorum vote signed by a callee node.
    Vote,
    /// An audit log checkpoint.
    AuditCheckpoint,
    /// An audit log's genesis entry (the node it belongs to).
    AuditGenesis,
    /// A routing/RBAC policy signed by the mesh root.
    Policy,
    /// A free-form context used by tests and extensions. Its signed prefix is
    /// `"agentmesh/v1/custom/<label>\0"`, so a custom label can never collide with a built-in
    /// context (built-in labels contain no `/`). The label must not contain a NUL byte.
    Custom(&'static str),
}

impl Context {
    /// The context's label. For built-in contexts this is exactly what appears in the signed
    /// prefix; for [`Context::Custom`] the prefix is `custom/<label>` (see [`domain_message`]).
    pub fn label(&self) -> &'static str {
        match self {
            Context::NodeRecord => "node-record",
            Context::AdmissionCert => "admission-cert",
            Context::Revocation => "revocation",
            Context::Vote => "vote",
            Context::AuditCheckpoint => "audit-checkpoint",
            Context::AuditGenesis => "audit-genesis",
            Context::Policy => "policy",
            Context::Custom(s) => s,
        }
    }
}

/// Namespace inserted before [`Context::Custom`] labels so that they cannot impersonate a
/// built-in context: `Custom("vote")` signs under `custom/vote`, never under `vote`.
const CUSTOM_NAMESPACE: &str = "custom/";

/// The exact bytes that are signed: `"agentmesh/v1/<context>\0" ‖ msg`.
///
/// # Panics
/// If a [`Context::Custom`] label contains a NUL byte: the terminator would become ambiguous
/// and two custom contexts could share signatures. Labels are `'static` constants, so this is
/// a programming error, never a reaction to input.
pub fn domain_message(ctx: Context, msg: &[u8]) -> Vec<u8> {
    let label = ctx.label();
    assert!(
        !label.as_bytes().contains(&0),
        "context label {label:?} contains a NUL byte"
    );
    let namespace = match ctx {
        Context::Custom(_) => CUSTOM_NAMESPACE,
        _ => "",
    };
    let mut out = Vec::with_capacity(13 + namespace.len() + label.len() + 1 + msg.len());
    out.extend_from_slice(b"agentmesh/v1/");
    out.extend_from_slice(namespace.as_bytes());
    out.extend_from_slice(label.as_bytes());
    out.push(0);
    out.extend_from_slice(msg);
    out
}

/// An ed25519 signature, serialised as 64 raw bytes.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Signature(#[serde(with = "sig_bytes")] pub [u8; SIGNATURE_LEN]);

impl std::fmt::Debug for Signature {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Signature({}…)", hex::encode(&self.0[..8]))
    }
}

mod sig_bytes {
    use serde::de::{Error, SeqAccess, Visitor};
    use serde::{Deserializer, Serializer};
    pub fn serialize<S: Serializer>(v: &[u8; 64], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = [u8; 64];
        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("64 signature bytes")
        }
        fn visit_bytes<E: Error>(self, v: &[u8]) -> Result<[u8; 64], E> {
            v.try_into().map_err(|_| E::invalid_length(v.len(), &self))
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut a: A) -> Result<[u8; 64], A::Error> {
            let mut out = [0u8; 64];
            for (i, b) in out.iter_mut().enumerate() {
                *b = a
                    .next_element()?
                    .ok_or_else(|| A::Error::invalid_length(i, &self))?;
            }
            if a.next_element::<u8>()?.is_some() {
                return Err(A::Error::invalid_length(65, &self));
            }
            Ok(out)
        }
    }
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<[u8; 64], D::Error> {
        d.deserialize_bytes(V)
    }
}

/// Signs `msg` under `ctx` with `key`.
pub fn sign_with(key: &SigningKey, ctx: Context, msg: &[u8]) -> Signature {
    Signature(key.sign(&domain_message(ctx, msg)).to_bytes())
}

/// Verifies a signature with `verify_strict`, refusing weak (small-order) public keys.
pub fn verify_with(
    public: &[u8; 32],
    ctx: Context,
    msg: &[u8],
    sig: &Signature,
) -> Result<(), CryptoError> {
    let vk = VerifyingKey::from_bytes(public).map_err(|_| CryptoError::InvalidPublicKey)?;
    if vk.is_weak() {
        return Err(CryptoError::WeakKey);
    }
    let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
    vk.verify_strict(&domain_message(ctx, msg), &sig)
        .map_err(|_| CryptoError::BadSignature)
}

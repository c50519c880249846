//! Errors shared by the signing primitives.

/// Why a key, signature or encoded value was refused. No variant changes any state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CryptoError {
    /// The public key bytes are not a valid ed25519 point.
    #[error("invalid public key")]
    InvalidPublicKey,
    /// The public key is a weak (small-order) key, which `verify_strict` semantics refuse.
    #[error("weak public key refused")]
    WeakKey,
    /// The signature does not verify for this key, context and message.
    #[error("signature does not verify")]
    BadSignature,
    /// Bytes could not be decoded into the expected type (hostile or corrupt input).
    #[error("decode error: {0}")]
    Decode(String),
    /// A string is not a valid node id (expected a libp2p peer id of an ed25519 key).
    #[error("invalid node id: {0}")]
    InvalidNodeId(String),
    /// An encoded value exceeds its size limit; checked before decoding.
    #[error("encoded value is {len} bytes, limit is {limit}")]
    TooLarge {
        /// Size seen.
        len: usize,
        /// Limit in force.
        limit: usize,
    },
}

/// Lets `?` carry a text-parse failure where a [`CryptoError`] is expected.
impl From<crate::identity::ParseNodeIdError> for CryptoError {
    fn from(e: crate::identity::ParseNodeIdError) -> Self {
        CryptoError::InvalidNodeId(e.to_string())
    }
}

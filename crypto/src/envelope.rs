//! The signed envelope that every signed value (records, certificates, revocations, votes) uses.

use crate::error::CryptoError;
use crate::identity::{Keypair, NodeId};
use crate::sign::{Context, Signature};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::marker::PhantomData;

/// Largest encoded envelope that [`Signed::from_bytes`] will decode, in bytes. Checked before
/// any decoding so that hostile input cannot make us allocate or parse more than this.
pub const ENVELOPE_LEN_MAX: usize = 64 * 1024;

/// Decodes `bytes` as exactly one postcard value: trailing bytes are refused, so one value has
/// exactly one accepted encoding.
pub(crate) fn decode_exact<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CryptoError> {
    let (value, rest) =
        postcard::take_from_bytes(bytes).map_err(|e| CryptoError::Decode(e.to_string()))?;
    if !rest.is_empty() {
        return Err(CryptoError::Decode(format!(
            "{} trailing bytes after value",
            rest.len()
        )));
    }
    Ok(value)
}

/// Decodes `bytes` as exactly one postcard value and refuses any encoding other than the one
/// `postcard` itself produces. postcard accepts over-long varints (`0x85 0x00` reads as 5), so
/// without this check a relay could re-encode an envelope into new bytes with the same value,
/// defeating deduplication by wire hash. Only for types whose encoding is deterministic (no
/// hash maps): the envelopes of this crate, never arbitrary payloads.
pub(crate) fn decode_canonical<T: Serialize + DeserializeOwned>(
    bytes: &[u8],
) -> Result<T, CryptoError> {
    let value: T = decode_exact(bytes)?;
    let again = postcard::to_allocvec(&value).map_err(|e| CryptoError::Decode(e.to_string()))?;
    if again != bytes {
        return Err(CryptoError::Decode("non-canonical encoding".to_string()));
    }
    Ok(value)
}

/// Refuses `bytes` longer than `limit` before anything is decoded.
pub(crate) fn check_len(bytes: &[u8], limit: usize) -> Result<(), CryptoError> {
    if bytes.len() > limit {
        return Err(CryptoError::TooLarge {
            len: bytes.len(),
            limit,
        });
    }
    Ok(())
}

/// A value signed by `signer`. The signature covers the exact postcard bytes in `payload`, so
/// verification never depends on re-encoding. Decoding happens only after the signature holds.
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub struct Signed<T> {
    /// Who signed.
    pub signer: NodeId,
    /// The postcard encoding of the value.
    pub payload: Vec<u8>,
    /// Signature over `"agentmesh/v1/<context>\0" ‖ payload`.
    pub signature: Signature,
    #[serde(skip)]
    _t: PhantomData<fn() -> T>,
}

impl<T> Clone for Signed<T> {
    fn clone(&self) -> Self {
        Signed {
            signer: self.signer,
            payload: self.payload.clone(),
            signature: self.signature,
            _t: PhantomData,
        }
    }
}

impl<T> PartialEq for Signed<T> {
    fn eq(&self, o: &Self) -> bool {
        self.signer == o.signer && self.payload == o.payload && self.signature == o.signature
    }
}
impl<T> Eq for Signed<T> {}

impl<T> std::fmt::Debug for Signed<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Signed{{signer: {:?}, {} bytes}}",
            self.signer,
            self.payload.len()
        )
    }
}

impl<T> Signed<T> {
    /// The postcard encoding of the whole envelope (signer, payload, signature).
    pub fn to_bytes(&self) -> Vec<u8> {
        postcard::to_allocvec(self).expect("serialising to a Vec cannot fail")
    }

    /// Decodes an envelope of at most [`ENVELOPE_LEN_MAX`] bytes. Nothing is verified; call
    /// [`Signed::verify`] next. Only the canonical encoding is accepted (no trailing bytes, no
    /// over-long length prefixes), so `from_bytes(b)?.to_bytes() == b`.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        check_len(bytes, ENVELOPE_LEN_MAX)?;
        decode_canonical(bytes)
    }
}

impl<T: Serialize + DeserializeOwned> Signed<T> {
    /// Encodes and signs `value` with `key` under `ctx`.
    pub fn sign(key: &Keypair, ctx: Context, value: &T) -> Self {
        let payload = postcard::to_allocvec(value).expect("serialising to a Vec cannot fail");
        let signature = key.sign(ctx, &payload);
        Signed {
            signer: key.node_id(),
            payload,
            signature,
            _t: PhantomData,
        }
    }

    /// Assembles an envelope from its parts (for vectors and decoders); nothing is checked.
    pub fn from_parts(signer: NodeId, payload: Vec<u8>, signature: Signature) -> Self {
        Signed {
            signer,
            payload,
            signature,
            _t: PhantomData,
        }
    }

    /// Checks the signature, then decodes the payload.
    pub fn verify(&self, ctx: Context) -> Result<T, CryptoError> {
        self.signer.verify(ctx, &self.payload, &self.signature)?;
        self.decode_unverified()
    }

    /// Like [`Signed::verify`], but also requires a specific signer.
    pub fn verify_by(&self, expected: &NodeId, ctx: Context) -> Result<T, CryptoError> {
        if &self.signer != expected {
            return Err(CryptoError::BadSignature);
        }
        self.verify(ctx)
    }

    /// Decodes the payload without checking the signature. Only for values already verified.
    /// The payload must be exactly one encoded value; trailing bytes are refused.
    pub fn decode_unverified(&self) -> Result<T, CryptoError> {
        decode_exact(&self.payload)
    }

    /// A SHA-256 digest of the signed bytes and signature: a stable identity of this envelope.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        h.update(self.signer.0);
        h.update(&self.payload);
        h.update(self.signature.0);
        h.finalize().into()
    }
}

//! Identities and signatures for agentmesh.
//!
//! Everything here is pure: no sockets, no clock, no global RNG. Time arrives as an argument
//! (`now_unix_s`) and randomness as a caller-owned RNG. The one exception is [`keyfile`], which
//! reads and writes the node key file with mode 0600.

pub mod audit;
pub mod cert;
pub mod envelope;
pub mod error;
pub mod identity;
pub mod keyfile;
pub mod revocation;
pub mod sign;

pub use audit::{line_hash, ChainBreak, ChainChecker, ChainHash, Checkpoint, GENESIS};
pub use cert::{AdmissionCert, CertError, SignedCert};
pub use envelope::Signed;
pub use error::CryptoError;
pub use identity::{Keypair, NodeId, ParseNodeIdError};
pub use revocation::{Revocation, SignedRevocation};
pub use sign::{domain_message, Context, Signature, SIGNATURE_LEN};

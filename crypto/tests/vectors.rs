//! Known-answer test vectors in `tests/vectors/*.json`.
//!
//! `check_known_good` and `check_known_bad` load the files and check each verdict; they do not
//! depend on the generator. `vectors_are_up_to_date` rebuilds the vectors from fixed seeds and
//! compares them with the files; with `AGENTMESH_REGEN_VECTORS=1` it rewrites the files instead.

use agentmesh_crypto::{
    domain_message, AdmissionCert, CertError, Context, CryptoError, Keypair, NodeId, Revocation,
    Signature, Signed, SignedCert, SignedRevocation,
};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use std::str::FromStr;

/// One vector file.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct VectorFile {
    comment: String,
    vectors: Vec<Vector>,
}

/// One case. `expect` is `"ok"` or the name of the error variant expected.
#[derive(Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Vector {
    /// A raw signature: `public_key` signed `"agentmesh/v1/<context>\0" ‖ message`.
    Signature {
        name: String,
        context: String,
        public_key: String,
        message: String,
        /// The exact bytes covered by the signature (prefix, NUL, message).
        signed_bytes: String,
        signature: String,
        expect: String,
    },
    /// A postcard-encoded `SignedCert`, verified as `presenter` at `now_unix_s`.
    Cert {
        name: String,
        root: String,
        mesh_id: String,
        presenter: String,
        now_unix_s: u64,
        encoded: String,
        expect: String,
    },
    /// A postcard-encoded `SignedRevocation`, verified against `root` for `mesh_id`.
    Revocation {
        name: String,
        root: String,
        mesh_id: String,
        encoded: String,
        expect: String,
    },
}

const OK: &str = "ok";
const MESH: &str = "vector-mesh";

fn vectors_dir() -> PathBuf {
    // The run-time value: cargo may reuse a test binary built in another checkout of the
    // same workspace (a shared target dir), whose compile-time path is gone.
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join("tests/vectors")
}

fn context_from_label(label: &str) -> Context {
    match label {
        "node-record" => Context::NodeRecord,
        "admission-cert" => Context::AdmissionCert,
        "revocation" => Context::Revocation,
        "vote" => Context::Vote,
        "audit-checkpoint" => Context::AuditCheckpoint,
        "policy" => Context::Policy,
        other => panic!("unknown context label {other:?} in vectors"),
    }
}

fn crypto_kind(e: &CryptoError) -> &'static str {
    match e {
        CryptoError::InvalidPublicKey => "InvalidPublicKey",
        CryptoError::WeakKey => "WeakKey",
        CryptoError::BadSignature => "BadSignature",
        CryptoError::Decode(_) => "Decode",
        CryptoError::InvalidNodeId(_) => "InvalidNodeId",
        CryptoError::TooLarge { .. } => "TooLarge",
    }
}

fn cert_kind(e: &CertError) -> &'static str {
    match e {
        CertError::WrongRoot { .. } => "WrongRoot",
        CertError::Crypto(c) => crypto_kind(c),
        CertError::WrongMesh { .. } => "WrongMesh",
        CertError::WrongNode { .. } => "WrongNode",
        CertError::NotYetValid { .. } => "NotYetValid",
        CertError::Expired { .. } => "Expired",
        CertError::Limit(_) => "Limit",
    }
}

fn verdict<E>(r: Result<(), E>, kind: impl Fn(&E) -> &'static str) -> String {
    match r {
        Ok(()) => OK.to_string(),
        Err(e) => kind(&e).to_string(),
    }
}

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Runs one vector and returns its verdict (`"ok"` or an error kind).
fn run(v: &Vector) -> String {
    match v {
        Vector::Signature {
            context,
            public_key,
            message,
            signed_bytes,
            signature,
            ..
        } => {
            let ctx = context_from_label(context);
            let msg = hex::decode(message).unwrap();
            assert_eq!(
                hex::encode(domain_message(ctx, &msg)),
                *signed_bytes,
                "signed_bytes must follow the prefix rule"
            );
            let sig = Signature(unhex(signature));
            verdict(
                NodeId(unhex(public_key)).verify(ctx, &msg, &sig),
                crypto_kind,
            )
        }
        Vector::Cert {
            root,
            mesh_id,
            presenter,
            now_unix_s,
            encoded,
            ..
        } => {
            let root = NodeId::from_str(root).unwrap();
            let presenter = NodeId::from_str(presenter).unwrap();
            let r = SignedCert::from_bytes(&hex::decode(encoded).unwrap())
                .and_then(|c| c.verify(&root, mesh_id, &presenter, *now_unix_s))
                .map(|_| ());
            verdict(r, cert_kind)
        }
        Vector::Revocation {
            root,
            mesh_id,
            encoded,
            ..
        } => {
            let root = NodeId::from_str(root).unwrap();
            let r = SignedRevocation::from_bytes(&hex::decode(encoded).unwrap())
                .and_then(|r| r.verify(&root, mesh_id))
                .map(|_| ());
            verdict(r, crypto_kind)
        }
    }
}

fn name_and_expect(v: &Vector) -> (&str, &str) {
    match v {
        Vector::Signature { name, expect, .. }
        | Vector::Cert { name, expect, .. }
        | Vector::Revocation { name, expect, .. } => (name, expect),
    }
}

fn load(file: &str) -> VectorFile {
    let text = std::fs::read_to_string(vectors_dir().join(file)).unwrap();
    serde_json::from_str(&text).unwrap()
}

#[test]
fn check_known_good() {
    let file = load("known_good.json");
    assert!(file.vectors.len() >= 8);
    for v in &file.vectors {
        let (name, expect) = name_and_expect(v);
        assert_eq!(expect, OK, "{name}: known_good holds only passing vectors");
        assert_eq!(run(v), OK, "{name}");
    }
}

#[test]
fn check_known_bad() {
    let file = load("known_bad.json");
    assert!(file.vectors.len() >= 10);
    for v in &file.vectors {
        let (name, expect) = name_and_expect(v);
        assert_ne!(expect, OK, "{name}: known_bad holds only failing vectors");
        assert_eq!(run(v), expect, "{name}");
    }
}

// ---- generator -------------------------------------------------------------------------

/// Fixed keys: the secret seed is 32 copies of one byte, so other implementations can rebuild
/// them. 0x01 is the mesh root, 0x02 the admitted node, 0x03 a rogue root, 0x04 a stranger.
fn key(seed: u8) -> Keypair {
    Keypair::from_secret([seed; 32])
}

const BUILT_IN: [Context; 6] = [
    Context::NodeRecord,
    Context::AdmissionCert,
    Context::Revocation,
    Context::Vote,
    Context::AuditCheckpoint,
    Context::Policy,
];

const GROUP_ORDER_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

fn sig_vector(
    name: &str,
    ctx: Context,
    public_key: [u8; 32],
    msg: &[u8],
    sig: Signature,
    expect: &str,
) -> Vector {
    Vector::Signature {
        name: name.to_string(),
        context: ctx.label().to_string(),
        public_key: hex::encode(public_key),
        message: hex::encode(msg),
        signed_bytes: hex::encode(domain_message(ctx, msg)),
        signature: hex::encode(sig.0),
        expect: expect.to_string(),
    }
}

fn cert_vector(
    name: &str,
    cert_bytes: Vec<u8>,
    presenter: NodeId,
    now: u64,
    expect: &str,
) -> Vector {
    cert_vector_for(name, cert_bytes, MESH, presenter, now, expect)
}

fn cert_vector_for(
    name: &str,
    cert_bytes: Vec<u8>,
    mesh: &str,
    presenter: NodeId,
    now: u64,
    expect: &str,
) -> Vector {
    Vector::Cert {
        name: name.to_string(),
        root: key(1).node_id().to_string(),
        mesh_id: mesh.to_string(),
        presenter: presenter.to_string(),
        now_unix_s: now,
        encoded: hex::encode(cert_bytes),
        expect: expect.to_string(),
    }
}

fn rev_vector(name: &str, bytes: Vec<u8>, mesh: &str, expect: &str) -> Vector {
    Vector::Revocation {
        name: name.to_string(),
        root: key(1).node_id().to_string(),
        mesh_id: mesh.to_string(),
        encoded: hex::encode(bytes),
        expect: expect.to_string(),
    }
}

fn admission() -> AdmissionCert {
    AdmissionCert {
        mesh_id: MESH.to_string(),
        node_id: key(2).node_id(),
        roles: vec!["worker".to_string(), "planner".to_string()],
        not_before: 1_700_000_000,
        not_after: 1_700_086_400,
    }
}

fn revocation() -> Revocation {
    Revocation {
        mesh_id: MESH.to_string(),
        node_id: key(2).node_id(),
        issued_at: 1_700_050_000,
        reason: "key compromised".to_string(),
    }
}

fn generate_good() -> VectorFile {
    let node = key(2);
    let mut vectors = Vec::new();
    for ctx in BUILT_IN {
        let msg = format!("agentmesh test vector: {}", ctx.label()).into_bytes();
        vectors.push(sig_vector(
            &format!("signature in context {}", ctx.label()),
            ctx,
            *node.node_id().as_bytes(),
            &msg,
            node.sign(ctx, &msg),
            OK,
        ));
    }
    vectors.push(sig_vector(
        "signature over an empty message",
        Context::Vote,
        *node.node_id().as_bytes(),
        b"",
        node.sign(Context::Vote, b""),
        OK,
    ));
    let cert = admission().sign(&key(1)).unwrap().to_bytes();
    let a = admission();
    vectors.push(cert_vector(
        "admission cert, mid-window",
        cert.clone(),
        node.node_id(),
        a.not_before + 3_600,
        OK,
    ));
    vectors.push(cert_vector(
        "admission cert, at not_before",
        cert.clone(),
        node.node_id(),
        a.not_before,
        OK,
    ));
    vectors.push(cert_vector(
        "admission cert, last valid second",
        cert,
        node.node_id(),
        a.not_after - 1,
        OK,
    ));
    vectors.push(rev_vector(
        "revocation",
        revocation().sign(&key(1)).to_bytes(),
        MESH,
        OK,
    ));
    VectorFile {
        comment: "Passing vectors. Keys: secret seed = 32 copies of one byte (0x01 root, 0x02 node). \
                  Regenerate with AGENTMESH_REGEN_VECTORS=1 cargo test -p agentmesh-crypto --test vectors."
            .to_string(),
        vectors,
    }
}

fn generate_bad() -> VectorFile {
    let node = key(2);
    let node_pk = *node.node_id().as_bytes();
    let a = admission();
    let mid = a.not_before + 3_600;
    let mut vectors = Vec::new();

    // Signatures.
    let msg = b"agentmesh test vector: cross-context".to_vec();
    vectors.push(sig_vector(
        "node-record signature checked as a vote",
        Context::Vote,
        node_pk,
        &msg,
        node.sign(Context::NodeRecord, &msg),
        "BadSignature",
    ));
    vectors.push(sig_vector(
        "admission-cert signature checked as a revocation",
        Context::Revocation,
        node_pk,
        &msg,
        node.sign(Context::AdmissionCert, &msg),
        "BadSignature",
    ));
    let mut flipped = msg.clone();
    flipped[0] ^= 1;
    vectors.push(sig_vector(
        "message bit flipped",
        Context::Vote,
        node_pk,
        &flipped,
        node.sign(Context::Vote, &msg),
        "BadSignature",
    ));
    let mut identity = [0u8; 32];
    identity[0] = 1;
    let mut forged = [0u8; 64];
    forged[..32].copy_from_slice(&identity);
    vectors.push(sig_vector(
        "weak key: identity point, R = identity, S = 0 (lax verifiers accept any message)",
        Context::AdmissionCert,
        identity,
        b"admit me",
        Signature(forged),
        "WeakKey",
    ));
    let mut order_two = [0xff; 32];
    order_two[0] = 0xec;
    order_two[31] = 0x7f;
    vectors.push(sig_vector(
        "weak key: order-2 point (0, -1)",
        Context::Vote,
        order_two,
        &msg,
        node.sign(Context::Vote, &msg),
        "WeakKey",
    ));
    let off_curve = (2u8..=255)
        .map(|y| {
            let mut b = [0u8; 32];
            b[0] = y;
            b
        })
        .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
        .unwrap();
    vectors.push(sig_vector(
        "public key not on the curve",
        Context::Vote,
        off_curve,
        &msg,
        node.sign(Context::Vote, &msg),
        "InvalidPublicKey",
    ));
    let good = node.sign(Context::NodeRecord, &msg);
    let mut s_plus_l = good.0;
    let mut carry = 0u16;
    for (i, l) in GROUP_ORDER_L.iter().enumerate() {
        let sum = u16::from(s_plus_l[32 + i]) + u16::from(*l) + carry;
        s_plus_l[32 + i] = sum as u8;
        carry = sum >> 8;
    }
    assert_eq!(carry, 0);
    vectors.push(sig_vector(
        "non-canonical signature: S + L (malleated copy of a valid signature)",
        Context::NodeRecord,
        node_pk,
        &msg,
        Signature(s_plus_l),
        "BadSignature",
    ));

    // Certificates.
    let cert = a.sign(&key(1)).unwrap();
    vectors.push(cert_vector(
        "cert expired: now == not_after",
        cert.to_bytes(),
        node.node_id(),
        a.not_after,
        "Expired",
    ));
    vectors.push(cert_vector(
        "cert not yet valid",
        cert.to_bytes(),
        node.node_id(),
        a.not_before - 1,
        "NotYetValid",
    ));
    vectors.push(cert_vector_for(
        "cert for another mesh",
        cert.to_bytes(),
        "other-mesh",
        node.node_id(),
        mid,
        "WrongMesh",
    ));
    vectors.push(cert_vector(
        "cert presented by another node",
        cert.to_bytes(),
        key(4).node_id(),
        mid,
        "WrongNode",
    ));
    vectors.push(cert_vector(
        "cert signed by another root",
        a.sign(&key(3)).unwrap().to_bytes(),
        node.node_id(),
        mid,
        "WrongRoot",
    ));
    let rogue = a.sign(&key(3)).unwrap();
    let forged_signer = SignedCert(Signed::from_parts(
        key(1).node_id(),
        rogue.0.payload,
        rogue.0.signature,
    ));
    vectors.push(cert_vector(
        "cert signed by another root, signer field rewritten to the root",
        forged_signer.to_bytes(),
        node.node_id(),
        mid,
        "BadSignature",
    ));
    vectors.push(cert_vector(
        "cert body signed by the root under the revocation context",
        SignedCert(Signed::sign(&key(1), Context::Revocation, &a)).to_bytes(),
        node.node_id(),
        mid,
        "BadSignature",
    ));
    let mut trailing = cert.to_bytes();
    trailing.push(0);
    vectors.push(cert_vector(
        "cert with a trailing byte",
        trailing,
        node.node_id(),
        mid,
        "Decode",
    ));
    let too_many_roles = AdmissionCert {
        roles: (0..17).map(|i| format!("role-{i}")).collect(),
        ..admission()
    };
    vectors.push(cert_vector(
        "root-signed cert over the role limit",
        SignedCert(Signed::sign(
            &key(1),
            Context::AdmissionCert,
            &too_many_roles,
        ))
        .to_bytes(),
        node.node_id(),
        mid,
        "Limit",
    ));

    // Revocations.
    let rev = revocation().sign(&key(1));
    vectors.push(rev_vector(
        "revocation for another mesh",
        rev.to_bytes(),
        "other-mesh",
        "BadSignature",
    ));
    vectors.push(rev_vector(
        "revocation signed by another root",
        revocation().sign(&key(3)).to_bytes(),
        MESH,
        "BadSignature",
    ));
    let mut tampered = rev.clone();
    *tampered.0.payload.last_mut().unwrap() ^= 1;
    vectors.push(rev_vector(
        "revocation with a tampered reason",
        tampered.to_bytes(),
        MESH,
        "BadSignature",
    ));

    VectorFile {
        comment:
            "Failing vectors; `expect` names the error variant. Keys: secret seed = 32 copies \
                  of one byte (0x01 root, 0x02 node, 0x03 rogue root, 0x04 stranger). Regenerate \
                  with AGENTMESH_REGEN_VECTORS=1 cargo test -p agentmesh-crypto --test vectors."
                .to_string(),
        vectors,
    }
}

fn render(file: &VectorFile) -> String {
    let mut s = serde_json::to_string_pretty(file).unwrap();
    s.push('\n');
    s
}

#[test]
fn vectors_are_up_to_date() {
    let regen = std::env::var("AGENTMESH_REGEN_VECTORS").is_ok_and(|v| v == "1");
    for (file, generated) in [
        ("known_good.json", generate_good()),
        ("known_bad.json", generate_bad()),
    ] {
        let path = vectors_dir().join(file);
        let text = render(&generated);
        if regen {
            std::fs::write(&path, &text).unwrap();
        } else {
            let on_disk = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                on_disk == text,
                "{} is stale or missing; rerun with AGENTMESH_REGEN_VECTORS=1",
                path.display()
            );
        }
    }
}

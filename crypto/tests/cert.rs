//! Admission certificates and revocations, as a table of cases.

use agentmesh_crypto::cert::{CERT_LEN_MAX, MESH_ID_LEN_MAX, ROLES_MAX, ROLE_LEN_MAX};
use agentmesh_crypto::revocation::{REASON_LEN_MAX, REVOCATION_LEN_MAX};
use agentmesh_crypto::{
    AdmissionCert, CertError, Context, CryptoError, Keypair, NodeId, Revocation, Signed,
    SignedCert, SignedRevocation,
};

const MESH: &str = "mesh-a";
const NOT_BEFORE: u64 = 1_000;
const NOT_AFTER: u64 = 2_000;

fn root() -> Keypair {
    Keypair::from_secret([1; 32])
}
fn node() -> NodeId {
    Keypair::from_secret([2; 32]).node_id()
}
fn other() -> Keypair {
    Keypair::from_secret([3; 32])
}

fn body() -> AdmissionCert {
    AdmissionCert {
        mesh_id: MESH.to_string(),
        node_id: node(),
        roles: vec!["worker".to_string(), "planner".to_string()],
        not_before: NOT_BEFORE,
        not_after: NOT_AFTER,
    }
}

fn cert() -> SignedCert {
    body().sign(&root()).unwrap()
}

/// One verification: what is presented, the verifier's view, and the verdict expected.
struct Case {
    name: &'static str,
    cert: SignedCert,
    root: NodeId,
    mesh: &'static str,
    presenter: NodeId,
    now: u64,
    expect: Result<(), CertError>,
}

fn case(name: &'static str, now: u64, expect: Result<(), CertError>) -> Case {
    Case {
        name,
        cert: cert(),
        root: root().node_id(),
        mesh: MESH,
        presenter: node(),
        now,
        expect,
    }
}

#[test]
fn certificate_verification_table() {
    let forged_signer = {
        // Signed by another key, but claiming the root as signer.
        let by_other = body().sign(&other()).unwrap();
        SignedCert(Signed::from_parts(
            root().node_id(),
            by_other.0.payload.clone(),
            by_other.0.signature,
        ))
    };
    let cases = vec![
        case("valid at not_before (inclusive)", NOT_BEFORE, Ok(())),
        case("valid in the middle", 1_500, Ok(())),
        case("valid one second before not_after", NOT_AFTER - 1, Ok(())),
        case(
            "expired exactly at not_after",
            NOT_AFTER,
            Err(CertError::Expired {
                not_after: NOT_AFTER,
                now: NOT_AFTER,
            }),
        ),
        case(
            "expired long after",
            u64::MAX,
            Err(CertError::Expired {
                not_after: NOT_AFTER,
                now: u64::MAX,
            }),
        ),
        case(
            "not yet valid one second early",
            NOT_BEFORE - 1,
            Err(CertError::NotYetValid {
                not_before: NOT_BEFORE,
                now: NOT_BEFORE - 1,
            }),
        ),
        case(
            "not yet valid at zero",
            0,
            Err(CertError::NotYetValid {
                not_before: NOT_BEFORE,
                now: 0,
            }),
        ),
        Case {
            mesh: "mesh-b",
            ..case(
                "wrong mesh",
                1_500,
                Err(CertError::WrongMesh {
                    found: MESH.to_string(),
                    expected: "mesh-b".to_string(),
                }),
            )
        },
        Case {
            presenter: other().node_id(),
            ..case(
                "presented by another node",
                1_500,
                Err(CertError::WrongNode {
                    found: node(),
                    presenter: other().node_id(),
                }),
            )
        },
        Case {
            cert: body().sign(&other()).unwrap(),
            ..case(
                "signed by another root",
                1_500,
                Err(CertError::WrongRoot {
                    found: other().node_id(),
                    expected: root().node_id(),
                }),
            )
        },
        Case {
            root: other().node_id(),
            ..case(
                "verifier trusts another root",
                1_500,
                Err(CertError::WrongRoot {
                    found: root().node_id(),
                    expected: other().node_id(),
                }),
            )
        },
        Case {
            cert: forged_signer,
            ..case(
                "signer field forged to the root",
                1_500,
                Err(CertError::Crypto(CryptoError::BadSignature)),
            )
        },
        Case {
            cert: SignedCert(Signed::sign(&root(), Context::Revocation, &body())),
            ..case(
                "root signature from another context",
                1_500,
                Err(CertError::Crypto(CryptoError::BadSignature)),
            )
        },
        Case {
            cert: SignedCert(Signed::sign(
                &root(),
                Context::AdmissionCert,
                &AdmissionCert {
                    roles: vec!["r".to_string(); ROLES_MAX + 1],
                    ..body()
                },
            )),
            ..case(
                "root-signed but over the role limit",
                1_500,
                Err(CertError::Limit("roles")),
            )
        },
    ];
    for c in cases {
        let got = c.cert.verify(&c.root, c.mesh, &c.presenter, c.now);
        match (&got, &c.expect) {
            (Ok(cert), Ok(())) => assert_eq!(cert, &body(), "{}", c.name),
            _ => assert_eq!(got.map(|_| ()), c.expect, "{}", c.name),
        }
    }
}

#[test]
fn tampered_certificate_fails() {
    let good = cert();
    for bit in 0..good.0.payload.len() * 8 {
        let mut t = good.clone();
        t.0.payload[bit / 8] ^= 1 << (bit % 8);
        assert_eq!(
            t.verify(&root().node_id(), MESH, &node(), 1_500),
            Err(CertError::Crypto(CryptoError::BadSignature)),
            "bit {bit}"
        );
    }
}

#[test]
fn signing_enforces_limits_at_and_beyond_each_bound() {
    let at_limits = AdmissionCert {
        mesh_id: "m".repeat(MESH_ID_LEN_MAX),
        roles: vec!["r".repeat(ROLE_LEN_MAX); ROLES_MAX],
        ..body()
    };
    let signed = at_limits.sign(&root()).unwrap();
    assert!(signed.to_bytes().len() <= CERT_LEN_MAX);
    assert!(signed
        .verify(&root().node_id(), &at_limits.mesh_id, &node(), 1_500)
        .is_ok());

    let over = [
        (
            AdmissionCert {
                mesh_id: "m".repeat(MESH_ID_LEN_MAX + 1),
                ..body()
            },
            "mesh_id",
        ),
        (
            AdmissionCert {
                roles: vec!["r".to_string(); ROLES_MAX + 1],
                ..body()
            },
            "roles",
        ),
        (
            AdmissionCert {
                roles: vec!["r".repeat(ROLE_LEN_MAX + 1)],
                ..body()
            },
            "role",
        ),
    ];
    for (c, field) in over {
        assert_eq!(c.sign(&root()), Err(CertError::Limit(field)));
    }
}

#[test]
fn claimed_reads_without_verifying() {
    let by_other = body().sign(&other()).unwrap();
    assert_eq!(by_other.claimed().unwrap(), body());
}

#[test]
fn certificate_bytes_round_trip() {
    let c = cert();
    let bytes = c.to_bytes();
    assert_eq!(SignedCert::from_bytes(&bytes).unwrap(), c);
    let mut longer = bytes.clone();
    longer.push(7);
    assert!(matches!(
        SignedCert::from_bytes(&longer),
        Err(CertError::Crypto(CryptoError::Decode(_)))
    ));
    assert_eq!(
        SignedCert::from_bytes(&vec![0; CERT_LEN_MAX + 1]),
        Err(CertError::Crypto(CryptoError::TooLarge {
            len: CERT_LEN_MAX + 1,
            limit: CERT_LEN_MAX
        }))
    );
}

fn revocation() -> Revocation {
    Revocation {
        mesh_id: MESH.to_string(),
        node_id: node(),
        issued_at: 1_700,
        reason: "key leaked".to_string(),
    }
}

/// Name, revocation presented, root trusted, mesh expected, verdict expected.
type RevocationCase = (
    &'static str,
    SignedRevocation,
    NodeId,
    &'static str,
    Result<(), CryptoError>,
);

#[test]
fn revocation_verification_table() {
    let good = revocation().sign(&root());
    let long_reason = Revocation {
        reason: "x".repeat(REASON_LEN_MAX + 1),
        ..revocation()
    }
    .sign(&root());
    let wrong_context =
        SignedRevocation(Signed::sign(&root(), Context::AdmissionCert, &revocation()));
    let mut tampered = good.clone();
    *tampered.0.payload.last_mut().unwrap() ^= 1;
    let cases: Vec<RevocationCase> = vec![
        ("valid", good.clone(), root().node_id(), MESH, Ok(())),
        (
            "another mesh",
            good.clone(),
            root().node_id(),
            "mesh-b",
            Err(CryptoError::BadSignature),
        ),
        (
            "verifier trusts another root",
            good.clone(),
            other().node_id(),
            MESH,
            Err(CryptoError::BadSignature),
        ),
        (
            "signed by a non-root key",
            revocation().sign(&other()),
            root().node_id(),
            MESH,
            Err(CryptoError::BadSignature),
        ),
        (
            "reason over the limit",
            long_reason,
            root().node_id(),
            MESH,
            Err(CryptoError::BadSignature),
        ),
        (
            "signature from another context",
            wrong_context,
            root().node_id(),
            MESH,
            Err(CryptoError::BadSignature),
        ),
        (
            "payload bit flipped",
            tampered,
            root().node_id(),
            MESH,
            Err(CryptoError::BadSignature),
        ),
    ];
    for (name, r, trusted, mesh, expect) in cases {
        let got = r.verify(&trusted, mesh);
        match (&got, &expect) {
            (Ok(v), Ok(())) => assert_eq!(v, &revocation(), "{name}"),
            _ => assert_eq!(got.map(|_| ()), expect, "{name}"),
        }
    }
}

#[test]
fn revocation_reason_at_limit_is_accepted_and_fits() {
    let r = Revocation {
        mesh_id: "m".repeat(MESH_ID_LEN_MAX),
        reason: "x".repeat(REASON_LEN_MAX),
        ..revocation()
    };
    let signed = r.sign(&root());
    assert!(signed.to_bytes().len() <= REVOCATION_LEN_MAX);
    assert_eq!(signed.verify(&root().node_id(), &r.mesh_id).unwrap(), r);
}

#[test]
fn revocation_bytes_round_trip() {
    let r = revocation().sign(&root());
    let bytes = r.to_bytes();
    assert_eq!(SignedRevocation::from_bytes(&bytes).unwrap(), r);
    assert_eq!(
        SignedRevocation::from_bytes(&vec![0; REVOCATION_LEN_MAX + 1]),
        Err(CryptoError::TooLarge {
            len: REVOCATION_LEN_MAX + 1,
            limit: REVOCATION_LEN_MAX
        })
    );
    let mut longer = bytes;
    longer.push(0);
    assert!(matches!(
        SignedRevocation::from_bytes(&longer),
        Err(CryptoError::Decode(_))
    ));
}

#[test]
fn a_certificate_is_not_a_revocation_and_vice_versa() {
    // Same root, same envelope shape: only the context keeps them apart.
    let c = cert();
    let as_rev: SignedRevocation = SignedRevocation(Signed::from_parts(
        c.0.signer,
        c.0.payload.clone(),
        c.0.signature,
    ));
    assert!(as_rev.verify(&root().node_id(), MESH).is_err());
    let r = revocation().sign(&root());
    let as_cert = SignedCert(Signed::from_parts(
        r.0.signer,
        r.0.payload.clone(),
        r.0.signature,
    ));
    assert!(as_cert
        .verify(&root().node_id(), MESH, &node(), 1_500)
        .is_err());
}

//! A test-only voter: a real node (its own key, admitted by the test mesh root) whose vote
//! signer equivocates: for every quorum answer it signs the true answer's hash and a second,
//! different one for the same call, subject and epoch, and the callee sends both. Run as
//! `equivocating-voter node --config node.toml`, like `agentmesh node`.
#![forbid(unsafe_code)]

use agentmesh_crypto::Keypair;
use agentmesh_node::cli::NodeArgs;
use agentmesh_node::security::vote::VoteSigner;
use agentmesh_vote::{SignedVote, Vote};
use std::sync::Arc;

/// Signs each vote twice: the real answer and a flipped hash.
struct Twice(Keypair);

impl std::fmt::Debug for Twice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Twice({})", self.0.node_id())
    }
}

impl VoteSigner for Twice {
    fn sign(&self, vote: Vote) -> Vec<SignedVote> {
        let mut lie = vote;
        lie.answer_hash[0] ^= 0xff;
        vec![vote.sign(&self.0), lie.sign(&self.0)]
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let config = match args.as_slice() {
        [_, node, flag, path] if node == "node" && flag == "--config" => path.into(),
        _ => {
            eprintln!("usage: equivocating-voter node --config node.toml");
            return std::process::ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let a = NodeArgs {
        config,
        join: Vec::new(),
        api_listen: None,
        api_insecure_bind: false,
    };
    let r = agentmesh_node::cli::node::run_node_with(a, |cfg| {
        cfg.vote_signer = Some(Arc::new(Twice(cfg.key.clone())));
    })
    .await;
    match r {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("equivocating-voter: {}", e.message);
            std::process::ExitCode::from(e.code)
        }
    }
}

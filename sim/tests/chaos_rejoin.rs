//! Chaos-soak faults (link cut, 3|2 partition, kill -9 and restart) on five nodes, as in
//! `scripts/chaos`: after every fault heals, every node must see every node alive again.

use agentmesh_gossip::{Config, MemberState};
use agentmesh_sim::world::{Action, NetModel, Observer, World};
use rand::{Rng, SeedableRng};

struct Quiet;
impl Observer for Quiet {
    fn event(&mut self, _: &World, _: usize, _: &agentmesh_gossip::Event, _: u64) {}
}

const N: usize = 5;
const STEP_MS: u64 = 100;
const CONVERGE_TIMEOUT_MS: u64 = 60_000;

/// Seeds per node, as `tests/tests/netns.rs::five_hosts` configures them (0-based).
fn seeds(i: usize) -> Vec<usize> {
    match i {
        0 => vec![],
        3 => vec![0],
        _ => vec![0, 3],
    }
}

/// Advances until every node in `viewers` sees every node in `subjects` in `state`.
fn wait(w: &mut World, viewers: &[usize], subjects: &[usize], state: MemberState) -> Option<u64> {
    let start = w.now;
    while w.now < start + CONVERGE_TIMEOUT_MS {
        let ok = viewers.iter().all(|&v| {
            let g = w.nodes[v].g.as_ref().expect("viewer up");
            subjects
                .iter()
                .all(|&s| v == s || g.state_of(&w.nodes[s].id) == Some(state))
        });
        if ok {
            return Some(w.now - start);
        }
        let t = w.now + STEP_MS;
        w.run_until(t, &mut Quiet);
    }
    None
}

fn restart(w: &mut World, i: usize) {
    w.boot(i);
    let ids = seeds(i).into_iter().map(|s| w.nodes[s].id).collect();
    w.input(i, agentmesh_gossip::Input::Join { seeds: ids }, &mut Quiet);
}

fn soak(seed: u64, cycles: usize) -> Result<(), String> {
    let mut w = World::new(N, seed, Config::lan, NetModel::default());
    w.start_converged(N);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let all: Vec<usize> = (0..N).collect();
    for cycle in 0..cycles {
        let victim = rng.gen_range(2..N);
        let others: Vec<usize> = all.iter().copied().filter(|&i| i != victim).collect();
        let what = rng.gen_range(0..3);
        let (split_viewers, split_subjects) = match what {
            0 => {
                let groups = (0..N).map(|i| u8::from(i == victim)).collect();
                w.act(Action::Partition(groups), &mut Quiet);
                (others.clone(), vec![victim])
            }
            1 => {
                w.act(Action::Partition(vec![0, 0, 0, 1, 1]), &mut Quiet);
                (vec![0, 1, 2], vec![3, 4])
            }
            _ => {
                w.act(Action::Crash(victim), &mut Quiet);
                (others.clone(), vec![victim])
            }
        };
        wait(&mut w, &split_viewers, &split_subjects, MemberState::Dead).ok_or(format!(
            "seed {seed} cycle {cycle}: fault {what} not detected"
        ))?;
        let t = w.now + 2000;
        w.run_until(t, &mut Quiet);
        if what == 2 {
            restart(&mut w, victim);
        } else {
            w.act(Action::Heal, &mut Quiet);
        }
        if wait(&mut w, &all, &all, MemberState::Alive).is_none() {
            let views: Vec<String> = all
                .iter()
                .map(|&v| {
                    let g = w.nodes[v].g.as_ref().expect("up");
                    let s: Vec<String> = all
                        .iter()
                        .map(|&s| format!("{:?}", g.state_of(&w.nodes[s].id)))
                        .collect();
                    format!("n{v}: {}", s.join(" "))
                })
                .collect();
            return Err(format!(
                "seed {seed} cycle {cycle} fault {what} victim {victim}: no reconvergence\n{}",
                views.join("\n")
            ));
        }
    }
    Ok(())
}

#[test]
fn five_nodes_reconverge_after_every_chaos_fault() {
    let errs: Vec<String> = (1..=20).filter_map(|s| soak(s, 12).err()).collect();
    assert!(errs.is_empty(), "{}", errs.join("\n\n"));
}

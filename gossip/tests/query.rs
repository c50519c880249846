//! Capability queries: name, attribute constraints (one value or a list) and a minimum
//! proficiency, over alive members and self.

mod util;

use agentmesh_gossip::state::RecordUpdate;
use agentmesh_gossip::{
    AgentInfo, AttrValue, Capability, CapabilityQuery, Input, MemberState, Proficiency,
};
use std::collections::BTreeMap;
use util::Net;

fn cap(name: &str, p: Proficiency, attrs: &[(&str, AttrValue)]) -> Capability {
    Capability {
        name: name.into(),
        proficiency: p,
        attributes: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        cost: 1.0,
        ..Default::default()
    }
}

fn one(v: &str) -> AttrValue {
    AttrValue::One(v.into())
}

fn many(v: &[&str]) -> AttrValue {
    AttrValue::Many(v.iter().map(|s| s.to_string()).collect())
}

fn query(name: &str, attrs: &[(&str, &str)], min: Option<Proficiency>) -> CapabilityQuery {
    CapabilityQuery {
        capability: name.into(),
        attrs: attrs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect::<BTreeMap<_, _>>(),
        min_proficiency: min,
    }
}

#[test]
fn find_filters_by_name_attributes_and_proficiency() {
    use Proficiency::*;
    let mut net = Net::new(4, 31);
    net.converge();
    let agents = [
        (
            "eu-expert",
            vec![cap(
                "inventory.query",
                Expert,
                &[("region", one("eu")), ("warehouses", many(&["A", "B"]))],
            )],
        ),
        (
            "us-novice",
            vec![cap(
                "inventory.query",
                Novice,
                &[("region", one("us")), ("warehouses", many(&["C"]))],
            )],
        ),
        (
            "eu-shipper",
            vec![cap("shipping.quote", Experienced, &[("region", one("eu"))])],
        ),
        ("idle", vec![]),
    ];
    for (i, (name, caps)) in agents.iter().enumerate() {
        let a = AgentInfo {
            name: name.to_string(),
            capabilities: caps.clone(),
        };
        net.input(i, Input::Update(RecordUpdate::Agent(Some(a))));
    }
    net.drive_until(2_000, "records everywhere", |n| n.converged());

    // (query, expected agents) — read like a spec.
    let table: Vec<(CapabilityQuery, Vec<&str>)> = vec![
        (
            query("inventory.query", &[], None),
            vec!["eu-expert", "us-novice"],
        ),
        (
            query("inventory.query", &[("region", "eu")], None),
            vec!["eu-expert"],
        ),
        (
            query("inventory.query", &[("warehouses", "B")], None),
            vec!["eu-expert"],
        ),
        (
            query(
                "inventory.query",
                &[("warehouses", "C"), ("region", "us")],
                None,
            ),
            vec!["us-novice"],
        ),
        (
            query("inventory.query", &[("warehouses", "Z")], None),
            vec![],
        ),
        (
            query("inventory.query", &[("missing-attr", "x")], None),
            vec![],
        ),
        (
            query("inventory.query", &[], Some(Novice)),
            vec!["eu-expert", "us-novice"],
        ),
        (
            query("inventory.query", &[], Some(Experienced)),
            vec!["eu-expert"],
        ),
        (
            query("inventory.query", &[], Some(Expert)),
            vec!["eu-expert"],
        ),
        (
            query("inventory.query", &[("region", "us")], Some(Expert)),
            vec![],
        ),
        (
            query("shipping.quote", &[("region", "eu")], None),
            vec!["eu-shipper"],
        ),
        (query("inventory", &[], None), vec![]),
    ];
    for viewer in 0..4 {
        for (q, want) in &table {
            let mut got: Vec<String> = net.nodes[viewer]
                .find(q)
                .iter()
                .map(|m| m.record.agent.as_ref().unwrap().name.clone())
                .collect();
            got.sort();
            assert_eq!(got, *want, "viewer {viewer}, query {q:?}");
        }
    }
}

#[test]
fn find_skips_members_that_are_not_alive() {
    let mut net = Net::new(3, 32);
    net.converge();
    let a = AgentInfo {
        name: "doomed".into(),
        capabilities: vec![cap("x.y", Proficiency::Expert, &[])],
    };
    net.input(2, Input::Update(RecordUpdate::Agent(Some(a))));
    net.drive_until(2_000, "record everywhere", |n| n.converged());
    assert_eq!(net.nodes[0].find(&query("x.y", &[], None)).len(), 1);
    assert!(net.nodes[0].offered("x.y"));
    net.stopped.insert(2);
    net.drive_until(30_000, "suspected", |n| {
        n.nodes[0].state_of(&n.ids[2]) != Some(MemberState::Alive)
    });
    assert!(
        net.nodes[0].find(&query("x.y", &[], None)).is_empty(),
        "a suspect is still offered"
    );
    assert!(!net.nodes[0].offered("x.y"));
}

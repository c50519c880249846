//! Locality on real processes: zone and region labels from `node.toml` travel in the signed
//! record; the caller's node keeps calls in its zone (whatever the agents' speeds), spills over
//! to the region and then anywhere when the zone's agent dies, with no error reaching the
//! caller, and `routes` shows labels, proximity and the measured QUIC RTT.

use agentmesh_tests::{served_by, wait_until, Mesh, Node, NodeOpts};
use std::time::Duration;

const CAP: &str = "loc.echo";
const CALLS: usize = 60;

fn placed(zone: &str, region: &str, latency_ms: f64) -> NodeOpts {
    NodeOpts {
        node_toml: format!("zone = \"{zone}\"\nregion = \"{region}\""),
        latency_ms_p50: latency_ms,
        ..NodeOpts::caps(&[CAP])
    }
}

/// Who served each of `n` calls; every call must succeed.
async fn served(mesh: &Mesh, caller: &Node, headers: &[(&str, &str)], n: usize) -> Vec<String> {
    let mut out = Vec::new();
    for _ in 0..n {
        let r = mesh
            .call(
                caller,
                CAP,
                "{}",
                &[&[("x-mesh-deadline-ms", "10000")], headers].concat(),
            )
            .await
            .unwrap();
        let by = served_by(&r);
        assert!(
            r.status().is_success(),
            "{} {}",
            r.status(),
            r.text().await.unwrap()
        );
        out.push(by);
    }
    out
}

fn share(by: &[String], node: &Node) -> usize {
    by.iter().filter(|s| s.starts_with(&node.id)).count()
}

#[tokio::test(flavor = "multi_thread")]
async fn calls_stay_in_the_zone_then_spill_over() {
    let mut mesh = Mesh::new().unwrap();
    let caller = mesh
        .start_node(NodeOpts {
            node_toml: "zone = \"z-a\"\nregion = \"r-1\"".into(),
            ..NodeOpts::caps(&["caller.only"])
        })
        .await
        .unwrap();
    // The zone's agent is the slowest: locality, not speed, keeps the calls in the zone.
    let near = mesh.start_node(placed("z-a", "r-1", 30.0)).await.unwrap();
    let region = mesh.start_node(placed("z-b", "r-1", 2.0)).await.unwrap();
    let remote = mesh.start_node(placed("z-x", "r-2", 2.0)).await.unwrap();
    mesh.wait_offers(&caller, CAP, 3).await.unwrap();

    // Labels, proximity and the locality in force are visible in `routes`.
    let (status, routes) = mesh
        .get(&caller, &format!("/v1/routes/{CAP}"))
        .await
        .unwrap();
    assert_eq!(status, 200, "{routes}");
    assert_eq!(routes["locality"], "zone", "{routes}");
    let row = |v: &serde_json::Value, n: &Node| {
        v["candidates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["node_id"] == n.id.as_str())
            .cloned()
            .unwrap_or_else(|| panic!("{} not in {v}", n.id))
    };
    for (n, zone, prox) in [
        (&near, "z-a", "zone"),
        (&region, "z-b", "region"),
        (&remote, "z-x", "remote"),
    ] {
        let r = row(&routes, n);
        assert_eq!(r["zone"], zone, "{r}");
        assert_eq!(r["proximity"], prox, "{r}");
    }
    assert_eq!(row(&routes, &near)["rank"], 1, "{routes}");

    // Healthy zone: every call stays in it (target ≥ 95 %; exploration stays in the tier).
    let by = served(&mesh, &caller, &[], CALLS).await;
    assert_eq!(share(&by, &near), CALLS, "{by:?}");

    // /metrics counts the attempts by nearness.
    let text = reqwest::get(format!("{}/metrics", caller.api))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let count = |prox: &str| -> f64 {
        text.lines()
            .filter(|l| l.starts_with("agentmesh_routing_locality_total{"))
            .filter(|l| l.contains(&format!("capability=\"{CAP}\"")))
            .filter(|l| l.contains(&format!("proximity=\"{prox}\"")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(count("zone"), CALLS as f64, "{text}");
    assert_eq!(count("remote") + count("region"), 0.0, "{text}");

    // The call plane measured the RTT to the node it called.
    let (_, routes) = mesh
        .get(&caller, &format!("/v1/routes/{CAP}"))
        .await
        .unwrap();
    let rtt = row(&routes, &near)["rtt_us"].as_u64();
    assert!(rtt.is_some_and(|r| r > 0), "no RTT measured: {routes}");

    // Per call, locality can be turned off; a bad value is a typed 400.
    let r = mesh
        .call(&caller, CAP, "{}", &[("x-mesh-locality", "nearby")])
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: serde_json::Value = r.json().await.unwrap();
    assert_eq!(e["code"], "bad_request", "{e}");
    assert_eq!(e["field"], "x-mesh-locality", "{e}");
    let by = served(&mesh, &caller, &[("x-mesh-locality", "off")], 40).await;
    assert!(
        share(&by, &near) < 40,
        "locality off: the faster agents get calls too: {by:?}"
    );

    // The zone's agent dies: calls spill over to the region at once, with no error.
    mesh.procs.kill9(near.proc_index).unwrap();
    let by = served(&mesh, &caller, &[], CALLS).await;
    assert_eq!(share(&by, &near), 0, "{by:?}");
    assert!(
        share(&by, &region) >= CALLS * 95 / 100,
        "spill-over goes to the region first: {by:?}"
    );

    // Once the caller declared it dead, routes explains the spill-over.
    let v = wait_until(
        "the zone's node declared dead",
        Duration::from_secs(30),
        || async {
            let (_, v) = mesh.get(&caller, &format!("/v1/routes/{CAP}")).await?;
            let two = v["candidates"].as_array().is_some_and(|l| l.len() == 2);
            Ok(two.then_some(v))
        },
    )
    .await
    .unwrap();
    let reason = row(&v, &region)["reason"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(reason.contains("spill-over to region"), "{v}");

    // The region's agent dies too: anywhere.
    mesh.procs.kill9(region.proc_index).unwrap();
    let by = served(&mesh, &caller, &[], 20).await;
    assert_eq!(share(&by, &remote), 20, "{by:?}");

    // Once the caller declared them dead, the one left is shown as remote.
    let v = wait_until(
        "both killed nodes declared dead",
        Duration::from_secs(30),
        || async {
            let (_, v) = mesh.get(&caller, &format!("/v1/routes/{CAP}")).await?;
            let alone = v["candidates"].as_array().is_some_and(|l| l.len() == 1);
            Ok(alone.then_some(v))
        },
    )
    .await
    .unwrap();
    assert_eq!(v["candidates"][0]["proximity"], "remote", "{v}");
}

#[test]
fn bad_labels_are_refused_naming_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(
        &path,
        "[node]\nkey_file = \"k\"\nstate_dir = \"s\"\nzone = \"eu west\"\n\
         [mesh]\nadmission = \"open\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(agentmesh_tests::agentmesh_bin())
        .args(["config", "validate", path.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "accepted a zone with a space");
    assert!(err.contains("node.zone"), "{err}");
}

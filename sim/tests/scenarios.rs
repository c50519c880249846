//! Runs `sim/scenarios.toml`: every scenario at every seed, asserting its figures.

use agentmesh_sim::{run, Params};
use serde_json::Value;

fn field<'a>(report: &'a Value, name: &str) -> &'a Value {
    report
        .get(name)
        .unwrap_or_else(|| panic!("report has no field {name}"))
}

fn check(name: &str, seed: u64, spec: &toml::Value, report: &Value) -> Vec<String> {
    let replay = format!(
        "replay: agentmesh-sim --scenario {name} --seed {seed} --nodes {} --duration-s {}",
        report["nodes"], report["duration_s"]
    );
    let mut errs = Vec::new();
    if let Some(max) = spec.get("max").and_then(|m| m.as_table()) {
        for (k, bound) in max {
            let bound = bound.as_float().or(bound.as_integer().map(|i| i as f64));
            let got = field(report, k).as_f64();
            match (bound, got) {
                (Some(b), Some(g)) if g > b => {
                    errs.push(format!("{name} seed {seed}: {k} = {g} > {b} ({replay})"));
                }
                (Some(_), Some(_)) => {}
                // A bound on a figure that was never measured cannot hold.
                (_, None) => errs.push(format!(
                    "{name} seed {seed}: {k} is null, so its bound cannot be checked ({replay})"
                )),
                (None, _) => errs.push(format!("{name}: bound on {k} is not a number")),
            }
        }
    }
    if let Some(eq) = spec.get("eq").and_then(|m| m.as_table()) {
        for (k, want) in eq {
            let got = field(report, k);
            if got.as_i64() != want.as_integer() {
                errs.push(format!(
                    "{name} seed {seed}: {k} = {got}, want {want} ({replay})"
                ));
            }
        }
    }
    if let Some(present) = spec.get("present").and_then(|m| m.as_array()) {
        for k in present.iter().filter_map(|k| k.as_str()) {
            if field(report, k).is_null() {
                errs.push(format!(
                    "{name} seed {seed}: {k} was never reached ({replay})"
                ));
            }
        }
    }
    errs
}

/// A `max` bound on a figure the run never measured (null) fails instead of passing.
#[test]
fn a_bound_on_a_null_figure_fails() {
    let spec: toml::Value = toml::from_str("max = { heal_ms = 100 }").unwrap();
    let report = serde_json::json!({"nodes": 1, "duration_s": 1, "heal_ms": null});
    assert_eq!(check("x", 1, &spec, &report).len(), 1);
    let report = serde_json::json!({"nodes": 1, "duration_s": 1, "heal_ms": 50});
    assert!(check("x", 1, &spec, &report).is_empty());
}

#[test]
fn scenario_matrix_meets_its_bounds() {
    let text = include_str!("../scenarios.toml");
    let doc: toml::Value = toml::from_str(text).expect("scenarios.toml parses");
    let list = doc["scenario"].as_array().expect("[[scenario]] entries");
    assert!(list.len() >= 9, "every scenario name is covered");
    let mut errs = Vec::new();
    for spec in list {
        let name = spec["name"].as_str().expect("name");
        for seed in spec["seeds"].as_array().expect("seeds") {
            let seed = seed.as_integer().expect("seed") as u64;
            let p = Params {
                nodes: spec["nodes"].as_integer().expect("nodes") as usize,
                seed,
                scenario: name.to_string(),
                loss: spec.get("loss").and_then(|l| l.as_float()).unwrap_or(0.0),
                duration_s: spec["duration_s"].as_integer().expect("duration") as u64,
                progress: false,
                profile: "lan".into(),
                overrides: vec![],
            };
            let report = serde_json::to_value(run(&p).expect("scenario runs")).expect("json");
            eprintln!("{report}");
            errs.extend(check(name, seed, spec, &report));
        }
    }
    assert!(
        errs.is_empty(),
        "scenario bounds violated:\n{}",
        errs.join("\n")
    );
}

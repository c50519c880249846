//! Locality: where a node runs (`zone`, `region`, carried in its signed record) and how near a
//! candidate is to the caller, so routing can keep calls in the caller's zone, then region,
//! and spill over only when the near agents cannot take the call.
//!
//! The labels travel in the record's [`LOCALITY_EXT`] extension (postcard, ≤
//! [`LOCALITY_EXT_MAX`] bytes), so records without them stay as they were and a peer cannot
//! claim a locality for another node (the record is signed by its node). Where labels are
//! missing, [`LocalityMode::Rtt`] judges nearness by the QUIC round-trip time the call plane
//! measured.

use crate::contract::CallError;
use serde::{Deserialize, Serialize};

/// The record extension that carries a node's locality.
pub const LOCALITY_EXT: &str = "locality";
/// Longest zone or region label, in bytes (a Kubernetes label value's limit).
pub const LABEL_LEN_MAX: usize = 63;
/// Largest encoded locality extension, in bytes; bigger ones are ignored, not decoded.
pub const LOCALITY_EXT_MAX: usize = 2 * (LABEL_LEN_MAX + 1);
/// With [`LocalityMode::Rtt`], a candidate is near when its RTT is at most
/// `RTT_NEAR_FACTOR` × the smallest RTT among the candidates …
pub const RTT_NEAR_FACTOR: u32 = 2;
/// … plus this slack, in µs (so loopback and one LAN are one tier).
pub const RTT_NEAR_SLACK_US: u32 = 1_000;

/// A node's place: zone and region labels (empty: not set).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Locality {
    /// Zone (for example `eu-west-1a`; Kubernetes `topology.kubernetes.io/zone`).
    pub zone: String,
    /// Region (for example `eu-west-1`; Kubernetes `topology.kubernetes.io/region`).
    pub region: String,
}

/// Checks a zone or region label: empty, or 1 to [`LABEL_LEN_MAX`] characters of
/// `[A-Za-z0-9._-]` that start and end with a letter or digit (a Kubernetes label value).
pub fn validate_label(v: &str) -> Result<(), String> {
    if v.is_empty() {
        return Ok(());
    }
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    let edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if v.len() > LABEL_LEN_MAX
        || !v.chars().all(ok_char)
        || !edge(v.chars().next())
        || !edge(v.chars().last())
    {
        return Err(format!(
            "must be at most {LABEL_LEN_MAX} characters of [A-Za-z0-9._-], starting and ending \
             with a letter or digit"
        ));
    }
    Ok(())
}

impl Locality {
    /// A locality from labels, validated.
    pub fn new(zone: &str, region: &str) -> Result<Locality, (&'static str, String)> {
        validate_label(zone).map_err(|e| ("zone", e))?;
        validate_label(region).map_err(|e| ("region", e))?;
        Ok(Locality {
            zone: zone.to_string(),
            region: region.to_string(),
        })
    }

    /// True when no label is set.
    pub fn is_empty(&self) -> bool {
        self.zone.is_empty() && self.region.is_empty()
    }

    /// The record extension's bytes (None when no label is set: nothing to publish).
    pub fn encode(&self) -> Option<Vec<u8>> {
        (!self.is_empty())
            .then(|| postcard::to_allocvec(self).ok())
            .flatten()
    }

    /// Decodes a peer's extension: size checked first, labels validated; anything else is
    /// `None` (treated as a node without labels).
    pub fn decode(bytes: &[u8]) -> Option<Locality> {
        if bytes.len() > LOCALITY_EXT_MAX {
            return None;
        }
        let l: Locality = postcard::from_bytes(bytes).ok()?;
        Locality::new(&l.zone, &l.region).ok()
    }

    /// The locality a record announces (empty when none or invalid).
    pub fn of_record(r: &agentmesh_gossip::record::NodeRecord) -> Locality {
        r.ext
            .get(LOCALITY_EXT)
            .and_then(|b| Locality::decode(b))
            .unwrap_or_default()
    }
}

/// How near a candidate is to the caller; lower is nearer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Proximity {
    /// Same zone (or this node itself).
    Zone,
    /// Same region, other zone.
    Region,
    /// Elsewhere, or not known.
    Remote,
}

impl Proximity {
    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            Proximity::Zone => "zone",
            Proximity::Region => "region",
            Proximity::Remote => "remote",
        }
    }

    /// How near `there` is to `here` by labels. A label counts only when both sides set it.
    pub fn of(here: &Locality, there: &Locality) -> Proximity {
        let same = |a: &str, b: &str| !a.is_empty() && a == b;
        if same(&here.zone, &there.zone)
            && (here.region.is_empty() || there.region.is_empty() || here.region == there.region)
        {
            Proximity::Zone
        } else if same(&here.region, &there.region) {
            Proximity::Region
        } else {
            Proximity::Remote
        }
    }
}

/// Which nearness routing prefers (`locality` in `[defaults]`/`[capability."x"]`, or
/// `x-mesh-locality` per call).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocalityMode {
    /// The caller's zone first, then its region, then anywhere. The default; a no-op while
    /// the caller has no labels.
    Zone,
    /// The caller's region first, then anywhere.
    Region,
    /// The candidates with the smallest measured QUIC round-trip time first (for meshes
    /// without labels).
    Rtt,
    /// No preference: the policy alone decides.
    Off,
}

/// Every locality mode, for error messages and docs.
pub const LOCALITY_MODES: &str = "zone | region | rtt | off";

impl LocalityMode {
    /// Parses a mode name.
    pub fn parse(s: &str) -> Result<LocalityMode, CallError> {
        Ok(match s {
            "zone" => LocalityMode::Zone,
            "region" => LocalityMode::Region,
            "rtt" => LocalityMode::Rtt,
            "off" => LocalityMode::Off,
            other => {
                return Err(CallError::bad_field(
                    "locality",
                    format!("unknown locality {other:?}: expected {LOCALITY_MODES}"),
                ))
            }
        })
    }

    /// Its name.
    pub fn name(self) -> &'static str {
        match self {
            LocalityMode::Zone => "zone",
            LocalityMode::Region => "region",
            LocalityMode::Rtt => "rtt",
            LocalityMode::Off => "off",
        }
    }
}

/// Where one candidate stands for locality.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Place {
    /// Nearness by labels.
    pub proximity: Proximity,
    /// Smoothed QUIC RTT to its node, µs (None: no connection measured; 0 for this node).
    pub rtt_us: Option<u32>,
}

impl Default for Place {
    fn default() -> Self {
        Place {
            proximity: Proximity::Remote,
            rtt_us: None,
        }
    }
}

/// The tier of each place under `mode` (0 nearest): zone 0, region 1, remote 2; `Region`
/// merges zone into region; `Rtt` puts candidates within [`RTT_NEAR_FACTOR`] × the smallest
/// RTT + [`RTT_NEAR_SLACK_US`] (and unmeasured ones, so they get measured) in tier 0; `Off`
/// puts everyone in tier 0.
pub fn tiers(mode: LocalityMode, places: &[Place]) -> Vec<u8> {
    match mode {
        LocalityMode::Off => vec![0; places.len()],
        // Remote means "elsewhere or unknown": when every candidate is, there is no nearer
        // tier to prefer (so an unlabelled mesh routes exactly as with locality off).
        LocalityMode::Zone | LocalityMode::Region
            if places.iter().all(|p| p.proximity == Proximity::Remote) =>
        {
            vec![0; places.len()]
        }
        LocalityMode::Zone => places.iter().map(|p| p.proximity as u8).collect(),
        LocalityMode::Region => places
            .iter()
            .map(|p| u8::from(p.proximity == Proximity::Remote))
            .collect(),
        LocalityMode::Rtt => {
            let min = places.iter().filter_map(|p| p.rtt_us).min();
            places
                .iter()
                .map(|p| match (p.rtt_us, min) {
                    (Some(r), Some(m)) => u8::from(
                        r > m
                            .saturating_mul(RTT_NEAR_FACTOR)
                            .saturating_add(RTT_NEAR_SLACK_US),
                    ),
                    _ => 0,
                })
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(z: &str, r: &str) -> Locality {
        Locality::new(z, r).unwrap()
    }

    #[test]
    fn labels_are_validated() {
        assert!(Locality::new("eu-west-1a", "eu-west-1").is_ok());
        assert!(Locality::new("", "").is_ok());
        for bad in ["-a", "a-", "a b", "a/b", "ä", &"a".repeat(64)] {
            assert!(Locality::new(bad, "").is_err(), "{bad:?} accepted");
            assert!(Locality::new("", bad).is_err(), "{bad:?} accepted");
        }
        assert!(Locality::new(&"a".repeat(63), "").is_ok());
    }

    #[test]
    fn round_trip_and_hostile_bytes() {
        let l = loc("z1", "r1");
        assert_eq!(Locality::decode(&l.encode().unwrap()), Some(l));
        assert_eq!(Locality::default().encode(), None);
        // Too big: refused before decoding.
        assert_eq!(Locality::decode(&[1u8; LOCALITY_EXT_MAX + 1]), None);
        // Decodes but breaks the label rule.
        let bad = postcard::to_allocvec(&Locality {
            zone: "a b".into(),
            region: String::new(),
        })
        .unwrap();
        assert_eq!(Locality::decode(&bad), None);
        // Garbage.
        assert_eq!(Locality::decode(&[0xff, 0xff, 0xff]), None);
        let max = loc(&"z".repeat(63), &"r".repeat(63)).encode().unwrap();
        assert!(max.len() <= LOCALITY_EXT_MAX);
    }

    #[test]
    fn proximity_by_labels() {
        let here = loc("a", "r");
        assert_eq!(Proximity::of(&here, &loc("a", "r")), Proximity::Zone);
        assert_eq!(Proximity::of(&here, &loc("b", "r")), Proximity::Region);
        assert_eq!(Proximity::of(&here, &loc("a", "s")), Proximity::Remote);
        assert_eq!(Proximity::of(&here, &loc("", "")), Proximity::Remote);
        assert_eq!(Proximity::of(&here, &loc("a", "")), Proximity::Zone);
        // A caller without labels sees everyone as remote: one tier, no preference.
        assert_eq!(Proximity::of(&loc("", ""), &loc("", "")), Proximity::Remote);
    }

    #[test]
    fn tiers_per_mode() {
        let p = |proximity, rtt_us| Place { proximity, rtt_us };
        let places = [
            p(Proximity::Zone, Some(200)),
            p(Proximity::Region, Some(5_000)),
            p(Proximity::Remote, Some(900)),
            p(Proximity::Remote, None),
        ];
        assert_eq!(tiers(LocalityMode::Zone, &places), [0, 1, 2, 2]);
        assert_eq!(tiers(LocalityMode::Region, &places), [0, 0, 1, 1]);
        // Near: ≤ 2 × 200 + 1000 µs; unmeasured counts as near.
        assert_eq!(tiers(LocalityMode::Rtt, &places), [0, 1, 0, 0]);
        assert_eq!(tiers(LocalityMode::Off, &places), [0, 0, 0, 0]);
        // An unlabelled caller sees everyone as remote: no tier is preferred.
        let unknown = [p(Proximity::Remote, None), p(Proximity::Remote, Some(1))];
        assert_eq!(tiers(LocalityMode::Zone, &unknown), [0, 0]);
        assert_eq!(tiers(LocalityMode::Region, &unknown), [0, 0]);
    }

    #[test]
    fn modes_parse() {
        for m in ["zone", "region", "rtt", "off"] {
            assert_eq!(LocalityMode::parse(m).unwrap().name(), m);
        }
        assert!(LocalityMode::parse("near").is_err());
    }
}

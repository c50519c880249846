//! Query strings of the local API, decoded strictly: a pair whose key or value is not UTF-8
//! once percent-decoded is refused (not replaced by U+FFFD), and so is a query with more than
//! [`QUERY_PAIRS_MAX`] pairs.

use crate::contract::CallError;

/// Most `key=value` pairs in one query string.
pub const QUERY_PAIRS_MAX: usize = 64;

/// The decoded `(key, value)` pairs of `query` (`application/x-www-form-urlencoded`: `+` is
/// a space), in order; empty pairs (`a=1&&b=2`) are skipped.
pub fn query_pairs(query: &str) -> Result<Vec<(String, String)>, CallError> {
    let mut out = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        if out.len() == QUERY_PAIRS_MAX {
            return Err(CallError::bad_field(
                "query",
                format!("more than {QUERY_PAIRS_MAX} query parameters"),
            ));
        }
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let k = decode(k).map_err(|m| CallError::bad_field("query", m))?;
        let v = decode(v).map_err(|m| CallError::bad_field(&k, m))?;
        out.push((k, v));
    }
    Ok(out)
}

fn decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok());
                let byte = hex.and_then(|h| u8::from_str_radix(h, 16).ok());
                let Some(byte) = byte else {
                    return Err(format!("{s:.64?}: '%' must be followed by two hex digits"));
                };
                out.push(byte);
                i += 3;
                continue;
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).map_err(|_| format!("{s:.64?} is not UTF-8 once percent-decoded"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_decoding() {
        let p = query_pairs("a=1&b=x%20y+z&&c&d=%C3%A9").unwrap();
        let want = [("a", "1"), ("b", "x y z"), ("c", ""), ("d", "é")];
        let got: Vec<(&str, &str)> = p.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(got, want);
        for (bad, field) in [
            ("a=%FF", "a"),
            ("%FE=1", "query"),
            ("a=%4", "a"),
            ("a=%zz", "a"),
        ] {
            let e = query_pairs(bad).unwrap_err();
            assert_eq!(e.field.as_deref(), Some(field), "{bad}");
        }
        let many: String = (0..=QUERY_PAIRS_MAX).map(|i| format!("k{i}=v&")).collect();
        assert_eq!(
            query_pairs(&many).unwrap_err().field.as_deref(),
            Some("query")
        );
    }
}

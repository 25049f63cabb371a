//! Canonical JSON: object keys sorted by their bytes, no insignificant
//! whitespace, strings escaped as serde_json escapes them.
//!
//! oci-spec keeps annotations and labels in `HashMap`s, and serde_json may
//! keep insertion order, so every OCI document nixoci writes goes through
//! this writer. The same value always gives the same bytes.

use serde::Serialize;
use serde_json::Value;

/// The canonical bytes of `value`.
pub fn to_canonical_vec<T: Serialize>(value: &T) -> Result<Vec<u8>, serde_json::Error> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::new();
    write_value(&value, &mut out)?;
    Ok(out)
}

fn write_value(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_value(v, out)?;
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(v, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn sorts_keys_at_every_depth() {
        let v = serde_json::json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "é\n"}});
        let bytes = to_canonical_vec(&v).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":{"c":"é\n","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
    }

    #[test]
    fn hash_maps_come_out_the_same() {
        let mut first = Vec::new();
        for round in 0..20 {
            let map: HashMap<String, u32> = (0..50).map(|i| (format!("key{i}"), i)).collect();
            let bytes = to_canonical_vec(&map).unwrap();
            if round == 0 {
                first = bytes;
            } else {
                assert_eq!(bytes, first);
            }
        }
    }
}

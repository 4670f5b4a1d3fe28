//! `docs/configuration.md` must not fall behind the model: every property name
//! and every enum value in the JSON Schema has to appear in it in backticks.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;

/// Every key of every `properties` object and every string in `enum` lists
/// and `const` values (schemars writes documented enum variants as
/// `oneOf: [{ const: ... }]`), anywhere in the schema, `$defs` included.
fn schema_names(schema: &Value, names: &mut BTreeSet<String>) {
    match schema {
        Value::Object(map) => {
            for (key, value) in map {
                match (key.as_str(), value) {
                    // Example data, not schema: a default could hold any key.
                    ("default" | "examples", _) => continue,
                    ("properties", Value::Object(properties)) => names.extend(properties.keys().cloned()),
                    ("enum", Value::Array(values)) => {
                        names.extend(values.iter().filter_map(Value::as_str).map(str::to_owned))
                    }
                    ("const", Value::String(value)) => {
                        names.insert(value.clone());
                    }
                    _ => {}
                }
                schema_names(value, names);
            }
        }
        Value::Array(items) => items.iter().for_each(|item| schema_names(item, names)),
        _ => {}
    }
}

#[test]
fn every_schema_name_is_documented() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/configuration.md");
    let doc = std::fs::read_to_string(&doc_path).unwrap_or_else(|e| panic!("cannot read {}: {e}", doc_path.display()));

    let mut names = BTreeSet::new();
    schema_names(&config_model::json_schema(), &mut names);
    schema_names(&config_model::bootstrap_json_schema(), &mut names);
    // Guard the walk itself: if the schema's shape changes so that it finds
    // nothing, the check below would pass vacuously.
    for expected in
        ["max_header_bytes", "hash_on", "match", "round_robin", "ring_hash", "auto", "source_ip", "long_poll", "fresh"]
    {
        assert!(names.contains(expected), "the schema walk missed {expected:?}; found {names:?}");
    }

    let missing: Vec<&String> = names.iter().filter(|name| !doc.contains(&format!("`{name}`"))).collect();
    assert!(missing.is_empty(), "{} does not mention these config names in backticks: {missing:?}", doc_path.display());
}

//! The JSON Schemas in `proto/schema/` and the event types agree: each schema is what the type
//! generates (run with `DP_UPDATE_SCHEMAS=1` to rewrite them after changing a type), and real
//! instances validate against the committed file while malformed ones do not.

use std::path::PathBuf;

use dp_proto::events::{
    ChangeEvent, ChangeKind, EvictEvent, FolderVersion, WakeEvent, WakeStages, WakeTarget,
};
use schemars::{schema_for, JsonSchema};
use serde::Serialize;
use serde_json::{json, Value};

fn schema_path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("schema")
        .join(format!("{name}.json"))
}

/// The committed schema, after checking it is exactly what the type generates.
fn committed_schema<T: JsonSchema>(name: &str) -> Value {
    let generated = serde_json::to_string_pretty(&schema_for!(T)).expect("serialises") + "\n";
    let path = schema_path(name);
    if std::env::var_os("DP_UPDATE_SCHEMAS").is_some() {
        std::fs::write(&path, &generated).expect("writes schema");
    }
    let committed = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (run with DP_UPDATE_SCHEMAS=1)", path.display()));
    assert_eq!(
        committed, generated,
        "{name}.json is stale: run `DP_UPDATE_SCHEMAS=1 cargo test -p dp-proto --test schemas`"
    );
    serde_json::from_str(&committed).expect("schema is JSON")
}

fn check<T: JsonSchema + Serialize>(name: &str, good: &[T], bad: &[Value]) {
    let schema = committed_schema::<T>(name);
    let validator = jsonschema::validator_for(&schema).expect("schema compiles");
    for instance in good {
        let value = serde_json::to_value(instance).expect("serialises");
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| e.to_string())
            .collect();
        assert!(errors.is_empty(), "{name}: {value} rejected: {errors:?}");
    }
    for value in bad {
        assert!(
            !validator.is_valid(value),
            "{name}: {value} should be rejected"
        );
    }
}

#[test]
fn change_event() {
    let change = |kind, accepted_at_us| ChangeEvent {
        mailbox: "alice@example.com".into(),
        folders: vec!["5".into(), "Inbox/Sub".into()],
        store_folder: None,
        kind,
        accepted_at_us,
    };
    check(
        "change",
        &[
            change(ChangeKind::Added, Some(1_700_000_000_000_000)),
            change(ChangeKind::Modified, None),
            change(ChangeKind::Removed, None),
            ChangeEvent {
                folders: Vec::new(),
                store_folder: Some("Archive/2024".into()),
                ..change(ChangeKind::Added, None)
            },
        ],
        &[
            json!({"mailbox": "a", "folders": ["1"], "kind": "exploded"}),
            json!({"mailbox": "a", "store_folder": 5}),
            json!({"mailbox": "a", "folders": "1"}),
            json!({"mailbox": "a", "folders": ["1"], "accepted_at_us": -4}),
            json!({"mailbox": "a", "folders": ["1"], "extra": true}),
        ],
    );
}

#[test]
fn wake_event() {
    let wake = WakeEvent {
        hierarchy: false,
        recheck: false,
        mailbox: "alice@example.com".into(),
        folders: vec![FolderVersion {
            id: "5".into(),
            version: 3,
        }],
        targets: vec![WakeTarget {
            device: "alice_40example_2Ecom:phone".into(),
            request: 42,
        }],
        accepted_at_us: 1_700_000_000_000_000,
        stages: Some(WakeStages {
            stored_us: 1_700_000_000_000_400,
            taken_us: 1_700_000_000_000_500,
            closed_us: 1_700_000_000_002_500,
            bumped_us: 1_700_000_000_002_700,
            sent_us: 1_700_000_000_002_750,
        }),
    };
    check(
        "wake",
        &[wake],
        &[
            json!({"mailbox": "a", "folders": [{"id": "5"}], "targets": [], "accepted_at_us": 1}),
            json!({"mailbox": "a", "folders": [], "targets": [{"device": "d"}], "accepted_at_us": 1}),
        ],
    );
}

#[test]
fn evict_event() {
    check(
        "evict",
        &[EvictEvent {
            device: "a:b".into(),
            request: u64::MAX,
        }],
        &[json!({"device": "a:b"}), json!({"device": 1, "request": 2})],
    );
}

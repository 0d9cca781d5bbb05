//! The Grafana dashboard queries only metrics the services export: every `dp_*` name in its
//! expressions is a series on a running frontend's or watcher's /metrics page.

use std::collections::BTreeSet;

use dp_testkit::client::http_get;
use dp_testkit::{Env, Frontend, Watcher};

/// The series names a Prometheus text page can hold, from its `# TYPE` lines (labelled
/// families appear there before their first sample).
fn exported(page: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in page.lines() {
        let mut words = line
            .strip_prefix("# TYPE ")
            .unwrap_or_default()
            .split_whitespace();
        let (Some(name), Some(kind)) = (words.next(), words.next()) else {
            continue;
        };
        match kind {
            "counter" => {
                names.insert(format!("{name}_total"));
            }
            "histogram" => {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
            _ => {
                names.insert(name.to_owned());
            }
        }
    }
    names
}

fn queried(dashboard: &serde_json::Value) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for panel in dashboard["panels"].as_array().into_iter().flatten() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            let expr = target["expr"].as_str().unwrap_or_default();
            let mut rest = expr;
            while let Some(at) = rest.find("dp_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                names.insert(name);
            }
        }
    }
    names
}

#[tokio::test]
async fn every_metric_the_dashboard_queries_is_exported() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../helm/directpush/dashboards/directpush.json"
    );
    let dashboard: serde_json::Value =
        serde_json::from_slice(&std::fs::read(path).expect("the dashboard"))
            .expect("dashboard JSON");
    let wanted = queried(&dashboard);
    assert!(wanted.len() >= 15, "the dashboard queries {wanted:?}");

    let env = Env::new().await;
    let frontend = Frontend::start(&env, "a", &[]).await;
    let watcher = Watcher::start(&env, "w", &[]).await;
    let mut have = BTreeSet::new();
    for admin in [frontend.admin, watcher.admin] {
        have.extend(exported(
            &http_get(admin, "/metrics").await.expect("metrics").text(),
        ));
    }
    let missing: Vec<_> = wanted.difference(&have).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no service exports"
    );
    env.cleanup().await;
}

#[test]
fn type_lines_name_each_kind_of_series() {
    let page = "# TYPE dp_a counter\n# TYPE dp_b histogram\n# TYPE dp_c gauge\ndp_c 1\n";
    let names = exported(page);
    for name in [
        "dp_a_total",
        "dp_b_bucket",
        "dp_b_count",
        "dp_b_sum",
        "dp_c",
    ] {
        assert!(names.contains(name), "{name}");
    }
    let dashboard = serde_json::json!({"panels": [{"targets": [{"expr": "histogram_quantile(0.9, sum by (le) (rate(dp_b_bucket[5m]))) + dp_c"}]}]});
    assert_eq!(
        queried(&dashboard),
        BTreeSet::from(["dp_b_bucket".to_owned(), "dp_c".to_owned()])
    );
}

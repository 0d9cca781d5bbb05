//! The run's report: readable lines on stdout, `report.json` and the charts in the output
//! directory.

use std::path::Path;

use anyhow::{Context, Result};
use serde_json::{json, Map, Value};

/// p50, p90, p99, p99.9 and max of sorted microseconds, in milliseconds.
pub fn percentiles_ms(sorted_us: &[u64]) -> Value {
    if sorted_us.is_empty() {
        return json!({"count": 0});
    }
    let at = |q: f64| {
        let i = ((sorted_us.len() as f64 * q).ceil() as usize).clamp(1, sorted_us.len()) - 1;
        ms(sorted_us[i])
    };
    json!({
        "count": sorted_us.len(),
        "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "p999_ms": at(0.999),
        "max_ms": ms(sorted_us[sorted_us.len() - 1]),
    })
}

fn ms(us: u64) -> f64 {
    (us as f64 / 10.0).round() / 100.0
}

/// A scenario's findings, in the order they were added.
pub struct Report {
    pub scenario: &'static str,
    fields: Map<String, Value>,
}

impl Report {
    pub fn new(scenario: &'static str) -> Report {
        Report {
            scenario,
            fields: Map::new(),
        }
    }

    pub fn set(&mut self, key: &str, value: impl Into<Value>) {
        self.fields.insert(key.to_owned(), value.into());
    }

    /// Prints the summary and writes `report.json` into `out`.
    pub fn finish(self, out: &Path) -> Result<Value> {
        println!("== loadtest {} ==", self.scenario);
        for (key, value) in &self.fields {
            if key != "timeline" && key != "frontend_memory_each" {
                println!("{key:>28}: {}", readable(value));
            }
        }
        let mut all = self.fields;
        all.insert("scenario".into(), self.scenario.into());
        all.insert("machine".into(), machine());
        let value = Value::Object(all);
        let path = out.join("report.json");
        std::fs::write(&path, serde_json::to_vec_pretty(&value)?)
            .with_context(|| format!("writing {}", path.display()))?;
        println!("{:>28}: {}", "report", path.display());
        Ok(value)
    }
}

fn readable(value: &Value) -> String {
    match value {
        Value::Object(map) => map
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" "),
        other => other.to_string(),
    }
}

/// Where the figures came from.
fn machine() -> Value {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .next()
                .map(|l| l.split_whitespace().nth(1).unwrap_or("").to_owned())
        })
        .and_then(|kib| kib.parse::<u64>().ok())
        .map_or(0, |kib| kib / 1024 / 1024);
    json!({"cpus": cpus, "memory_gib": memory, "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim()})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_nearest_rank() {
        let us: Vec<u64> = (1..=1000).map(|i| i * 1000).collect();
        let p = percentiles_ms(&us);
        assert_eq!(p["p50_ms"], 500.0);
        assert_eq!(p["p99_ms"], 990.0);
        assert_eq!(p["p999_ms"], 999.0);
        assert_eq!(p["max_ms"], 1000.0);
        assert_eq!(percentiles_ms(&[])["count"], 0);
    }
}

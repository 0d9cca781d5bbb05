//! PNG charts of a run: wake latency by percentile, parked Pings and frontend memory over time.

use std::path::Path;

use anyhow::{anyhow, Result};
use plotters::prelude::*;

/// One reading of the cluster, `secs` into the run.
#[derive(Clone, Copy, Debug, serde::Serialize)]
pub struct Sample {
    pub secs: f64,
    pub parked: f64,
    pub rss_mb: f64,
}

const FONTS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Registers a font for the labels; charts need one (Debian: fonts-dejavu-core).
fn font() -> Result<()> {
    static DONE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        FONTS
            .iter()
            .find_map(|p| std::fs::read(p).ok())
            .is_some_and(|bytes| {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                plotters::style::register_font("sans-serif", FontStyle::Normal, bytes).is_ok()
            })
    });
    ok.then_some(())
        .ok_or_else(|| anyhow!("no DejaVuSans.ttf found (install fonts-dejavu-core)"))
}

/// Draws `series` (x, y) as a line chart into `path`.
fn line(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[(f64, f64)],
) -> Result<()> {
    font()?;
    let root = BitMapBackend::new(path, (900, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow!("{e}"))?;
    let x_max = series.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let y_max = series.iter().map(|p| p.1).fold(0.0, f64::max).max(1e-9) * 1.05;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..y_max)
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(|e| anyhow!("{e}"))?;
    chart
        .draw_series(LineSeries::new(
            series.iter().copied(),
            BLUE.stroke_width(2),
        ))
        .map_err(|e| anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow!("{e}"))?;
    Ok(())
}

/// Latency (ms) at each percentile, from sorted microseconds.
pub fn latency(out: &Path, name: &str, title: &str, sorted_us: &[u64]) -> Result<()> {
    if sorted_us.is_empty() {
        return Ok(());
    }
    let n = sorted_us.len();
    let points: Vec<(f64, f64)> = (0..=1000)
        .map(|i| {
            let q = f64::from(i) / 10.0;
            let at = ((n as f64 * q / 100.0).ceil() as usize).clamp(1, n) - 1;
            (q, sorted_us[at] as f64 / 1000.0)
        })
        .collect();
    line(
        &out.join(name),
        title,
        "percentile",
        "latency (ms)",
        &points,
    )
}

pub fn timeline(out: &Path, samples: &[Sample]) -> Result<()> {
    let parked: Vec<_> = samples.iter().map(|s| (s.secs, s.parked)).collect();
    line(
        &out.join("parked.png"),
        "Parked Pings over time",
        "seconds",
        "parked Pings",
        &parked,
    )?;
    let memory: Vec<_> = samples.iter().map(|s| (s.secs, s.rss_mb)).collect();
    if memory.iter().any(|m| m.1 > 0.0) {
        line(
            &out.join("memory.png"),
            "Frontend memory (RSS, all frontends)",
            "seconds",
            "MB",
            &memory,
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_pngs() {
        let dir = std::env::temp_dir().join(format!("lt-charts-{:x}", rand::random::<u64>()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let us: Vec<u64> = (1..500).map(|i| i * 37).collect();
        latency(&dir, "latency.png", "Wake latency", &us).expect("latency chart");
        let samples: Vec<Sample> = (0..20)
            .map(|i| Sample {
                secs: f64::from(i),
                parked: f64::from(i * 100),
                rss_mb: 50.0 + f64::from(i),
            })
            .collect();
        timeline(&dir, &samples).expect("timeline charts");
        for name in ["latency.png", "parked.png", "memory.png"] {
            let bytes = std::fs::read(dir.join(name)).expect(name);
            assert_eq!(&bytes[1..4], b"PNG", "{name} is a PNG");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

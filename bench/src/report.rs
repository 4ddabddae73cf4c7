//! Results as JSON (`results.json`), Markdown (`report.md`) and SVG plots (`throughput.svg`:
//! throughput vs clients per scenario; `latency-cdf.svg`: latency by percentile per scenario at its
//! highest client count), drawn with plotters.

use std::path::Path;

use plotters::prelude::*;
use serde::{Deserialize, Serialize};

use crate::load::Measured;
use crate::BenchError;

/// One scenario at one load level.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Row {
    pub scenario: String,
    pub clients: usize,
    /// `closed` or `open N/s`.
    pub mode: String,
    pub ok: u64,
    pub errors: u64,
    pub seconds: f64,
    pub rps: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub rss_max_mb: Option<f64>,
    pub first_error: Option<String>,
    /// (percentile, ms) points for the latency CDF.
    pub cdf: Vec<(f64, f64)>,
}

impl Row {
    pub fn from_measured(scenario: &str, clients: usize, mode: String, m: &Measured) -> Row {
        let ms = |q: f64| if m.hist.is_empty() { 0.0 } else { m.hist.value_at_quantile(q) as f64 / 1000.0 };
        let cdf = [0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95, 0.99, 0.995, 0.999, 1.0].iter().map(|q| (q * 100.0, ms(*q))).collect();
        Row {
            scenario: scenario.to_string(),
            clients,
            mode,
            ok: m.ok,
            errors: m.errors,
            seconds: m.elapsed.as_secs_f64(),
            rps: m.ok as f64 / m.elapsed.as_secs_f64().max(1e-9),
            p50_ms: ms(0.5),
            p95_ms: ms(0.95),
            p99_ms: ms(0.99),
            max_ms: if m.hist.is_empty() { 0.0 } else { m.hist.max() as f64 / 1000.0 },
            rss_max_mb: m.rss_max_kb.map(|kb| kb as f64 / 1024.0),
            first_error: m.first_error.clone(),
            cdf,
        }
    }
}

/// A whole benchmark run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub date: String,
    pub base: String,
    pub cpus: usize,
    pub patients: usize,
    pub seed: u64,
    pub loaded: Option<u64>,
    pub load_resources_per_s: Option<f64>,
    pub rows: Vec<Row>,
    /// Scenario name → why it did not run.
    pub skipped: Vec<(String, String)>,
}

impl Report {
    /// Writes `results.json`, `report.md`, `throughput.svg`, `latency-cdf.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> Result<(), BenchError> {
        std::fs::create_dir_all(dir)?;
        std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(self)?)?;
        std::fs::write(dir.join("report.md"), self.markdown())?;
        self.plot_throughput(&dir.join("throughput.svg"))?;
        self.plot_cdf(&dir.join("latency-cdf.svg"))?;
        Ok(())
    }

    fn scenarios(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for r in &self.rows {
            if !names.contains(&r.scenario.as_str()) {
                names.push(&r.scenario);
            }
        }
        names
    }

    pub fn markdown(&self) -> String {
        let mut s = format!(
            "# kiln-bench results\n\n- date: {}\n- target: {}\n- CPUs (client and server share them when local): {}\n- data: {} patients (seed {})\n",
            self.date, self.base, self.cpus, self.patients, self.seed
        );
        if let (Some(n), Some(rps)) = (self.loaded, self.load_resources_per_s) {
            s += &format!("- load: {n} resources by PUT, {rps:.0} resources/s\n");
        }
        for name in self.scenarios() {
            s += &format!("\n## {name}\n\n| clients | mode | ok | req/s | p50 ms | p95 ms | p99 ms | max ms | errors | server RSS MB |\n|---|---|---|---|---|---|---|---|---|---|\n");
            for r in self.rows.iter().filter(|r| r.scenario == name) {
                let rss = r.rss_max_mb.map(|m| format!("{m:.0}")).unwrap_or_else(|| "-".into());
                s += &format!(
                    "| {} | {} | {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {} | {} |\n",
                    r.clients, r.mode, r.ok, r.rps, r.p50_ms, r.p95_ms, r.p99_ms, r.max_ms, r.errors, rss
                );
                if let Some(e) = &r.first_error {
                    s += &format!("\nfirst error: `{}`\n", e.replace('`', "'"));
                }
            }
        }
        if !self.skipped.is_empty() {
            s += "\n## Skipped\n\n";
            for (name, why) in &self.skipped {
                s += &format!("- {name}: {why}\n");
            }
        }
        s += "\nPlots: `throughput.svg` (req/s by clients), `latency-cdf.svg` (latency by percentile).\n";
        s
    }

    fn plot_throughput(&self, path: &Path) -> Result<(), BenchError> {
        let series = self
            .scenarios()
            .into_iter()
            .map(|name| {
                let points = self.rows.iter().filter(|r| r.scenario == name).map(|r| (r.clients as f64, r.rps)).collect();
                (name.to_string(), points)
            })
            .collect();
        let plot = Plot { caption: "Throughput by concurrent clients", x_desc: "clients", y_desc: "requests/s", markers: true };
        plot.draw(path, series)
    }

    fn plot_cdf(&self, path: &Path) -> Result<(), BenchError> {
        let series = self
            .scenarios()
            .into_iter()
            .filter_map(|name| self.rows.iter().filter(|r| r.scenario == name).max_by_key(|r| r.clients))
            .map(|r| (format!("{} ({} clients)", r.scenario, r.clients), r.cdf.iter().copied().filter(|(q, _)| *q <= 99.9).collect()))
            .collect();
        let plot = Plot { caption: "Latency by percentile (highest client count per scenario)", x_desc: "percentile", y_desc: "latency ms", markers: false };
        plot.draw(path, series)
    }
}

/// A line chart: one labelled series per scenario (or node).
pub struct Plot {
    pub caption: &'static str,
    pub x_desc: &'static str,
    pub y_desc: &'static str,
    pub markers: bool,
}

impl Plot {
    pub fn draw(&self, path: &Path, series: Vec<(String, Vec<(f64, f64)>)>) -> Result<(), BenchError> {
        let err = |e: &dyn std::fmt::Display| BenchError::Plot(e.to_string());
        let points = || series.iter().flat_map(|(_, p)| p.iter());
        let x_max = points().map(|p| p.0).fold(1.0, f64::max);
        let y_max = points().map(|p| p.1).fold(1.0, f64::max);
        let root = SVGBackend::new(path, (900, 540)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(&e))?;
        let mut chart = ChartBuilder::on(&root)
            .caption(self.caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max * 1.1)
            .map_err(|e| err(&e))?;
        chart.configure_mesh().x_desc(self.x_desc).y_desc(self.y_desc).draw().map_err(|e| err(&e))?;
        for (i, (label, pts)) in series.into_iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?
                .label(label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
            if self.markers {
                chart.draw_series(pts.into_iter().map(|p| Circle::new(p, 4, color.filled()))).map_err(|e| err(&e))?;
            }
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .draw()
            .map_err(|e| err(&e))?;
        root.present().map_err(|e| err(&e))?;
        Ok(())
    }
}

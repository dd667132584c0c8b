//! `--plot FILE.svg`: throughput against queues or bindings, latency distributions, and the log's
//! append rate against appends in flight.

use std::path::Path;

use plotters::coord::ranged1d::ValueFormatter;
use plotters::prelude::*;
use serde_json::Value;

/// Draws the scenario's results; scenarios without a curve to draw are refused.
/// Refuses a plot that cannot be written, before the benchmark runs: a scenario without a plot, a
/// format other than SVG, or a folder that does not exist.
pub(crate) fn check_path(path: &Path, scenario: &str) -> Result<(), String> {
    if !matches!(scenario, "wide" | "bindings" | "latency" | "log") {
        return Err(format!("--plot draws wide, bindings, latency and log, not {scenario}"));
    }
    if path.extension().and_then(|e| e.to_str()) != Some("svg") {
        return Err(format!("--plot {}: the plot is SVG; name a .svg file", path.display()));
    }
    let folder = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !folder.is_dir() {
        return Err(format!("--plot {}: no folder {}", path.display(), folder.display()));
    }
    Ok(())
}

pub(crate) fn draw(path: &Path, scenario: &str, results: &[Value]) -> Result<(), String> {
    let series = match scenario {
        "wide" => curves(results, "queues", "deliveries_per_sec"),
        "bindings" => curves(results, "bindings", "deliveries_per_sec"),
        "latency" => latency_curves(results),
        "log" => log_curves(results),
        other => return Err(format!("--plot draws wide, bindings, latency and log, not {other}")),
    };
    let (x_label, y_label, log_x) = match scenario {
        "wide" => ("queues", "deliveries/s", true),
        "bindings" => ("bindings", "routes/s", true),
        "log" => ("appends in flight", "appends/s (acked)", true),
        _ => ("percentile", "publish → handler, µs", false),
    };
    let root = SVGBackend::new(path, (800, 500)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let xs = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x));
    let ys = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y));
    let (x_max, y_max) = (xs.fold(1.0_f64, f64::max), ys.fold(1.0_f64, f64::max) * 1.1);
    let caption = format!("tubemail bench {scenario}");
    let mut chart = ChartBuilder::on(&root);
    chart.caption(caption, ("sans-serif", 22)).margin(15).x_label_area_size(40).y_label_area_size(70);
    if scenario == "log" {
        // Rates from thousands (a sync per record) to millions (in memory): both axes logarithmic.
        let y_min = series.iter().flat_map(|(_, p)| p.iter().map(|(_, y)| *y)).fold(y_max, f64::min) / 8.0;
        let c = chart
            .build_cartesian_2d((1.0..x_max * 1.5).log_scale(), (y_min.max(1.0)..y_max * 2.0).log_scale());
        let mut c = c.map_err(|e| e.to_string())?;
        draw_lines(&mut c, x_label, y_label, &series, SeriesLabelPosition::LowerRight)?;
        let palette = PALETTE;
        // Dots where measured (the same series, in the same order, as the lines).
        for (i, (_, points)) in log_points(results).iter().enumerate() {
            let color = palette[i % palette.len()];
            c.draw_series(points.iter().map(|&(x, y)| Circle::new((x, y), 4, color.filled())))
                .map_err(|e| e.to_string())?;
        }
    } else if log_x {
        let c = chart.build_cartesian_2d((1.0..x_max * 1.5).log_scale(), 0.0..y_max);
        draw_lines(
            &mut c.map_err(|e| e.to_string())?,
            x_label,
            y_label,
            &series,
            SeriesLabelPosition::MiddleRight,
        )?;
    } else {
        let c = chart.build_cartesian_2d(0.0..x_max, 0.0..y_max);
        draw_lines(
            &mut c.map_err(|e| e.to_string())?,
            x_label,
            y_label,
            &series,
            SeriesLabelPosition::MiddleRight,
        )?;
    }
    root.present().map_err(|e| e.to_string())
}

/// Draws the mesh, one line per series and the legend, on linear or logarithmic axes alike.
fn draw_lines<'a, DB, X, Y>(
    c: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    x_label: &str,
    y_label: &str,
    series: &Series,
    legend: SeriesLabelPosition,
) -> Result<(), String>
where
    DB: DrawingBackend + 'a,
    X: Ranged<ValueType = f64> + ValueFormatter<f64>,
    Y: Ranged<ValueType = f64> + ValueFormatter<f64>,
{
    let palette = PALETTE;
    // Whole numbers without a decimal point (a log axis's labels are whole, and long).
    let tidy = |v: &f64| if v.fract() == 0.0 { format!("{v:.0}") } else { format!("{v}") };
    c.configure_mesh()
        .x_desc(x_label)
        .y_desc(y_label)
        .x_label_formatter(&tidy)
        .y_label_formatter(&tidy)
        .draw()
        .map_err(|e| e.to_string())?;
    for (i, (name, points)) in series.iter().enumerate() {
        let color = palette[i % palette.len()];
        c.draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))
            .map_err(|e| e.to_string())?
            .label(name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    c.configure_series_labels()
        .position(legend)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.8))
        .draw()
        .map_err(|e| e.to_string())
}

type Series = Vec<(String, Vec<(f64, f64)>)>;

const PALETTE: [RGBColor; 9] = [
    BLUE,
    RED,
    GREEN,
    MAGENTA,
    CYAN,
    BLACK,
    RGBColor(255, 140, 0),
    RGBColor(128, 0, 128),
    RGBColor(139, 69, 19),
];

fn label(r: &Value) -> String {
    match r["mode"].as_str() {
        Some(mode) => format!("{} {mode}", r["system"].as_str().unwrap_or_default()),
        None => r["system"].as_str().unwrap_or_default().to_owned(),
    }
}

fn curves(results: &[Value], x: &str, y: &str) -> Series {
    let mut series: Series = Vec::new();
    for r in results {
        let (Some(xv), Some(yv)) = (r[x].as_f64(), r[y].as_f64()) else { continue };
        let name = label(r);
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push((xv, yv)),
            None => series.push((name, vec![(xv, yv)])),
        }
    }
    series
}

/// The log's appends: one series per system and fsync policy, appends/s against appends in flight. A
/// policy measured at one in-flight count only (it acks when the append returns, so more in flight
/// change nothing for one appender) is drawn flat across the axis from its one measured point (the
/// dot).
fn log_curves(results: &[Value]) -> Series {
    let mut series = log_points(results);
    let x_max = series.iter().flat_map(|(_, p)| p.iter().map(|(x, _)| *x)).fold(1.0_f64, f64::max);
    for (_, points) in &mut series {
        if let [(x, y)] = points[..] {
            if x < x_max {
                points.push((x_max, y));
            }
        }
    }
    series
}

/// The log's measured appends/s by in-flight count, one series per system and fsync policy.
fn log_points(results: &[Value]) -> Series {
    let mut series: Series = Vec::new();
    for r in results.iter().filter(|r| r["op"] == "append") {
        let (Some(x), Some(y)) = (r["in_flight"].as_f64(), r["records_per_sec"].as_f64()) else { continue };
        let name = format!(
            "{} {}",
            r["system"].as_str().unwrap_or_default(),
            r["fsync"].as_str().unwrap_or_default()
        );
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, points)) => points.push((x, y)),
            None => series.push((name, vec![(x, y)])),
        }
    }
    series
}

fn latency_curves(results: &[Value]) -> Series {
    results
        .iter()
        .filter_map(|r| {
            let d = r["distribution"].as_array()?;
            Some((
                label(r),
                d.iter().enumerate().filter_map(|(i, v)| Some(((i + 1) as f64, v.as_f64()?))).collect(),
            ))
        })
        .collect()
}

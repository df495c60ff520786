//! The run report (`wsss-dist report`): one self-contained HTML page per run, viewable with no
//! network access: training curves as inline SVG (plotters), the τ sweep, per-class IoU
//! tables, and a grid of sample images with their CAM heat maps, pseudo-labels, predictions
//! and ground truth overlaid, as PNG data URIs.
//!
//! Library code: builds the page from what a stage read; the stage gathers and writes it.

use std::fmt::Write as _;

use base64::Engine as _;
use plotters::prelude::*;

use crate::data::codec::{encode_rgb_png, voc_color, Rgb};
use crate::refine::pseudo::UNCERTAIN;

/// One point of a training curve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub x: f64,
    pub y: f64,
}

/// A line chart: a title, axis names and named series.
#[derive(Debug, Clone)]
pub struct Chart {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub series: Vec<(String, Vec<Point>)>,
}

/// A table: a caption, a header row and body rows (cells already formatted).
#[derive(Debug, Clone)]
pub struct Table {
    pub caption: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<String>>,
}

/// One row of the sample grid: an image id and its panels (caption, image).
#[derive(Debug, Clone)]
pub struct SampleRow {
    pub id: String,
    pub panels: Vec<(String, Rgb)>,
}

/// Everything a report shows, section by section.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub title: String,
    /// Lines of the summary at the top (e.g. the figures side by side).
    pub summary: Vec<String>,
    pub charts: Vec<Chart>,
    pub tables: Vec<Table>,
    pub samples: Vec<SampleRow>,
    /// What is missing from the run, said on the page instead of left out silently.
    pub notes: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("drawing the chart `{chart}`: {message}")]
    Chart { chart: String, message: String },
}

const CHART_SIZE: (u32, u32) = (560, 300);
/// Series colours (Okabe–Ito, distinguishable for colour-blind readers).
const COLOURS: [RGBColor; 4] = [RGBColor(0, 114, 178), RGBColor(213, 94, 0), RGBColor(0, 158, 115), RGBColor(204, 121, 167)];

/// The page as one HTML string.
pub fn html(report: &Report) -> Result<String, ReportError> {
    let mut page = String::new();
    let title = escape(&report.title);
    let _ = write!(
        page,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{title}</title><style>{STYLE}</style></head><body>\n<h1>{title}</h1>\n"
    );
    for line in &report.summary {
        let _ = writeln!(page, "<p class=\"summary\">{}</p>", escape(line));
    }
    for note in &report.notes {
        let _ = writeln!(page, "<p class=\"note\">{}</p>", escape(note));
    }
    if !report.charts.is_empty() {
        page.push_str("<h2>Curves</h2>\n<div class=\"charts\">\n");
        for chart in &report.charts {
            let _ = writeln!(page, "<figure>{}</figure>", svg_chart(chart)?);
        }
        page.push_str("</div>\n");
    }
    for table in &report.tables {
        page.push_str(&html_table(table));
    }
    if !report.samples.is_empty() {
        page.push_str("<h2>Samples</h2>\n<table class=\"samples\">\n");
        for row in &report.samples {
            let _ = write!(page, "<tr><th>{}</th>", escape(&row.id));
            for (caption, image) in &row.panels {
                let _ = write!(page, "<td><img alt=\"{0}\" title=\"{0}\" src=\"{1}\"><br>{0}</td>", escape(caption), png_data_uri(image));
            }
            page.push_str("</tr>\n");
        }
        page.push_str("</table>\n");
    }
    page.push_str("</body></html>\n");
    Ok(page)
}

const STYLE: &str = "body{font-family:sans-serif;margin:1.5em;max-width:1400px}table{border-collapse:collapse;margin:0.5em 0 1.5em}\
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}th{background:#f3f3f3}caption{text-align:left;font-weight:bold;padding:4px 0}\
.samples td{text-align:center;font-size:85%}.samples th{text-align:left}.charts{display:flex;flex-wrap:wrap;gap:1em}figure{margin:0}\
.note{color:#a33}.summary{font-size:110%}";

fn html_table(table: &Table) -> String {
    let mut out = format!("<table><caption>{}</caption>\n<tr>", escape(&table.caption));
    for cell in &table.header {
        let _ = write!(out, "<th>{}</th>", escape(cell));
    }
    out.push_str("</tr>\n");
    for row in &table.rows {
        out.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let tag = if i == 0 { "th" } else { "td" };
            let _ = write!(out, "<{tag}>{}</{tag}>", escape(cell));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    out
}

/// A line chart as an inline `<svg>` element.
fn svg_chart(chart: &Chart) -> Result<String, ReportError> {
    let fail = |e: &dyn std::fmt::Display| ReportError::Chart { chart: chart.title.clone(), message: e.to_string() };
    let points = chart.series.iter().flat_map(|(_, p)| p.iter()).filter(|p| p.x.is_finite() && p.y.is_finite());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::INFINITY, f64::NEG_INFINITY, f64::INFINITY, f64::NEG_INFINITY);
    for p in points {
        (x0, x1, y0, y1) = (x0.min(p.x), x1.max(p.x), y0.min(p.y), y1.max(p.y));
    }
    if !(x0 <= x1 && y0 <= y1) {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    // A flat series still needs a y range.
    let pad = ((y1 - y0) * 0.05).max(1e-9);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, CHART_SIZE).into_drawing_area();
        root.fill(&WHITE).map_err(|e| fail(&e))?;
        let mut ctx = ChartBuilder::on(&root)
            .caption(&chart.title, ("sans-serif", 16))
            .margin(8)
            .x_label_area_size(36)
            .y_label_area_size(56)
            .build_cartesian_2d(x0..x1.max(x0 + 1e-9), (y0 - pad)..(y1 + pad))
            .map_err(|e| fail(&e))?;
        ctx.configure_mesh().x_desc(&chart.x_label).y_desc(&chart.y_label).light_line_style(WHITE.mix(0.0)).draw().map_err(|e| fail(&e))?;
        for (i, (name, series)) in chart.series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let line = LineSeries::new(series.iter().filter(|p| p.x.is_finite() && p.y.is_finite()).map(|p| (p.x, p.y)), colour.stroke_width(2));
            ctx.draw_series(line).map_err(|e| fail(&e))?.label(name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 16, y)], colour.stroke_width(2)));
        }
        if chart.series.len() > 1 {
            ctx.configure_series_labels().background_style(WHITE.mix(0.8)).border_style(BLACK).draw().map_err(|e| fail(&e))?;
        }
        root.present().map_err(|e| fail(&e))?;
    }
    Ok(svg)
}

/// `image` as a `data:image/png;base64,…` URI.
pub fn png_data_uri(image: &Rgb) -> String {
    let png = encode_rgb_png(image.width, image.height, &image.pixels);
    format!("data:image/png;base64,{}", base64::engine::general_purpose::STANDARD.encode(png))
}

/// `image` resized (bilinear) so that it is `height` pixels high.
pub fn thumbnail(image: &Rgb, height: u32) -> Rgb {
    let width = ((image.width as f64 * height as f64 / image.height.max(1) as f64).round() as u32).max(1);
    let buffer = image::RgbImage::from_raw(image.width, image.height, image.pixels.clone()).expect("an Rgb holds width × height × 3 bytes");
    let small = image::imageops::resize(&buffer, width, height, image::imageops::FilterType::Triangle);
    Rgb { width, height, pixels: small.into_raw() }
}

/// Class ids (0 background, 1..C, 255 uncertain or ignored) over the photo: each class in
/// its VOC colour at half opacity, background left as it is, 255 whitened.
pub fn overlay_labels(photo: &Rgb, labels: &[u8]) -> Rgb {
    let mix = |c: u8, o: u8| ((c as u16 + o as u16) / 2) as u8;
    blend(photo, labels, |rgb, &label| match label {
        0 => rgb,
        UNCERTAIN => rgb.map(|c| mix(c, 255)),
        class => {
            let o = voc_color(class);
            [mix(rgb[0], o[0]), mix(rgb[1], o[1]), mix(rgb[2], o[2])]
        }
    })
}

/// A heat map of `activation` (one value in [0, 1] per pixel) over the photo: the jet colour
/// map blended at 60%.
pub fn overlay_heat(photo: &Rgb, activation: &[f32]) -> Rgb {
    let mix = |c: u8, h: u8| (0.4 * c as f32 + 0.6 * h as f32).round() as u8;
    blend(photo, activation, |rgb, &a| {
        let heat = jet(a);
        [mix(rgb[0], heat[0]), mix(rgb[1], heat[1]), mix(rgb[2], heat[2])]
    })
}

/// The photo with each pixel recoloured by `colour` from its RGB and its value in `values`.
fn blend<T>(photo: &Rgb, values: &[T], colour: impl Fn([u8; 3], &T) -> [u8; 3]) -> Rgb {
    let pixels = photo.pixels.chunks_exact(3).zip(values).flat_map(|(rgb, value)| colour([rgb[0], rgb[1], rgb[2]], value)).collect();
    Rgb { width: photo.width, height: photo.height, pixels }
}

/// The jet colour map: blue (0) through cyan, yellow to red (1).
fn jet(a: f32) -> [u8; 3] {
    let a = if a.is_finite() { a.clamp(0.0, 1.0) } else { 0.0 };
    let channel = |offset: f32| ((1.5 - (4.0 * a - offset).abs()).clamp(0.0, 1.0) * 255.0).round() as u8;
    [channel(3.0), channel(2.0), channel(1.0)]
}

/// HTML text with `& < > "` escaped.
fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn photo() -> Rgb {
        Rgb { width: 4, height: 2, pixels: vec![100; 24] }
    }

    #[test]
    fn overlays_colour_classes_keep_background_and_whiten_uncertain_pixels() {
        let out = overlay_labels(&photo(), &[0, 1, 255, 15, 0, 0, 0, 0]);
        assert_eq!(&out.pixels[..3], &[100, 100, 100]);
        assert_eq!(&out.pixels[3..6], &[114, 50, 50], "aeroplane (128, 0, 0) at half opacity");
        assert_eq!(&out.pixels[6..9], &[177, 177, 177]);
        assert_eq!(&out.pixels[9..12], &[146, 114, 114], "person (192, 128, 128)");
        let heat = overlay_heat(&photo(), &[0.0, 1.0, 0.5, f32::NAN, 0.0, 0.0, 0.0, 0.0]);
        // jet(0) = (0, 0, 128), jet(1) = (128, 0, 0); blended 0.4 · 100 + 0.6 · colour.
        assert_eq!(&heat.pixels[..3], &[40, 40, 117], "0 is dark blue");
        assert_eq!(&heat.pixels[3..6], &[117, 40, 40], "1 is dark red");
        assert_eq!(&heat.pixels[9..12], &[40, 40, 117], "NaN reads as 0");
        assert_eq!(jet(0.5), [128, 255, 128]);
    }

    #[test]
    fn the_page_is_self_contained_and_escaped() {
        let report = Report {
            title: "run <a&b>".into(),
            summary: vec!["CAM 43.1".into()],
            charts: vec![Chart {
                title: "loss".into(),
                x_label: "step".into(),
                y_label: "loss".into(),
                series: vec![("train".into(), vec![Point { x: 1.0, y: 0.7 }, Point { x: 2.0, y: 0.5 }])],
            }],
            tables: vec![Table { caption: "IoU".into(), header: vec!["class".into(), "CAM".into()], rows: vec![vec!["cat".into(), "41.0".into()]] }],
            samples: vec![SampleRow { id: "img1".into(), panels: vec![("photo".into(), photo())] }],
            notes: vec!["no segmenter".into()],
        };
        let page = html(&report).unwrap();
        assert!(page.contains("<title>run &lt;a&amp;b&gt;</title>") && page.contains("<svg") && page.contains("data:image/png;base64,"));
        for fetch in ["src=\"http", "href=\"http", "<script", "<link", "url("] {
            assert!(!page.contains(fetch), "nothing to load from elsewhere: {fetch}");
        }
    }
}

//! Markdown tables of evaluation reports, for people (JSON is for programs).

use serde::Serialize;

use super::cam_eval::CamReport;

/// What `eval pseudo` reports: scores over the labelled pixels, and how many are labelled.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PseudoReport {
    pub classes: Vec<String>,
    pub miou: f64,
    pub iou: Vec<Option<f64>>,
    pub pixel_accuracy: f64,
    /// Share of all pixels that are not 255 (uncertain).
    pub labelled: f64,
    /// The mIoU over every pixel, an uncertain one counted as an error of its ground-truth
    /// class: comparable with a prediction that labels every pixel (a segmenter's).
    pub miou_all_pixels: f64,
}

/// Per-class IoU (in %) of pseudo-labels, their mIoU and the share of pixels labelled.
pub fn pseudo_markdown(report: &PseudoReport) -> String {
    let mut text = "| class | IoU |\n|---|---:|\n".to_string();
    for (c, name) in report.classes.iter().enumerate() {
        text += &format!("| {name} | {} |\n", percent(report.iou[c]));
    }
    text += &format!(
        "| **mIoU** | **{}** |\n\npixels labelled (not 255): {:.1}%; mIoU over every pixel, the uncertain ones counted as errors: {}\n",
        percent(Some(report.miou)),
        100.0 * report.labelled,
        percent(Some(report.miou_all_pixels))
    );
    text
}

fn percent(iou: Option<f64>) -> String {
    iou.map_or_else(|| "–".to_string(), |v| format!("{:.1}", 100.0 * v))
}

/// Per-class IoU (in %) at the best τ, at the method's τ and for the image-label baseline,
/// then the τ sweep.
pub fn cam_markdown(report: &CamReport) -> String {
    let mut text = format!("| class | CAM, best τ = {:.2} | CAM, τ = {:.2} | image-label baseline |\n|---|---:|---:|---:|\n", report.best_tau, report.tau);
    for (c, name) in report.classes.iter().enumerate() {
        text += &format!("| {name} | {} | {} | {} |\n", percent(report.best.iou[c]), percent(report.at_tau.iou[c]), percent(report.baseline.iou[c]));
    }
    text += &format!(
        "| **mIoU** | **{}** | **{}** | **{}** |\n\n",
        percent(Some(report.best.miou)),
        percent(Some(report.at_tau.miou)),
        percent(Some(report.baseline.miou))
    );
    let taus: Vec<String> = report.sweep.iter().map(|p| format!("{:.2}", p.tau)).collect();
    let mious: Vec<String> = report.sweep.iter().map(|p| percent(Some(p.miou))).collect();
    text += &format!("| τ | {} |\n|---|{}\n| mIoU | {} |\n", taus.join(" | "), "---:|".repeat(taus.len()), mious.join(" | "));
    text
}

/// `run`'s figures (its summary details) on one line, split by split: CAM and pseudo-labels of `cam.split`, then
/// (when trained) the CAMs of the segmenter's split beside the segmenter's figures.
pub fn side_by_side(details: &serde_json::Value) -> String {
    let percent = |v: &serde_json::Value| v.as_f64().map_or("?".to_string(), |x| format!("{:.1}", 100.0 * x));
    let split = |eval: &serde_json::Value| eval["split"].as_str().unwrap_or("?").to_string();
    let cam = |eval: &serde_json::Value| {
        let report = &eval["report"];
        format!(
            "CAM {} (best τ {}), image-label baseline {}",
            percent(&report["best"]["miou"]),
            report["best_tau"].as_f64().map_or("?".to_string(), |t| format!("{t:.2}")),
            percent(&report["baseline"]["miou"]),
        )
    };
    let labels = |report: &serde_json::Value| {
        format!("{} on {}% of pixels ({} over every pixel)", percent(&report["miou"]), percent(&report["labelled"]), percent(&report["miou_all_pixels"]))
    };
    let mut line = format!("mIoU on {}: {}; ", split(&details["eval_cam"]), cam(&details["eval_cam"]));
    if let Some(seeds) = details.get("eval_seeds") {
        line += &format!("irn_seeds {}; random-walk ", labels(&seeds["report"]));
    }
    line += &format!("pseudo-labels {}", labels(&details["eval_pseudo"]["report"]));
    let segmenter: Vec<String> = [("seg", "segmenter"), ("seg_crf", "segmenter + CRF")]
        .into_iter()
        .filter_map(|(key, what)| Some(format!("{what} {}", percent(&details["eval_seg"].get(key)?["report"]["miou"]))))
        .collect();
    if segmenter.is_empty() {
        return line;
    }
    match details.get("eval_cam_seg_split") {
        Some(eval) => format!("{line}. On {}: {}; {}", split(eval), cam(eval), segmenter.join("; ")),
        None => format!("{line}; {}", segmenter.join("; ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::cam_eval::{Scores, SweepPoint};

    #[test]
    fn renders_every_class_and_the_sweep() {
        let scores = |m: f64| Scores { miou: m, iou: vec![Some(0.5), None], pixel_accuracy: 0.0, coverage: 0.0, precision: 0.0 };
        let report = CamReport {
            classes: vec!["background".into(), "cat".into()],
            sweep: vec![SweepPoint { tau: 0.1, miou: 0.25 }, SweepPoint { tau: 0.2, miou: 0.5 }],
            best_tau: 0.2,
            best: scores(0.5),
            tau: 0.1,
            at_tau: scores(0.25),
            baseline: scores(0.125),
        };
        let text = cam_markdown(&report);
        assert!(text.contains("| background | 50.0 | 50.0 | 50.0 |"), "{text}");
        assert!(text.contains("| cat | – | – | – |"), "{text}");
        assert!(text.contains("| **mIoU** | **50.0** | **25.0** | **12.5** |"), "{text}");
        assert!(text.contains("| mIoU | 25.0 | 50.0 |"), "{text}");
    }

    #[test]
    fn pseudo_report_lists_classes_and_coverage() {
        let report = PseudoReport {
            classes: vec!["background".into(), "cat".into()],
            miou: 0.625,
            iou: vec![Some(0.75), Some(0.5)],
            pixel_accuracy: 0.9,
            labelled: 0.8,
            miou_all_pixels: 0.5,
        };
        let text = pseudo_markdown(&report);
        assert!(text.contains("| cat | 50.0 |") && text.contains("**62.5**") && text.contains("80.0%") && text.contains("counted as errors: 50.0"), "{text}");
    }
}

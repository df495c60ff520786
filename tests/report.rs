//! `wsss-dist report`: one self-contained HTML page per run. Checked by parsing (every embedded
//! image decodes, every chart is there) and, where a Chromium is installed, in the real browser:
//! every image loads and the console stays clean.

mod common;

use std::path::Path;
use std::process::Command;

use base64::Engine as _;
use common::{s, wsss_ok};

/// A tiny run through the CAM stages: 2 training steps, CAMs, pseudo-labels, both evaluations.
fn tiny() -> String {
    common::tiny_config(
        r#"
[data.synthetic]
train_images = 16
val_images = 6
size = 32
[train]
steps = 2
lr = 0.001
[cam]
split = "val"
scales = [1.0]
[pseudo_label]
method = "threshold"
"#,
    )
}

fn report_of_a_tiny_run() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    std::fs::write(dir.join("config.toml"), tiny()).unwrap();
    let config = ["--config", "config.toml"];
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/train", "--images", "16", "--size", "32"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/val", "--images", "6", "--size", "32", "--split", "val"]);
    for stage in [&["train", "cam"][..], &["cam"], &["pseudo-label"], &["eval", "cam"], &["eval", "pseudo"], &["report", "--samples", "4"]] {
        wsss_ok(dir, &[stage, &config].concat());
    }
    let page = std::fs::read_to_string(dir.join("runs/tiny/report.html")).unwrap();
    (tmp, page)
}

/// The page loads nothing from elsewhere, holds the four charts, the IoU table and four
/// sample rows, and every embedded image is a PNG that decodes.
#[test]
fn the_report_is_self_contained_and_every_image_decodes() {
    let (_tmp, page) = report_of_a_tiny_run();
    for fetch in ["src=\"http", "href=\"http", "<script", "<link", "url("] {
        assert!(!page.contains(fetch), "the page would fetch {fetch}");
    }
    assert_eq!(page.matches("<svg").count(), 4, "loss, lr, images/s and the τ sweep");
    assert!(page.contains("IoU per class (%)") && page.contains("image-label baseline") && page.contains("pseudo-labels"));
    let images: Vec<&str> = page.split("src=\"data:image/png;base64,").skip(1).map(|rest| &rest[..rest.find('"').unwrap()]).collect();
    // Four rows of photo, CAM, pseudo-label and ground truth.
    assert_eq!(images.len(), 16);
    for (i, data) in images.iter().enumerate() {
        let png = base64::engine::general_purpose::STANDARD.decode(data).unwrap_or_else(|e| panic!("image {i}: {e}"));
        let decoded = image::load_from_memory_with_format(&png, image::ImageFormat::Png).unwrap_or_else(|e| panic!("image {i}: {e}"));
        assert_eq!(decoded.height(), 160, "image {i}");
    }
}

/// In headless Chromium (Debian's `chromium`, or WSSS_CHROMIUM): every image loads, no console
/// error. Where no Chromium is installed the test says so and does not run.
#[test]
fn the_report_opens_in_a_real_browser() {
    let browser = std::env::var_os("WSSS_CHROMIUM").map(std::path::PathBuf::from).unwrap_or_else(|| "/usr/bin/chromium".into());
    if !browser.exists() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr().lock(),
            "SKIPPED the_report_opens_in_a_real_browser: no Chromium at {} (apt-get install chromium, or set WSSS_CHROMIUM)",
            browser.display()
        );
        return;
    }
    let (tmp, page) = report_of_a_tiny_run();
    // The page has no script of its own: a copy gets one that counts the images that loaded.
    let probe = "<script>addEventListener('load', () => { const all = [...document.images]; \
                 document.body.dataset.images = all.length; document.body.dataset.loaded = all.filter(i => i.complete && i.naturalWidth > 0).length; });</script></body>";
    let probed = tmp.path().join("probed.html");
    std::fs::write(&probed, page.replace("</body>", probe)).unwrap();
    let profile = tmp.path().join("profile");
    let out = Command::new(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
        ])
        .args(["--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom"])
        .arg(format!("--user-data-dir={}", s(&profile)))
        .arg(format!("file://{}", s(&probed)))
        .output()
        .unwrap();
    let (dom, log) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{log}");
    assert!(dom.contains("data-images=\"16\" data-loaded=\"16\""), "every image loads: {}", &dom[dom.find("<body").unwrap_or(0)..][..200.min(dom.len())]);
    let console: Vec<&str> = log.lines().filter(|l| l.contains("CONSOLE")).collect();
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(Path::new(&profile).exists());
}

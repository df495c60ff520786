//! The refinement map phase through the binary and the dense CRF against pydensecrf:
//! `pseudo-label` on 1 and 2 real MPI ranks (identical shards), a rank killed mid-way and the
//! rerun (same bytes, done tasks not recomputed), a corrupt image (counted, the rest of its
//! shard processed), `eval pseudo`, `export png`, and `cam` as a map phase on 2 ranks.

mod common;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{mpirun, mpirun_ok, rank_process, run_python, s, voc_mini, wait_for, wsss_ok};
use wsss_dist::data::codec::{decode_mask, decode_rgb};
use wsss_dist::data::schema::FORMAT_VERSION;
use wsss_dist::data::shard::{shard_file_name, write_shard, ShardLayout, ShardReader};
use wsss_dist::data::{CamRow, Dataset, DatasetKind, ImageRow, Manifest};
use wsss_dist::refine::crf::{argmax_groups, unary_from_labels};
use wsss_dist::refine::{CrfParams, DenseCrf};

/// 48 training images of 32 px, ResNet-18, 12 steps; 40 val images of 48 px in 8 shards.
fn tiny() -> String {
    common::tiny_config(
        r#"
[train]
epochs = 2
lr = 0.01
checkpoint_every = 100
[cam]
split = "val"
scales = [1.0, 0.5]
[pseudo_label]
method = "irn_seeds"
threads = 1
"#,
    )
}

fn setup() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20"]);
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", "data/val", "--images", "40", "--size", "48", "--shard-rows", "5", "--split", "val"]);
    let config = tmp.path().join("config.toml");
    std::fs::write(&config, tiny()).unwrap();
    (tmp, s(&config).to_string())
}

/// The bytes of every shard of a dataset directory, in name order.
fn shards(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "parquet")).collect();
    files.sort();
    files.iter().map(|f| (f.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(f).unwrap())).collect()
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// Pipeline, then the map phases on 2 ranks give the 1-rank bytes; a killed pseudo-label job
/// reruns to the same bytes without redoing its finished tasks.
#[test]
fn map_phases_are_rank_count_independent_and_resume_after_a_kill() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let table = wsss_ok(dir, &["run", "--config", &config]);
    assert!(table.contains("pixels labelled (not 255)"), "the run ends with the pseudo-label table:\n{table}");
    let one = dir.join("runs/tiny/pseudo_labels/val");
    assert_eq!(shards(&one).len(), 8);
    let eval = json(&dir.join("runs/tiny/eval/pseudo.json"));
    assert_eq!(eval["images"], 40);
    let labelled = eval["report"]["labelled"].as_f64().unwrap();
    assert!(labelled > 0.0 && labelled <= 1.0, "{eval}");

    // The labels read with no code of ours: ids sorted within each shard, PNGs at the image size.
    let out = run_python(
        "import glob, io, sys, numpy as np, pyarrow.parquet as pq\nfrom PIL import Image\n\
         ok = True; n = 0\n\
         for f in sorted(glob.glob(sys.argv[1] + '/*.parquet')):\n\
         \x20   t = pq.read_table(f).to_pylist(); ids = [r['id'] for r in t]; ok &= ids == sorted(ids)\n\
         \x20   for r in t:\n\
         \x20       m = np.asarray(Image.open(io.BytesIO(r['mask']))); ok &= m.shape == (48, 48) and r['method'] == 'irn_seeds'; n += 1\n\
         print(ok, n)",
        &[s(&one)],
    );
    assert_eq!(out.trim(), "True 40");

    // 2 ranks: the same bytes, for the CAMs and for the pseudo-labels.
    mpirun_ok(dir, 2, &["cam", "--config", &config, "--set", "cam.out=cams2"]);
    assert!(shards(&dir.join("cams2")) == shards(&dir.join("runs/tiny/cams/val")), "cam on 2 ranks = 1 rank");
    let log = mpirun_ok(dir, 2, &["pseudo-label", "--config", &config, "--set", "pseudo_label.out=pseudo2"]);
    assert!(shards(&dir.join("pseudo2")) == shards(&one), "pseudo-label on 2 ranks = 1 rank");
    assert!(log.contains("rank 0:") && log.contains("rank 1:") && log.contains("images/s"), "per-rank rates in the summary:\n{log}");
    let summary = json(&dir.join("pseudo2/.map/summary.json"));
    assert_eq!(summary["progress_images"], 40, "rank 0's bar heard of every image of both ranks: {summary}");
    assert!(summary["ranks"][1]["images"].as_u64().unwrap() > 0, "{summary}");
    // The fused pass (inference feeding refinement) on 2 ranks: the bytes of `run`'s.
    mpirun_ok(dir, 2, &["cam", "--pseudo-labels", "--config", &config, "--set", "cam.out=cams3", "--set", "pseudo_label.out=pseudo3"]);
    assert!(shards(&dir.join("cams3")) == shards(&dir.join("runs/tiny/cams/val")), "fused cam on 2 ranks = run's");
    assert!(shards(&dir.join("pseudo3")) == shards(&one), "fused pseudo-labels on 2 ranks = run's");
    let phases = json(&dir.join("pseudo3/.map/summary.json"))["seconds_by_phase"].clone();
    assert!(phases["inference"].as_f64().unwrap() > 0.0 && phases["refine"].as_f64().unwrap() > 0.0, "{phases}");
    // A rerun finds the output complete and computes nothing.
    let log = String::from_utf8_lossy(&common::wsss(dir, &["pseudo-label", "--config", &config, "--set", "pseudo_label.out=pseudo2"]).stderr).into_owned();
    assert!(log.contains("is complete for these inputs and settings"), "{log}");

    // Kill a rank once 2 tasks are done (slowed down by many CRF iterations), rerun.
    let slow = ["pseudo-label", "--config", &config, "--set", "pseudo_label.out=killed", "--set", "pseudo_label.crf.iterations=400"];
    wsss_ok(dir, &["pseudo-label", "--config", &config, "--set", "pseudo_label.out=slow", "--set", "pseudo_label.crf.iterations=400"]);
    let mut job = mpirun(dir, 2, &slow).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let records = dir.join("killed/.map");
    let count =
        || std::fs::read_dir(&records).map(|d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("part-")).count()).unwrap_or(0);
    let started = Instant::now();
    while count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(120), "fewer than 2 tasks done after 2 minutes");
        std::thread::sleep(Duration::from_millis(10));
    }
    let rank = rank_process(job.id()).expect("a wsss-dist rank under mpirun");
    unsafe { libc::kill(rank as i32, libc::SIGKILL) };
    assert!(!wait_for(&mut job, Duration::from_secs(60)).success(), "a killed rank must fail the job");
    let done = count();
    assert!(done < 8, "killed before the end ({done} of 8 tasks done)");
    assert!(!dir.join("killed/_manifest.json").exists(), "an interrupted job must not look complete");
    let before: Vec<_> = std::fs::read_dir(&records)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_string_lossy().starts_with("part-"))
        .map(|e| (e.file_name(), e.metadata().unwrap().modified().unwrap()))
        .collect();
    let log = mpirun_ok(dir, 2, &slow);
    assert!(log.contains(&format!("{} task(s) to do, {done} done by an earlier run", 8 - done)), "{log}");
    assert!(log.contains(&format!("{} task(s) computed, {done} reused", 8 - done)), "{log}");
    for (name, modified) in before {
        assert_eq!(std::fs::metadata(records.join(&name)).unwrap().modified().unwrap(), modified, "{name:?} was redone");
    }
    assert!(shards(&dir.join("killed")) == shards(&dir.join("slow")), "the resumed result equals an uninterrupted run");

    // export png: VOC palette PNGs whose indices are the labels.
    wsss_ok(dir, &["export", "png", "--labels", s(&one), "--out", "png"]);
    let out = run_python(
        "import glob, io, sys, numpy as np, pyarrow.parquet as pq\nfrom PIL import Image\n\
         rows = [r for f in sorted(glob.glob(sys.argv[1] + '/*.parquet')) for r in pq.read_table(f).to_pylist()]\n\
         same = all(Image.open(sys.argv[2] + '/' + r['id'] + '.png').mode == 'P' and (np.asarray(Image.open(sys.argv[2] + '/' + r['id'] + '.png')) == np.asarray(Image.open(io.BytesIO(r['mask'])))).all() for r in rows)\n\
         p = Image.open(sys.argv[2] + '/' + rows[0]['id'] + '.png').getpalette()\n\
         print(same, len(rows), p[3:6], p[255 * 3:255 * 3 + 3])",
        &[s(&one), s(&dir.join("png"))],
    );
    assert_eq!(out.trim(), "True 40 [128, 0, 0] [224, 224, 192]");
}

/// AD-CAM and the direct coupling inside the `cam` map phase: each changes the CAMs, gives the
/// same bytes on 2 ranks, is named in the manifest, reruns only when its settings change, and
/// feeds `pseudo-label` and `eval cam` like any CAM dataset.
#[test]
fn ad_cam_refines_the_cams_alike_on_any_rank_count() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config]);
    wsss_ok(dir, &["cam", "--config", &config]);
    let plain = shards(&dir.join("runs/tiny/cams/val"));
    let ad_cam = ["cam", "--config", &config, "--set", "cam.refine=ad_cam", "--set", "cam.out=adcam"];
    wsss_ok(dir, &ad_cam);
    let adcam = shards(&dir.join("adcam"));
    assert!(adcam != plain, "AD-CAM left the CAMs as they were");
    let manifest = json(&dir.join("adcam/_manifest.json"));
    assert!(manifest["source"].as_str().unwrap().contains("AD-CAM"), "{manifest}");
    mpirun_ok(dir, 2, &["cam", "--config", &config, "--set", "cam.refine=ad_cam", "--set", "cam.out=adcam2"]);
    assert!(shards(&dir.join("adcam2")) == adcam, "AD-CAM on 2 ranks = 1 rank");
    wsss_ok(dir, &["cam", "--config", &config, "--set", "cam.refine=couple", "--set", "cam.out=couple"]);
    let couple = shards(&dir.join("couple"));
    assert!(couple != plain && couple != adcam, "the coupling is neither the CAM nor AD-CAM");
    // The same settings again: complete; another number of steps: computed anew.
    let log = String::from_utf8_lossy(&common::wsss(dir, &ad_cam).stderr).into_owned();
    assert!(log.contains("is complete for these inputs and settings"), "{log}");
    wsss_ok(dir, &[&ad_cam[..], &["--set", "cam.ad_cam.steps=3"]].concat());
    assert!(shards(&dir.join("adcam")) != adcam, "3 steps wrote the bytes of 2");
    // The refined CAMs go on like any others.
    wsss_ok(dir, &["pseudo-label", "--config", &config, "--set", "cam.out=adcam", "--set", "pseudo_label.out=adcam_labels"]);
    assert_eq!(json(&dir.join("adcam_labels/_manifest.json"))["rows"], 40);
    wsss_ok(dir, &["eval", "cam", "--config", &config, "--set", "cam.out=adcam"]);
    let best = json(&dir.join("runs/tiny/eval/cam.json"))["report"]["best"].clone();
    let (coverage, precision) = (best["coverage"].as_f64().unwrap(), best["precision"].as_f64().unwrap());
    assert!((0.0..=1.0).contains(&coverage) && (0.0..=1.0).contains(&precision), "{best}");
    let out = common::wsss(dir, &["cam", "--config", &config, "--set", "cam.refine=ad_cam", "--set", "cam.ad_cam.steps=0"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cam.ad_cam.steps"), "{err}");
}

/// A corrupt image: counted and reported; the other images of its shard are labelled.
#[test]
fn a_corrupt_image_is_skipped_and_counted() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config]);
    wsss_ok(dir, &["cam", "--config", &config]);
    // Rewrite val shard 2 with the image bytes of its first row truncated, and record it in the
    // manifest (a dataset whose writer stored a broken image, not a shard damaged since).
    let shard = dir.join("data/val/part-00002.parquet");
    let mut rows = ShardReader::<ImageRow>::open(&shard).unwrap().read_all().unwrap();
    rows[0].image.truncate(40);
    let mut manifest = wsss_dist::data::Manifest::read(&dir.join("data/val")).unwrap();
    manifest.shards[2] = write_shard(&shard, &rows, ShardLayout::default()).unwrap();
    manifest.write(&dir.join("data/val")).unwrap();
    let out = common::wsss(dir, &["pseudo-label", "--config", &config]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("skipped part-00002.parquet row group 0 item 0 id syn_0000010") && log.contains("1 skipped"), "{log}");
    let manifest = json(&dir.join("runs/tiny/pseudo_labels/val/_manifest.json"));
    assert_eq!(manifest["rows"], 39);
    assert_eq!(manifest["shards"][2]["rows"], 4);
    // The fused pass skips it in both outputs and says so in both summaries.
    let out = common::wsss(dir, &["cam", "--pseudo-labels", "--config", &config, "--set", "cam.out=cams_fused", "--set", "pseudo_label.out=fused"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for output in ["cams_fused", "fused"] {
        let summary = json(&dir.join(output).join(".map/summary.json"));
        assert_eq!((summary["rows"].as_u64(), summary["skipped"].as_u64()), (Some(39), Some(1)), "{output}: {summary}");
        assert!(summary["skipped_items"][0].as_str().unwrap().contains("part-00002.parquet row group 0 item 0 id syn_0000010"), "{summary}");
    }
    // Rerun: the CAMs are complete, so only the (also complete) refinement is looked at.
    let out = common::wsss(dir, &["cam", "--pseudo-labels", "--config", &config, "--set", "cam.out=cams_fused", "--set", "pseudo_label.out=fused"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && log.matches("is complete for these inputs and settings").count() == 2, "{log}");
}

/// Our dense CRF and pydensecrf (IRNet's call) give the same label maps on real photos, with two
/// labels (IRNet's seeds: the logistic path) and three (the general one).
#[test]
fn dense_crf_agrees_with_pydensecrf_on_voc_photos() {
    let Some(voc) = voc_mini("dense_crf_agrees_with_pydensecrf_on_voc_photos") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let photos = ["2007_002088", "2007_003169", "2007_003194"];
    let mut total = 0usize;
    let mut agree = 0usize;
    for (id, n) in photos.iter().flat_map(|id| [(id, 2usize), (id, 3)]) {
        let rgb = decode_rgb(&std::fs::read(voc.join("JPEGImages").join(format!("{id}.jpg"))).unwrap()).unwrap();
        let (w, h) = (rgb.width as usize, rgb.height as usize);
        // A coarse n-label seed map: blocks of 32 px, labels by position (what CRFs must fix).
        let labels: Vec<u8> = (0..w * h).map(|p| (((p % w) / 32 + (p / w) / 48) % n) as u8).collect();
        let q = DenseCrf::new(&rgb.pixels, w, h, &CrfParams::default()).inference(&unary_from_labels(&labels, n, 0.7), n, 1);
        let ours = argmax_groups(&q, n);
        std::fs::write(tmp.path().join("rgb"), &rgb.pixels).unwrap();
        std::fs::write(tmp.path().join("labels"), &labels).unwrap();
        let out = run_python(
            "import sys, numpy as np, pydensecrf.densecrf as dcrf\nfrom pydensecrf.utils import unary_from_labels\n\
             d, w, h, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])\n\
             img = np.fromfile(d + '/rgb', dtype=np.uint8).reshape(h, w, 3); labels = np.fromfile(d + '/labels', dtype=np.uint8).reshape(h, w)\n\
             c = dcrf.DenseCRF2D(w, h, n); c.setUnaryEnergy(unary_from_labels(labels, n, gt_prob=0.7, zero_unsure=False))\n\
             c.addPairwiseGaussian(sxy=3, compat=3); c.addPairwiseBilateral(sxy=50, srgb=5, rgbim=np.ascontiguousarray(img), compat=10)\n\
             np.argmax(np.array(c.inference(10)).reshape(n, h, w), axis=0).astype(np.uint8).tofile(d + '/theirs')",
            &[s(tmp.path()), &w.to_string(), &h.to_string(), &n.to_string()],
        );
        assert!(out.is_empty());
        let theirs = std::fs::read(tmp.path().join("theirs")).unwrap();
        let same = ours.iter().zip(&theirs).filter(|(a, b)| a == b).count();
        let changed = ours.iter().zip(&labels).filter(|(a, b)| a != b).count();
        println!(
            "{id} ({w}x{h}, {n} labels): {:.4}% of pixels agree with pydensecrf; the CRF changed {:.1}% of the seeds",
            100.0 * same as f64 / ours.len() as f64,
            100.0 * changed as f64 / ours.len() as f64
        );
        assert!(changed > ours.len() / 100, "the CRF must do something here");
        total += ours.len();
        agree += same;
    }
    assert!(agree as f64 >= 0.9999 * total as f64, "agreement {:.4}%", 100.0 * agree as f64 / total as f64);
}

/// A CAM dataset for `images` made from their ground-truth masks (each class's map is its mask
/// sampled at stride 4, softened), so that refinement can run without a trained model.
fn cams_from_masks(images: &Path, out: &Path) {
    let dataset = Dataset::open(images).unwrap();
    std::fs::create_dir_all(out).unwrap();
    let mut shards = Vec::new();
    for shard in 0..dataset.num_shards() {
        let rows: Vec<CamRow> = dataset
            .shard(shard)
            .unwrap()
            .read_all()
            .unwrap()
            .iter()
            .map(|image| {
                let (w, h, mask) = decode_mask(image.mask.as_ref().unwrap()).unwrap();
                let (w4, h4) = (w.div_ceil(4) as usize, h.div_ceil(4) as usize);
                let mask = &mask;
                let cam: Vec<u8> = image
                    .labels
                    .iter()
                    .flat_map(|&c| {
                        (0..w4 * h4).flat_map(move |p| {
                            let (x, y) = ((p % w4) * 4, (p / w4) * 4);
                            let on = mask[y.min(h as usize - 1) * w as usize + x.min(w as usize - 1)] == c as u8;
                            half::f16::from_f32(if on { 0.8 } else { 0.1 }).to_le_bytes()
                        })
                    })
                    .collect();
                CamRow { id: image.id.clone(), classes: image.labels.clone(), scores: vec![1.0; image.labels.len()], cam, height: h, width: w }
            })
            .collect();
        shards.push(write_shard(&out.join(shard_file_name(shard)), &rows, ShardLayout::default()).unwrap());
    }
    let m = dataset.manifest();
    Manifest {
        format_version: FORMAT_VERSION,
        kind: DatasetKind::Cams,
        split: m.split.clone(),
        classes: m.classes.clone(),
        rows: m.rows,
        shards,
        source: "test: CAMs from masks".into(),
    }
    .write(out)
    .unwrap();
}

/// Peak RSS in KiB of `wsss-dist args` run to completion in `dir` (its own, via wait4).
fn peak_rss_kib(dir: &Path, args: &[&str]) -> i64 {
    // Waited for by wait4 below, which also reports the peak RSS.
    #[allow(clippy::zombie_processes)]
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_wsss-dist")).args(args).current_dir(dir).stderr(Stdio::null()).spawn().unwrap();
    let mut status = 0;
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32);
    assert!(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0, "wsss-dist {args:?} failed");
    usage.ru_maxrss
}

/// Memory per rank is bounded by a shard, not by the dataset: pseudo-labelling (irn_seeds)
/// 20,000 images (40 shards) peaks at about the memory of 2,000 (4 shards).
#[test]
fn memory_is_bounded_by_the_shard_not_the_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut peaks = Vec::new();
    for images in [2000, 20000] {
        let (data, cams, out) = (format!("data{images}"), format!("cams{images}"), format!("pseudo{images}"));
        wsss_ok(dir, &["data", "import", "synthetic", "--out", &data, "--images", &images.to_string(), "--size", "32", "--shard-rows", "500"]);
        cams_from_masks(&dir.join(&data), &dir.join(&cams));
        let set = |kv: String| ["--set".to_string(), kv];
        let args: Vec<String> = ["pseudo-label".to_string()]
            .into_iter()
            .chain(set(format!("data.train={data}")))
            .chain(set(format!("cam.out={cams}")))
            .chain(set(format!("pseudo_label.out={out}")))
            .chain(set("pseudo_label.method=irn_seeds".into()))
            .chain(set("pseudo_label.threads=2".into()))
            .collect();
        let peak = peak_rss_kib(dir, &common::as_str(&args));
        let rows = json(&dir.join(&out).join("_manifest.json"))["rows"].as_u64().unwrap();
        assert_eq!(rows, images as u64);
        println!("{images} images: peak RSS {peak} KiB");
        peaks.push(peak);
    }
    assert!(peaks[1] < peaks[0] + peaks[0] / 4, "peak RSS grew with the dataset: {peaks:?} KiB");
}

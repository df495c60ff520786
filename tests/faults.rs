//! Faults and bad input through the binary, one test per fault class of the fault campaign
//! (issue 16): each must end in a clear error naming the file, row, id or key, or in a counted
//! skip with a warning; never a panic, never silent loss, never output that looks complete.

mod common;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{as_str, mpirun, mpirun_ok, rank_process, s, wait_for, wsss, wsss_fails, wsss_ok};
use wsss_dist::data::codec::{encode_mask, encode_rgb_png};
use wsss_dist::data::schema::{CamRow, Manifest, PseudoRow, ShardRow};
use wsss_dist::data::shard::{write_shard, ShardLayout, ShardReader};
use wsss_dist::data::ImageRow;

/// 48 + 12 synthetic images of 32 px, ResNet-18, 6 steps of 8 per epoch.
fn tiny() -> String {
    common::tiny_config(
        r#"
[data.synthetic]
train_images = 48
val_images = 12
size = 32
shard_rows = 20
[loader]
threads = 1
[train]
epochs = 1
lr = 0.001
checkpoint_every = 2
keep_checkpoints = 20
[cam]
split = "val"
scales = [1.0]
flip = false
[pseudo_label]
method = "threshold"
threads = 1
"#,
    )
}

/// A directory with the tiny config, its datasets generated (`data import synthetic`).
fn setup() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/val", "--images", "12", "--size", "32", "--shard-rows", "6", "--split", "val"]);
    std::fs::write(dir.join("config.toml"), tiny()).unwrap();
    let config = s(&dir.join("config.toml")).to_string();
    (tmp, config)
}

/// [`setup`], then a 2-step CAM classifier and the CAMs of the val split.
fn setup_with_cams() -> (tempfile::TempDir, String) {
    let (tmp, config) = setup();
    wsss_ok(tmp.path(), &["train", "cam", "--config", &config, "--set", "train.steps=2"]);
    wsss_ok(tmp.path(), &["cam", "--config", &config]);
    (tmp, config)
}

/// Rewrites shard `shard` of the dataset at `dir` after `edit`, and records it in the manifest
/// (a dataset that a buggy or foreign writer made, not a damaged one).
fn rewrite<R: ShardRow>(dir: &Path, shard: usize, edit: impl FnOnce(&mut Vec<R>)) {
    let mut manifest = Manifest::read(dir).unwrap();
    let path = dir.join(&manifest.shards[shard].file);
    let mut rows = ShardReader::<R>::open(&path).unwrap().read_all().unwrap();
    edit(&mut rows);
    manifest.shards[shard] = write_shard(&path, &rows, ShardLayout::default()).unwrap();
    manifest.rows = manifest.shards.iter().map(|s| s.rows).sum();
    manifest.write(dir).unwrap();
}

fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

fn log_of(out: &std::process::Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout))
}

/// A flat-colour PNG image row of the given size (flat: a huge one compresses to little).
fn flat_image(id: &str, width: u32, height: u32, labels: &[u16]) -> ImageRow {
    let rgb = vec![120u8; (width * height * 3) as usize];
    ImageRow {
        id: id.into(),
        image: encode_rgb_png(width, height, &rgb),
        width,
        height,
        labels: labels.to_vec(),
        mask: Some(encode_mask(width, height, &vec![0; (width * height) as usize])),
    }
}

/// Labels out of range or twice, a 20-megapixel photo and a 1400×40 strip: training skips the
/// bad rows, `cam` skips the bad rows and the huge photo (counted, named) and runs the strip
/// downscaled to `cam.max_side`, storing its CAM on the strip's own stride-4 grid.
#[test]
fn bad_labels_and_huge_images_are_skipped_by_every_stage() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    rewrite::<ImageRow>(&dir.join("data/train"), 0, |rows| {
        rows[0].labels = vec![99];
        rows[1].labels = vec![1, 1];
    });
    let bad =
        |dataset: &str, row: usize| ShardReader::<ImageRow>::open(&dir.join(dataset).join("part-00000.parquet")).unwrap().read_all().unwrap()[row].id.clone();
    let out = wsss(dir, &["train", "cam", "--config", &config]);
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&bad("data/train", 0)) && log.contains("class id 99 out of range 1..=6"), "{log}");
    assert!(log.contains(&bad("data/train", 1)) && log.contains("not sorted and unique"), "{log}");

    rewrite::<ImageRow>(&dir.join("data/val"), 0, |rows| {
        rows[0].labels = vec![0];
        rows.push(flat_image("huge", 5000, 4000, &[1]));
        rows.push(flat_image("strip", 1400, 40, &[2]));
    });
    let out = wsss(dir, &["cam", "--config", &config]);
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("class id 0 out of range") && log.contains("huge") && log.contains("over run.max_image_pixels = 16777216"), "{log}");
    let cams = dir.join("runs/tiny/cams/val");
    assert_eq!(Manifest::read(&cams).unwrap().rows, 14 - 2, "12 + 2 images, 2 skipped");
    let summary = json(&cams.join(".map/summary.json"));
    assert_eq!(summary["skipped"], 2, "{summary}");
    let rows = ShardReader::<CamRow>::open(&cams.join("part-00000.parquet")).unwrap().read_all().unwrap();
    let strip = rows.iter().find(|r| r.id == "strip").expect("the strip has a CAM");
    assert_eq!((strip.map_size(), strip.cam.len()), ((10, 350), 10 * 350 * 2));
    assert!(strip.check(6).is_ok(), "finite, one map");
}

/// A shard changed after its manifest was written is refused by the stages that read it,
/// naming it, and `data verify` points at the rows.
#[test]
fn a_shard_that_no_longer_matches_its_checksum_is_refused() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let shard = dir.join("data/train/part-00001.parquet");
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    let err = wsss_fails(dir, &["train", "cam", "--config", &config], 2);
    assert!(err.contains("part-00001.parquet: SHA-256") && err.contains("is not the manifest's") && err.contains("data verify"), "{err}");
    let err = wsss_fails(dir, &["cam", "--config", &config, "--set", "cam.split=train", "--set", "cam.checkpoint=nowhere.safetensors"], 2);
    assert!(err.contains("part-00001.parquet: SHA-256"), "{err}");
    // An unchanged shard is hashed once: the record says which file version was verified.
    let records = json(&dir.join("data/train/.verified.json"));
    assert!(records.get("part-00000.parquet").is_some() && records.get("part-00001.parquet").is_none(), "{records}");
}

/// An id in two shards, a NaN CAM, a crafted id: `cam` refuses the dataset, `pseudo-label`
/// skips the NaN row (counted), `eval cam` refuses to score it, `export png` writes nothing.
#[test]
fn duplicate_ids_nan_cams_and_crafted_ids_never_pass_silently() {
    let (tmp, config) = setup_with_cams();
    let dir = tmp.path();

    // NaN in the first CAM of the val split (f16 0x7e00), as a diverged network would write.
    let cams = dir.join("runs/tiny/cams/val");
    let mut nan_id = String::new();
    rewrite::<CamRow>(&cams, 0, |rows| {
        nan_id = rows[0].id.clone();
        rows[0].cam[..2].copy_from_slice(&0x7e00u16.to_le_bytes());
    });
    let out = wsss(dir, &["pseudo-label", "--config", &config]);
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains(&nan_id) && log.contains("its CAM: cam holds 1 NaN or infinite value(s)"), "{log}");
    let labels = dir.join("runs/tiny/pseudo_labels/val");
    assert_eq!((Manifest::read(&labels).unwrap().rows, json(&labels.join(".map/summary.json"))["skipped"].as_u64()), (11, Some(1)));
    let err = wsss_fails(dir, &["eval", "cam", "--config", &config], 2);
    assert!(err.contains(&nan_id) && err.contains("NaN or infinite"), "{err}");

    // A crafted id in the pseudo-labels: export writes no file at all.
    rewrite::<PseudoRow>(&labels, 1, |rows| rows[0].id = "../../escaped".into());
    let out_dir = dir.join("exported");
    let err = wsss_fails(dir, &["export", "png", "--labels", s(&labels), "--out", s(&out_dir)], 2);
    assert!(err.contains("\"../../escaped\" is not a plain name") && err.contains("nothing was written"), "{err}");
    assert!(!out_dir.exists() && !dir.join("escaped.png").exists(), "no partial export");
    let hidden: Vec<_> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).filter(|n| n.contains("exported")).collect();
    assert!(hidden.is_empty(), "staging removed: {hidden:?}");

    // The same id in two image shards.
    let val = dir.join("data/val");
    let first = ShardReader::<ImageRow>::open(&val.join("part-00000.parquet")).unwrap().read_all().unwrap()[0].id.clone();
    rewrite::<ImageRow>(&val, 1, |rows| rows[2].id = first.clone());
    let err = wsss_fails(dir, &["cam", "--config", &config, "--force"], 2);
    assert!(err.contains(&format!("id {first} appears twice (part-00000.parquet row 0 and part-00001.parquet row 2)")), "{err}");
}

/// Paths where names belong: a VOC split listing `../../x`, a COCO file_name with a folder,
/// `run.name = ".."`.
#[test]
fn ids_and_run_names_must_be_plain_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let root = dir.join("voc");
    for sub in ["JPEGImages", "ImageSets/Segmentation"] {
        std::fs::create_dir_all(root.join(sub)).unwrap();
    }
    std::fs::write(dir.join("x.jpg"), b"outside").unwrap();
    std::fs::write(root.join("ImageSets/Segmentation/train.txt"), "a\n../../x\n").unwrap();
    let err = wsss_fails(dir, &["data", "import", "voc", "--root", s(&root), "--split", "train", "--out", "out"], 2);
    assert!(err.contains("train.txt line 2: image id \"../../x\" is not a plain name"), "{err}");
    std::fs::write(root.join("ImageSets/Segmentation/train.txt"), "/etc/passwd\n").unwrap();
    let err = wsss_fails(dir, &["data", "import", "voc", "--root", s(&root), "--split", "train", "--out", "out"], 2);
    assert!(err.contains("line 1") && err.contains("\"/etc/passwd\""), "{err}");

    let coco = r#"{"images": [{"id": 7, "file_name": "../x.jpg", "width": 2, "height": 2}], "annotations": [], "categories": [{"id": 1, "name": "cat"}]}"#;
    std::fs::write(dir.join("instances.json"), coco).unwrap();
    let err = wsss_fails(dir, &["data", "import", "coco", "--annotations", "instances.json", "--images", s(&root), "--out", "out"], 2);
    assert!(err.contains("image id 7: file_name \"../x.jpg\" is not a plain name"), "{err}");

    for name in ["..", "a/b", ".", "../../tmp/x"] {
        let err = wsss_fails(dir, &["config", "show", "--set", &format!("run.name={name}")], 2);
        assert!(err.contains("config key `run.name`: must name one directory inside run.dir"), "{name}: {err}");
    }
}

/// A second writer of an output or run directory fails at once, naming the holder (here this
/// test process, which holds the lock as a running job would).
#[test]
fn a_second_writer_of_a_directory_is_refused() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let holder = wsss_dist::data::lock::DirLock::acquire(&dir.join("runs/tiny")).unwrap();
    let err = wsss_fails(dir, &["train", "cam", "--config", &config], 2);
    assert!(err.contains("runs/tiny is being written by another job") && err.contains(&format!("pid {}", std::process::id())), "{err}");
    drop(holder);
    wsss_ok(dir, &["train", "cam", "--config", &config, "--set", "train.steps=2"]);
    let holder = wsss_dist::data::lock::DirLock::acquire(&dir.join("runs/tiny/cams/val")).unwrap();
    let err = wsss_fails(dir, &["cam", "--config", &config], 2);
    assert!(err.contains("cams/val is being written by another job"), "{err}");
    assert!(!dir.join("runs/tiny/cams/val").exists(), "the refused job wrote nothing");
    drop(holder);
    wsss_ok(dir, &["cam", "--config", &config]);
    // The same run directory through a symbolic link to its parent: the same lock.
    std::os::unix::fs::symlink(dir.join("runs"), dir.join("alias")).unwrap();
    let holder = wsss_dist::data::lock::DirLock::acquire(&dir.join("runs/tiny")).unwrap();
    let err = wsss_fails(dir, &["train", "cam", "--config", &config, "--resume", "--set", "run.dir=alias"], 2);
    assert!(err.contains("is being written by another job"), "{err}");
    drop(holder);
}

/// A bit flip in the newest checkpoint: `cam` and `--resume` pass over it with a warning and
/// use the newest intact one.
#[test]
fn a_damaged_newest_checkpoint_falls_back_with_a_warning() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config, "--set", "train.stop_after=4"]);
    let newest = dir.join("runs/tiny/checkpoints/step-00000004.safetensors");
    let mut bytes = std::fs::read(&newest).unwrap();
    let at = bytes.len() - 1000;
    bytes[at] ^= 0x01;
    std::fs::write(&newest, bytes).unwrap();
    let out = wsss(dir, &["cam", "--config", &config]);
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("passed over a damaged checkpoint") && log.contains("step-00000004.safetensors: damaged"), "{log}");
    assert!(json(&dir.join("runs/tiny/cams/val/.map/summary.json")).is_object());
    let out = wsss(dir, &["train", "cam", "--config", &config, "--resume"]);
    let log = log_of(&out);
    assert!(out.status.success() && log.contains("passed over a damaged checkpoint") && log.contains("resumed from step 2"), "{log}");
}

/// A write that fails (here: a file-size limit, as a full disk would) is reported as a write
/// and leaves no temporary file; the next run, with room again, succeeds. The binary ignores
/// SIGXFSZ itself (the shell here does not), so the write fails instead of the process dying.
#[test]
fn a_failed_write_is_named_and_leaves_nothing_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let limited = |limit_kb: u32, args: &str| {
        let script = format!("ulimit -f {limit_kb}; exec {} {args}", env!("CARGO_BIN_EXE_wsss-dist"));
        std::process::Command::new("bash").arg("-c").arg(script).current_dir(dir).output().unwrap()
    };
    let out = limited(64, "data import synthetic --out data/train --images 200 --size 64 --shard-rows 200");
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("cannot write Parquet") && !log.contains("cannot read"), "{log}");
    let left: Vec<_> = walk(dir).into_iter().filter(|p| p.to_string_lossy().contains(".tmp-")).collect();
    assert!(left.is_empty() && !dir.join("data/train").exists(), "{left:?}");

    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/val", "--images", "12", "--size", "32", "--shard-rows", "6", "--split", "val"]);
    std::fs::write(dir.join("config.toml"), tiny()).unwrap();
    // ResNet-18's model file is ~45 MB: a 1 MB limit fails the first checkpoint.
    let out = limited(1024, "train cam --config config.toml");
    assert_eq!(out.status.code(), Some(2), "{}", log_of(&out));
    let left: Vec<_> = walk(&dir.join("runs")).into_iter().filter(|p| p.to_string_lossy().contains(".tmp-")).collect();
    assert!(left.is_empty(), "the failed checkpoint write left {left:?}");
    wsss_ok(dir, &["train", "cam", "--config", "config.toml", "--resume"]);
    // A map phase's shard write: 12 CAMs fit in 64 KB, their 12 pseudo-labels not in 1 KB.
    wsss_ok(dir, &["cam", "--config", "config.toml"]);
    let out = limited(1, "pseudo-label --config config.toml");
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(2), "{log}");
    assert!(log.contains("cannot write Parquet"), "{log}");
    let left: Vec<_> = walk(&dir.join("runs")).into_iter().filter(|p| p.to_string_lossy().contains(".tmp-")).collect();
    assert!(left.is_empty(), "the failed pseudo-label write left {left:?}");
    wsss_ok(dir, &["pseudo-label", "--config", "config.toml"]);
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// A shard that pyarrow rewrote with its defaults (list items named `element`) reads, and
/// `data verify` knows CAM and pseudo-label datasets.
#[test]
fn foreign_list_names_read_and_verify_knows_every_kind() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let script = r#"
import json, hashlib, sys, pyarrow.parquet as pq
d = sys.argv[1]
path = d + "/part-00000.parquet"
table = pq.read_table(path)
pq.write_table(table, path)
print(pq.read_schema(path).field("labels").type)
m = json.load(open(d + "/_manifest.json"))
m["shards"][0]["sha256"] = hashlib.sha256(open(path, "rb").read()).hexdigest()
json.dump(m, open(d + "/_manifest.json", "w"))
"#;
    let list_type = common::run_python(script, &[s(&dir.join("data/val"))]);
    assert!(list_type.contains("element"), "pyarrow's default list item name: {list_type}");
    wsss_ok(dir, &["data", "verify", "data/val"]);
    wsss_ok(dir, &["train", "cam", "--config", &config, "--set", "train.steps=2"]);
    wsss_ok(dir, &["cam", "--config", &config]);
    wsss_ok(dir, &["pseudo-label", "--config", &config]);
    for (dataset, rows) in [("runs/tiny/cams/val", 12), ("runs/tiny/pseudo_labels/val", 12)] {
        let report = wsss_ok(dir, &["data", "verify", dataset]);
        assert!(report.contains(&format!("{rows} rows checked, 0 problem(s)")) && !report.contains("not a wsss-dist"), "{report}");
    }
    rewrite::<PseudoRow>(&dir.join("runs/tiny/pseudo_labels/val"), 0, |rows| rows[0].mask = encode_mask(2, 2, &[0, 1, 7, 255]));
    let report = wsss_fails(dir, &["data", "verify", "runs/tiny/pseudo_labels/val"], 1);
    assert!(report.contains("mask holds class id 7, out of range 0..=6"), "{report}");
}

/// SIGTERM under `mpirun -n 2` (as SLURM sends at a time limit): every rank finishes its step,
/// rank 0 checkpoints it, the job exits 3; `--resume` then ends bitwise where an uninterrupted
/// run ends. A map phase stops after its tasks under way and finishes on a rerun.
#[test]
fn sigterm_stops_cleanly_and_resumes_bitwise() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let args = |name: &str, resume: bool| {
        let mut args: Vec<String> = [
            "train",
            "cam",
            "--config",
            &config,
            "--set",
            "loader.batch_size=2",
            "--set",
            "train.epochs=3",
            "--set",
            "train.checkpoint_every=1000",
            "--set",
            "train.log_every=1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(["--set".to_string(), format!("run.name={name}")]);
        if resume {
            args.push("--resume".into());
        }
        args
    };
    mpirun_ok(dir, 2, &as_str(&args("whole", false)));

    let mut job = mpirun(dir, 2, &as_str(&args("stopped", false))).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let metrics = dir.join("runs/stopped/metrics.jsonl");
    let started = Instant::now();
    while std::fs::read_to_string(&metrics).map_or(true, |t| t.lines().count() < 3) {
        assert!(started.elapsed() < Duration::from_secs(120), "no 3 steps after 2 minutes");
        std::thread::sleep(Duration::from_millis(20));
    }
    // To one rank only: the others learn it through the step's reduction.
    let rank = rank_process(job.id()).expect("a wsss-dist rank under mpirun");
    unsafe { libc::kill(rank as i32, libc::SIGTERM) };
    let status = wait_for(&mut job, Duration::from_secs(120));
    let mut log = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut log).unwrap();
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("stopped by SIGTERM on this rank") || log.contains("stopped by a stop signal on another rank"), "{log}");
    let checkpoints: Vec<u64> = std::fs::read_dir(dir.join("runs/stopped/checkpoints"))
        .unwrap()
        .filter_map(|e| e.unwrap().file_name().to_str()?.strip_suffix(".json")?.strip_prefix("step-")?.parse().ok())
        .collect();
    assert_eq!(checkpoints.len(), 1, "one checkpoint, at the step reached: {checkpoints:?}");
    assert!(checkpoints[0] >= 3 && checkpoints[0] < 36, "{checkpoints:?} of 36 steps");
    assert!(log.contains(&format!("every rank finished step {} of 36", checkpoints[0])), "{log}");

    let log = mpirun_ok(dir, 2, &as_str(&args("stopped", true)));
    assert!(log.contains(&format!("resumed from step {}", checkpoints[0])), "{log}");
    let final_model = |run: &str| std::fs::read(dir.join(format!("runs/{run}/checkpoints/step-00000036.safetensors"))).unwrap();
    assert!(final_model("whole") == final_model("stopped"), "resumed run ends bitwise where the uninterrupted one does");

    // A map phase: stop after the first task (6 val shards of 2, one rank), rerun to finish.
    rewrite_in_shards(&dir.join("data/val"));
    // Many large scales: tasks of about a second, so that the signal lands between them.
    let cam_args =
        ["cam", "--config", &config, "--set", "run.name=whole", "--set", "cam.scales=[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0]", "--set", "cam.flip=true"];
    let mut job = std::process::Command::new(env!("CARGO_BIN_EXE_wsss-dist")).args(cam_args).current_dir(dir).stderr(Stdio::piped()).spawn().unwrap();
    let records = dir.join("runs/whole/cams/val/.map");
    let started = Instant::now();
    while std::fs::read_dir(&records).map_or(0, |d| d.filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().starts_with("part-")).count()) < 1 {
        assert!(started.elapsed() < Duration::from_secs(120), "no task done after 2 minutes");
        std::thread::sleep(Duration::from_millis(5));
    }
    unsafe { libc::kill(job.id() as i32, libc::SIGINT) };
    let status = wait_for(&mut job, Duration::from_secs(120));
    let mut log = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut log).unwrap();
    if status.code() == Some(0) {
        println!("the signal came after the last task: nothing left to stop");
        return;
    }
    assert_eq!(status.code(), Some(3), "{log}");
    assert!(log.contains("stopped by SIGINT on this rank") && log.contains("no manifest yet"), "{log}");
    assert!(!dir.join("runs/whole/cams/val/_manifest.json").exists(), "a stopped map phase does not look complete");
    wsss_ok(dir, &cam_args);
    let summary = json(&dir.join("runs/whole/cams/val/.map/summary.json"));
    assert!(summary["reused"].as_u64().unwrap() >= 1 && summary["rows"] == 12, "{summary}");
}

/// Splits the dataset at `dir` into shards of 2 rows (more tasks for the map phase to stop in).
fn rewrite_in_shards(dir: &Path) {
    let manifest = Manifest::read(dir).unwrap();
    let rows: Vec<ImageRow> = manifest.shards.iter().flat_map(|s| ShardReader::<ImageRow>::open(&dir.join(&s.file)).unwrap().read_all().unwrap()).collect();
    for s in &manifest.shards {
        std::fs::remove_file(dir.join(&s.file)).unwrap();
    }
    let shards = rows
        .chunks(2)
        .enumerate()
        .map(|(i, chunk)| write_shard(&dir.join(wsss_dist::data::shard::shard_file_name(i)), chunk, ShardLayout::default()).unwrap())
        .collect();
    Manifest { shards, ..manifest }.write(dir).unwrap();
}

/// Copies the dataset folder `from` to `to` (files only: datasets are flat, `.map/` aside).
fn copy_dataset(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap().map(|e| e.unwrap()).filter(|e| e.path().is_file()) {
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Sets every mask of the pseudo-label dataset at `dir` to `value` where `which(row index)`.
fn set_masks(dir: &Path, value: u8, which: impl Fn(usize) -> bool) {
    let mut index = 0;
    for shard in 0..Manifest::read(dir).unwrap().shards.len() {
        rewrite::<PseudoRow>(dir, shard, |rows| {
            for row in rows.iter_mut() {
                if which(index) {
                    let (w, h, _) = wsss_dist::data::codec::decode_mask(&row.mask).unwrap();
                    row.mask = encode_mask(w, h, &vec![value; (w * h) as usize]);
                }
                index += 1;
            }
        });
    }
}

/// `train cam --resume` on a dataset imported again since the checkpoint (other images) is
/// refused naming the key that allows it; with the key it continues, warning.
#[test]
fn resuming_on_data_written_again_is_refused_unless_allowed() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config, "--set", "train.stop_after=2"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/train", "--images", "48", "--size", "32", "--shard-rows", "20", "--seed", "7", "--force"]);
    let err = wsss_fails(dir, &["train", "cam", "--config", &config, "--resume"], 2);
    assert!(err.contains("the training data differ from those the checkpoint of step 2") && err.contains("train.allow_data_change = true"), "{err}");
    let out = wsss(dir, &["train", "cam", "--config", &config, "--resume", "--set", "train.allow_data_change=true"]);
    let log = log_of(&out);
    assert!(out.status.success() && log.contains("continuing on the new data"), "{log}");
}

/// Pseudo-labels with no labelled pixel at all are an error naming `seg.labels`; many empty
/// masks a warning with the count; an image id held twice is named with both places, not
/// reported as an image without a pseudo-label.
#[test]
fn labels_that_teach_nothing_or_ids_held_twice_are_named() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let train_split = ["--set", "cam.split=train"];
    wsss_ok(dir, &["train", "cam", "--config", &config, "--set", "train.steps=2"]);
    wsss_ok(dir, &[&["cam", "--config", &config][..], &train_split].concat());
    wsss_ok(dir, &[&["pseudo-label", "--config", &config][..], &train_split].concat());
    let seg = |labels: &str, extra: &[&str]| -> Vec<String> {
        let base = ["train", "seg", "--config", &config, "--set", "seg.loader.batch_size=4", "--set", "seg.loader.crop=32", "--set", "seg.train.steps=1"];
        base.iter().map(|a| a.to_string()).chain(["--set".into(), format!("seg.labels={labels}")]).chain(extra.iter().map(|a| a.to_string())).collect()
    };
    let empty = dir.join("labels/empty");
    copy_dataset(&dir.join("runs/tiny/pseudo_labels/train"), &empty);
    set_masks(&empty, 255, |_| true);
    let err = wsss_fails(dir, &as_str(&seg("labels/empty", &[])), 2);
    assert!(err.contains("seg.labels") && err.contains("labels/empty") && err.contains("none of its 48 masks labels a pixel"), "{err}");

    let half = dir.join("labels/half");
    copy_dataset(&dir.join("runs/tiny/pseudo_labels/train"), &half);
    set_masks(&half, 255, |i| i % 2 == 0);
    let out = wsss(dir, &as_str(&seg("labels/half", &["--set", "run.name=half"])));
    let log = log_of(&out);
    assert!(out.status.success() && log.contains("24 of its 48 masks label no pixel"), "{log}");

    let twice = dir.join("data/twice");
    copy_dataset(&dir.join("data/train"), &twice);
    let first = ShardReader::<ImageRow>::open(&twice.join("part-00000.parquet")).unwrap().read_all().unwrap()[0].id.clone();
    rewrite::<ImageRow>(&twice, 1, |rows| rows[3].id = first.clone());
    let err = wsss_fails(dir, &as_str(&seg("runs/tiny/pseudo_labels/train", &["--set", "data.train=data/twice", "--set", "run.name=twice"])), 2);
    assert!(err.contains(&format!("id {first} appears twice (part-00000.parquet row 0 and part-00001.parquet row 3)")), "{err}");
}

/// `report` names an evaluation it cannot read (a warning and a note on the page), notes one
/// that is missing, and does not draw a CAM holding NaN.
#[test]
fn the_report_says_what_it_cannot_read_or_draw() {
    let (tmp, config) = setup_with_cams();
    let dir = tmp.path();
    wsss_ok(dir, &["eval", "cam", "--config", &config]);
    std::fs::write(dir.join("runs/tiny/eval/pseudo.json"), "{\"report\": ").unwrap();
    rewrite::<CamRow>(&dir.join("runs/tiny/cams/val"), 0, |rows| rows.iter_mut().for_each(|row| row.cam[..2].copy_from_slice(&0x7c00u16.to_le_bytes())));
    let out = wsss(dir, &["report", "--config", &config]);
    let log = log_of(&out);
    assert!(out.status.success(), "{log}");
    assert!(log.contains("pseudo.json: cannot read this evaluation"), "{log}");
    let page = std::fs::read_to_string(dir.join("runs/tiny/report.html")).unwrap();
    assert!(page.contains("pseudo.json cannot be read"), "the damaged file is noted");
    assert!(page.contains("is not drawn: cam holds"), "the infinite CAM is noted");
    std::fs::remove_file(dir.join("runs/tiny/eval/cam.json")).unwrap();
    wsss_ok(dir, &["report", "--config", &config]);
    let page = std::fs::read_to_string(dir.join("runs/tiny/report.html")).unwrap();
    assert!(page.contains("cam.json (`wsss-dist eval cam` makes it)"), "the missing file is noted");
}

/// A stage whose model was never trained says so and names the command; `run` accepts
/// `--resume`, which its stop message asks for; `eval cam` of an empty dataset says there is
/// nothing to score.
#[test]
fn nothing_trained_nothing_to_score_and_run_resume_are_said_plainly() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    let err = wsss_fails(dir, &["cam", "--config", &config], 2);
    assert!(err.contains("runs/tiny does not exist: nothing was trained there") && err.contains("wsss-dist train cam"), "{err}");
    assert!(!err.contains("safetensors"), "{err}");
    let err = wsss_fails(dir, &["seg", "--config", &config, "--set", "seg.infer.split=val"], 2);
    assert!(err.contains("seg does not exist: nothing was trained there") && err.contains("wsss-dist train seg"), "{err}");
    wsss_ok(dir, &["run", "--config", &config, "--resume", "--set", "train.steps=2"]);
    wsss_ok(dir, &["data", "import", "synthetic", "--out", "data/empty", "--images", "0", "--size", "32", "--split", "val"]);
    let empty = ["--set", "data.val=data/empty", "--set", "run.name=empty", "--set", "cam.checkpoint=runs/tiny"];
    let out = wsss(dir, &[&["cam", "--config", &config][..], &empty].concat());
    assert!(out.status.success(), "{}", log_of(&out));
    let err = wsss_fails(dir, &[&["eval", "cam", "--config", &config][..], &empty].concat(), 2);
    assert!(err.contains("holds no images: nothing to score") && !err.contains("mIoU"), "{err}");
}

/// `data verify` hashes every shard whatever the stages' checksum cache says (a change that
/// keeps the size and modification time passes the cache), and with `--images` checks each
/// pseudo-label mask against its image's size.
#[test]
fn data_verify_always_hashes_and_checks_mask_sizes_against_the_images() {
    let (tmp, config) = setup();
    let dir = tmp.path();
    wsss_ok(dir, &["train", "cam", "--config", &config, "--set", "train.steps=2"]);
    assert!(json(&dir.join("data/train/.verified.json")).get("part-00000.parquet").is_some());
    let shard = dir.join("data/train/part-00000.parquet");
    let modified = std::fs::metadata(&shard).unwrap().modified().unwrap();
    let mut bytes = std::fs::read(&shard).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x40;
    std::fs::write(&shard, bytes).unwrap();
    std::fs::File::options().write(true).open(&shard).unwrap().set_modified(modified).unwrap();
    let out = wsss(dir, &["data", "verify", "data/train"]);
    assert_eq!(out.status.code(), Some(1), "{}", log_of(&out));
    assert!(log_of(&out).contains("part-00000.parquet: checksum mismatch"), "{}", log_of(&out));

    wsss_ok(dir, &["cam", "--config", &config]);
    wsss_ok(dir, &["pseudo-label", "--config", &config]);
    let labels = dir.join("runs/tiny/pseudo_labels/val");
    let mut wrong = String::new();
    rewrite::<PseudoRow>(&labels, 1, |rows| {
        wrong = rows[0].id.clone();
        let (w, h, _) = wsss_dist::data::codec::decode_mask(&rows[0].mask).unwrap();
        rows[0].mask = encode_mask(w + 1, h, &vec![0; ((w + 1) * h) as usize]);
    });
    wsss_ok(dir, &["data", "verify", s(&labels)]);
    let out = wsss(dir, &["data", "verify", s(&labels), "--images", "data/val"]);
    let log = log_of(&out);
    assert_eq!(out.status.code(), Some(1), "{log}");
    assert!(log.contains(&format!("id {wrong}: mask is")) && log.contains("but the image is"), "{log}");
}

/// A complete map output with one shard deleted is repaired by a plain rerun (a warning names
/// the task), with the bytes it had.
#[test]
fn a_complete_output_missing_a_shard_is_redone_by_a_rerun() {
    let (tmp, config) = setup_with_cams();
    let dir = tmp.path();
    let shard = dir.join("runs/tiny/cams/val/part-00001.parquet");
    let before = std::fs::read(&shard).unwrap();
    std::fs::remove_file(&shard).unwrap();
    let out = wsss(dir, &["cam", "--config", &config]);
    let log = log_of(&out);
    assert!(out.status.success() && log.contains("was complete, but the shard or record of task(s) [1] has gone or changed since: redoing them"), "{log}");
    assert_eq!(std::fs::read(&shard).unwrap(), before);
    assert!(Manifest::read(&dir.join("runs/tiny/cams/val")).is_ok());
}

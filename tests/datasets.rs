//! The dataset commands end to end, through the binary: import (synthetic, VOC, COCO),
//! verify, inspect; read back with pyarrow/PIL as independent readers; bad input.

mod common;

use std::path::Path;

use common::{run_python, s, voc_mini, wsss_fails, wsss_ok};
use wsss_dist::data::schema::ImageRow;
use wsss_dist::data::shard::{write_shard, ShardLayout};
use wsss_dist::data::{Dataset, Manifest};

fn inspect_json(dir: &Path, dataset: &Path) -> serde_json::Value {
    serde_json::from_str(&wsss_ok(dir, &["data", "inspect", "--json", s(dataset)])).unwrap()
}

#[test]
fn synthetic_import_verifies_and_pyarrow_reads_it() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    wsss_ok(
        tmp.path(),
        &["data", "import", "synthetic", "--out", s(&out), "--images", "130", "--seed", "3", "--size", "64", "--shard-rows", "50", "--rows-per-group", "16"],
    );
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!((manifest.rows, manifest.shards.len(), manifest.num_classes()), (130, 3, 6));
    let report = wsss_ok(tmp.path(), &["data", "verify", s(&out)]);
    assert!(report.contains("130 rows checked, 0 problem(s)"), "{report}");
    let stats = inspect_json(tmp.path(), &out);
    assert_eq!(stats["rows"], 130);
    assert_eq!(stats["rows_with_mask"], 130);
    assert_eq!(stats["labels_per_image"][0], 0, "every synthetic image has an object");

    // A dataset directory reads as one table with pyarrow and pandas (the manifest's name
    // starts with `_`, which their directory readers skip).
    let out_text = run_python("import sys, pyarrow.parquet as pq, pandas as pd\nt = pq.read_table(sys.argv[1]); p = pd.read_parquet(sys.argv[1])\nprint(t.num_rows, len(p), sorted(p.columns) == sorted(t.column_names))", &[s(&out)]);
    assert_eq!(out_text.trim(), "130 130 True");

    // pyarrow reads the shards with no code of ours: types, counts, and the same rows.
    let script = r#"
import json, sys, glob, pyarrow.parquet as pq, pyarrow as pa
t = pq.read_table(sorted(glob.glob(sys.argv[1] + "/*.parquet")))
assert t.schema.field("labels").type == pa.list_(pa.uint16()), t.schema
assert t.schema.field("image").type == pa.binary() and t.schema.field("width").type == pa.uint32()
meta = pq.ParquetFile(sys.argv[1] + "/part-00000.parquet").metadata
cols = {meta.row_group(0).column(i).path_in_schema: meta.row_group(0).column(i).compression for i in range(meta.num_columns)}
print(json.dumps({"rows": t.num_rows, "ids": t.column("id").to_pylist(), "labels": t.column("labels").to_pylist(),
                  "groups": meta.num_row_groups, "compression": cols}))
"#;
    let got: serde_json::Value = serde_json::from_str(&run_python(script, &[s(&out)])).unwrap();
    let ours = Dataset::open(&out).unwrap().read(&(0..130).collect::<Vec<_>>()).unwrap();
    assert_eq!(got["rows"], 130);
    let ids: Vec<String> = ours.iter().map(|r| r.id.clone()).collect();
    let labels: Vec<Vec<u16>> = ours.iter().map(|r| r.labels.clone()).collect();
    assert_eq!(got["ids"], serde_json::json!(ids));
    assert_eq!(got["labels"], serde_json::json!(labels));
    assert_eq!(got["groups"], 4, "50 rows in row groups of 16");
    assert_eq!(got["compression"]["image"], "UNCOMPRESSED");
    assert_eq!(got["compression"]["mask"], "UNCOMPRESSED");
    assert_eq!(got["compression"]["id"], "ZSTD");

    // Same seed, same bytes; an existing output needs --force.
    let again = tmp.path().join("again");
    wsss_ok(
        tmp.path(),
        &["data", "import", "synthetic", "--out", s(&again), "--images", "130", "--seed", "3", "--size", "64", "--shard-rows", "50", "--rows-per-group", "16"],
    );
    assert_eq!(Manifest::read(&again).unwrap().shards, manifest.shards, "deterministic shards (same SHA-256)");
    let err = wsss_fails(tmp.path(), &["data", "import", "synthetic", "--out", s(&again), "--images", "5"], 2);
    assert!(err.contains("already exists") && err.contains("--force"), "{err}");
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", s(&again), "--images", "5", "--force"]);
    assert_eq!(Manifest::read(&again).unwrap().rows, 5);
}

#[test]
fn voc_import_keeps_original_bytes_and_masks() {
    let Some(voc) = voc_mini("voc_import_keeps_original_bytes_and_masks") else { return };
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("voc");
    wsss_ok(tmp.path(), &["data", "import", "voc", "--root", s(&voc), "--split", "train_aug", "--out", s(&out), "--shard-rows", "40"]);
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!((manifest.rows, manifest.shards.len(), manifest.num_classes()), (96, 3, 20));
    assert_eq!(manifest.classes[15], "person");
    assert!(wsss_ok(tmp.path(), &["data", "verify", s(&out)]).contains("0 problem(s)"));

    // PIL, independently: the stored image is the original file byte for byte, the stored
    // mask has the original palette indices, and the labels are the classes in the mask.
    let script = r#"
import io, sys, json, glob, numpy as np, pyarrow.parquet as pq
from PIL import Image
root, out = sys.argv[1], sys.argv[2]
t = pq.read_table(sorted(glob.glob(out + "/*.parquet"))).to_pylist()
for r in t:
    assert r["image"] == open(f"{root}/JPEGImages/{r['id']}.jpg", "rb").read(), r["id"]
    original = np.array(Image.open(f"{root}/SegmentationClassAug/{r['id']}.png"))
    stored = np.array(Image.open(io.BytesIO(r["mask"])))
    assert (original == stored).all(), r["id"]
    w, h = Image.open(io.BytesIO(r["image"])).size
    assert (r["width"], r["height"]) == (w, h), r["id"]
    present = sorted(int(v) for v in np.unique(original) if v not in (0, 255))
    assert r["labels"] == present, (r["id"], r["labels"], present)
print(json.dumps(len(t)))
"#;
    assert_eq!(run_python(script, &[s(&voc), s(&out)]).trim(), "96");
    let stats = inspect_json(tmp.path(), &out);
    assert!(stats["images_per_class"][15].as_u64().unwrap() > 10, "person is common in voc-mini");
    assert_eq!(stats["images_per_class"][1], 0, "no aeroplane in voc-mini");
}

/// A VOC tree in `root` with the given images (id, RGB size) and masks (id, size, fill value).
fn fake_voc(root: &Path, images: &[(&str, u32, u32)], masks: &[(&str, u32, u32, u8)]) {
    for dir in ["JPEGImages", "ImageSets/Segmentation", "SegmentationClass"] {
        std::fs::create_dir_all(root.join(dir)).unwrap();
    }
    let ids: Vec<&str> = images.iter().map(|i| i.0).collect();
    std::fs::write(root.join("ImageSets/Segmentation/train.txt"), ids.join("\n")).unwrap();
    for &(id, w, h) in images {
        let rgb = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 9) as u8, (y * 7) as u8, 90]));
        rgb.save(root.join(format!("JPEGImages/{id}.jpg"))).unwrap();
    }
    for &(id, w, h, value) in masks {
        image::GrayImage::from_pixel(w, h, image::Luma([value])).save(root.join(format!("SegmentationClass/{id}.png"))).unwrap();
    }
}

fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn bad_import_input_is_named_and_leaves_no_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let import = |root: &Path| {
        let out = out_dir.join("ds");
        let args = ["data", "import", "voc", "--root", s(root), "--split", "train", "--out", s(&out), "--shard-rows", "1"];
        (wsss_fails(tmp.path(), &args, 2), out)
    };

    let root = tmp.path().join("size");
    fake_voc(&root, &[("a", 8, 6), ("b", 8, 6)], &[("a", 8, 6, 3), ("b", 6, 8, 3)]);
    let (err, out) = import(&root);
    assert!(err.contains("b.png") && err.contains("mask is 6x8 but the image is 8x6"), "{err}");
    assert!(!out.exists() && leftovers(&out_dir).is_empty(), "no partial dataset: {:?}", leftovers(&out_dir));

    let root = tmp.path().join("range");
    fake_voc(&root, &[("a", 8, 6)], &[("a", 8, 6, 21)]);
    let (err, _) = import(&root);
    assert!(err.contains("a.png") && err.contains("class id 21 is out of range"), "{err}");

    let root = tmp.path().join("missing");
    fake_voc(&root, &[("a", 8, 6), ("b", 8, 6)], &[("a", 8, 6, 3), ("b", 8, 6, 3)]);
    std::fs::remove_file(root.join("JPEGImages/b.jpg")).unwrap();
    let (err, out) = import(&root);
    assert!(err.contains("JPEGImages/b.jpg"), "{err}");
    assert!(!out.exists() && leftovers(&out_dir).is_empty(), "shard a was written, yet no dataset: {:?}", leftovers(&out_dir));

    // A corrupt source image is a counted skip, not a failure.
    let root = tmp.path().join("corrupt");
    fake_voc(&root, &[("a", 8, 6), ("b", 8, 6)], &[("a", 8, 6, 3), ("b", 8, 6, 3)]);
    std::fs::write(root.join("JPEGImages/b.jpg"), b"\xff\xd8\xff\xe0garbage").unwrap();
    let out = out_dir.join("skip");
    let out_text = common::wsss(tmp.path(), &["data", "import", "voc", "--root", s(&root), "--split", "train", "--out", s(&out)]);
    let log = String::from_utf8_lossy(&out_text.stderr);
    assert!(out_text.status.success(), "{log}");
    assert!(log.contains("skipped") && log.contains("b.jpg") && log.contains("skipped 1"), "{log}");
    assert_eq!(Manifest::read(&out).unwrap().rows, 1);
}

#[test]
fn verify_lists_every_bad_row_and_checksum_mismatch() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("syn");
    wsss_ok(tmp.path(), &["data", "import", "synthetic", "--out", s(&out), "--images", "20", "--size", "32", "--shard-rows", "10"]);
    // Rewrite shard 1 with two damaged rows (as bit rot or a buggy writer would leave it),
    // keeping the manifest's old checksum: three problems to report.
    let dataset = Dataset::open(&out).unwrap();
    let mut rows: Vec<ImageRow> = dataset.read(&(10..20).collect::<Vec<_>>()).unwrap();
    let third = rows[2].image.len() / 3;
    rows[2].image.truncate(third);
    rows[7].labels = vec![9];
    let bad_ids = (rows[2].id.clone(), rows[7].id.clone());
    write_shard(&out.join("part-00001.parquet"), &rows, ShardLayout::default()).unwrap();
    let report = wsss_fails(tmp.path(), &["data", "verify", s(&out)], 1);
    assert!(report.contains("part-00001.parquet: checksum mismatch"), "{report}");
    assert!(report.contains(&format!("part-00001.parquet row 2 id {}", bad_ids.0)), "{report}");
    assert!(report.contains(&format!("part-00001.parquet row 7 id {}: labels: class id 9 out of range 1..=6", bad_ids.1)), "{report}");
    assert!(report.contains("3 problem(s)"), "{report}");

    // A truncated shard: verify reports it, inspect fails naming it.
    let bytes = std::fs::read(out.join("part-00000.parquet")).unwrap();
    std::fs::write(out.join("part-00000.parquet"), &bytes[..bytes.len() - 100]).unwrap();
    let report = wsss_fails(tmp.path(), &["data", "verify", s(&out)], 1);
    assert!(report.contains("part-00000.parquet") && report.contains("Parquet"), "{report}");
    let err = wsss_fails(tmp.path(), &["data", "inspect", s(&out)], 2);
    assert!(err.contains("part-00000.parquet"), "{err}");

    std::fs::remove_file(out.join("_manifest.json")).unwrap();
    let err = wsss_fails(tmp.path(), &["data", "verify", s(&out)], 2);
    assert!(err.contains("no _manifest.json"), "{err}");
}

#[test]
fn coco_import_rasterises_polygons_rle_and_crowds() {
    let tmp = tempfile::tempdir().unwrap();
    let images = tmp.path().join("images");
    std::fs::create_dir(&images).unwrap();
    for name in ["a.png", "b.png", "empty.png"] {
        image::RgbImage::from_pixel(5, 4, image::Rgb([10, 20, 30])).save(images.join(name)).unwrap();
    }
    // Categories out of id order: ids 90 ("zebra") and 3 ("car") become 2 and 1.
    // Image a (w 5, h 4): a car rectangle polygon and a zebra as uncompressed RLE.
    // Image b: a crowd of cars as a compressed RLE string over a zebra polygon.
    let json = serde_json::json!({
        "images": [
            {"id": 1, "file_name": "a.png", "width": 5, "height": 4},
            {"id": 2, "file_name": "b.png", "width": 5, "height": 4},
            {"id": 3, "file_name": "empty.png", "width": 5, "height": 4}
        ],
        "categories": [{"id": 90, "name": "zebra"}, {"id": 3, "name": "car"}],
        "annotations": [
            {"id": 10, "image_id": 1, "category_id": 3, "iscrowd": 0, "segmentation": [[0.5, 0.5, 2.5, 0.5, 2.5, 2.5, 0.5, 2.5]]},
            {"id": 11, "image_id": 1, "category_id": 90, "iscrowd": 0, "segmentation": {"size": [4, 5], "counts": [16, 4]}},
            {"id": 12, "image_id": 2, "category_id": 90, "iscrowd": 0, "segmentation": [[0.5, 0.5, 1.5, 0.5, 1.5, 1.5, 0.5, 1.5], [1.0, 1.0]]},
            {"id": 13, "image_id": 2, "category_id": 3, "iscrowd": 1, "segmentation": {"size": [4, 5], "counts": "04`0"}}
        ]
    });
    let annotations = tmp.path().join("instances_mini.json");
    std::fs::write(&annotations, json.to_string()).unwrap();
    let out = tmp.path().join("coco");
    wsss_ok(tmp.path(), &["data", "import", "coco", "--annotations", s(&annotations), "--images", s(&images), "--out", s(&out)]);
    let manifest = Manifest::read(&out).unwrap();
    assert_eq!(manifest.classes, ["background", "car", "zebra"]);
    assert_eq!(manifest.split, "mini");
    assert_eq!(manifest.rows, 2, "the image without annotations is skipped");
    let rows = Dataset::open(&out).unwrap().read(&[0, 1]).unwrap();
    let mask = |r: &ImageRow| wsss_dist::data::codec::decode_mask(r.mask.as_ref().unwrap()).unwrap().2;
    assert_eq!((rows[0].id.as_str(), rows[0].labels.as_slice()), ("a", &[1u16, 2][..]));
    // Worked out by hand. The car square with corners (0.5,0.5)-(2.5,2.5) covers the pixels
    // whose centres lie inside: x, y in {1, 2}. The zebra RLE is column-major: 16 zeros then
    // 4 ones = the last column (x = 4), painted after the car.
    #[rustfmt::skip]
    let expected_a = [
        0, 0, 0, 0, 2,
        0, 1, 1, 0, 2,
        0, 1, 1, 0, 2,
        0, 0, 0, 0, 2,
    ];
    assert_eq!(mask(&rows[0]), expected_a);
    // Image b: the zebra square covers pixel (1,1); the 2-value polygon is left out. The crowd
    // string "04`0" encodes runs [0, 4, 16] ('0' = 0, '4' = 4, "`0" = 16 as two 5-bit groups
    // with the continuation bit): the first column (x = 0) is crowd, marked 255.
    #[rustfmt::skip]
    let expected_b = [
        255, 0, 0, 0, 0,
        255, 2, 0, 0, 0,
        255, 0, 0, 0, 0,
        255, 0, 0, 0, 0,
    ];
    assert_eq!((rows[1].id.as_str(), rows[1].labels.as_slice()), ("b", &[1u16, 2][..]));
    assert_eq!(mask(&rows[1]), expected_b);

    let with_empty = tmp.path().join("coco2");
    wsss_ok(tmp.path(), &["data", "import", "coco", "--annotations", s(&annotations), "--images", s(&images), "--out", s(&with_empty), "--keep-unlabeled"]);
    assert_eq!(Manifest::read(&with_empty).unwrap().rows, 3);

    std::fs::remove_file(images.join("b.png")).unwrap();
    let err =
        wsss_fails(tmp.path(), &["data", "import", "coco", "--annotations", s(&annotations), "--images", s(&images), "--out", s(&tmp.path().join("c3"))], 2);
    assert!(err.contains("b.png"), "{err}");
}

#[test]
fn config_show_resolves_overrides_and_names_unknown_keys() {
    let tmp = tempfile::tempdir().unwrap();
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("configs/synthetic_cam.toml");
    let text = wsss_ok(tmp.path(), &["config", "show", "--config", s(&config), "--set", "loader.batch_size=4"]);
    let resolved: toml::Table = text.parse().unwrap();
    assert_eq!(resolved["loader"]["batch_size"].as_integer(), Some(4));
    assert_eq!(resolved["loader"]["crop"].as_integer(), Some(128), "from the file");
    assert_eq!(resolved["loader"]["prefetch"].as_integer(), Some(4), "a default");
    let err = wsss_fails(tmp.path(), &["config", "show", "--set", "loader.bach_size=4"], 2);
    assert!(err.contains("did you mean `loader.batch_size`"), "{err}");
}

#[test]
fn voc_labels_from_xml_and_colour_masks_through_the_palette() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("voc");
    fake_voc(&root, &[("a", 4, 2)], &[]);
    // An RGB mask in VOC colours: cat (8) = (64, 0, 0), person (15) = (192, 128, 128), void.
    let colours = [[64, 0, 0], [64, 0, 0], [192, 128, 128], [0, 0, 0], [224, 224, 192], [0, 0, 0], [0, 0, 0], [0, 0, 0]];
    let rgb = image::RgbImage::from_fn(4, 2, |x, y| image::Rgb(colours[(y * 4 + x) as usize]));
    rgb.save(root.join("SegmentationClass/a.png")).unwrap();
    std::fs::create_dir(root.join("Annotations")).unwrap();
    let xml = "<annotation><object><name>dog</name></object><object><name>cat</name></object><object><name>dog</name></object></annotation>";
    std::fs::write(root.join("Annotations/a.xml"), xml).unwrap();
    let out = tmp.path().join("ds");
    wsss_ok(tmp.path(), &["data", "import", "voc", "--root", s(&root), "--split", "train", "--out", s(&out)]);
    let row = Dataset::open(&out).unwrap().read(&[0]).unwrap().remove(0);
    assert_eq!(row.labels, [8, 12], "cat and dog from the XML, not person from the mask");
    let (_, _, ids) = wsss_dist::data::codec::decode_mask(row.mask.as_ref().unwrap()).unwrap();
    assert_eq!(ids, [8, 8, 15, 0, 255, 0, 0, 0]);

    std::fs::write(root.join("Annotations/a.xml"), "<annotation><object><name>unicorn</name></object></annotation>").unwrap();
    let err = wsss_fails(tmp.path(), &["data", "import", "voc", "--root", s(&root), "--split", "train", "--out", s(&tmp.path().join("x"))], 2);
    assert!(err.contains("a.xml") && err.contains("unknown class name \"unicorn\""), "{err}");
}

/// Logs to a pipe or file (SLURM output, `2> log`) are plain text, and the generator's settings
/// read as `key=value`.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let out = common::wsss(tmp.path(), &["data", "import", "synthetic", "--out", "d", "--images", "4", "--size", "32"]);
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !log.contains('\u{1b}'), "{log:?}");
    assert!(log.contains("classes=6 size=32 min_objects=1") && !log.contains("SyntheticParams"), "{log}");
}

/// `data import voc --scribbles DIR`: ScribbleSup's XML files (hand-written in its layout) are
/// rasterised into a pseudo-label dataset beside the images (`<out>-scribbles`), with a brush of
/// `--scribble-brush` pixels; a file with an unknown class tag and a missing file are skipped
/// with warnings naming them, and the rows written are exactly the strokes' pixels.
#[test]
fn voc_import_rasterises_scribblesup_files() {
    use wsss_dist::data::codec::decode_mask;
    use wsss_dist::data::PseudoRow;
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("voc");
    fake_voc(&root, &[("a", 16, 12), ("b", 16, 12), ("c", 16, 12)], &[("a", 16, 12, 1), ("b", 16, 12, 1), ("c", 16, 12, 1)]);
    let scribbles = tmp.path().join("pascal_2012");
    std::fs::create_dir(&scribbles).unwrap();
    let polygon = |tag: &str, points: &[(i32, i32)]| {
        let points: String = points.iter().map(|(x, y)| format!("<point><X>{x}</X><Y>{y}</Y></point>")).collect();
        format!("<polygon><tag>{tag}</tag>{points}</polygon>")
    };
    let file = |polygons: &[String]| {
        format!("<annotation><filename>x.jpg</filename><size><width>16</width><height>12</height></size>{}</annotation>", polygons.concat())
    };
    std::fs::write(scribbles.join("a.xml"), file(&[polygon("aeroplane", &[(2, 3), (10, 3)]), polygon("background", &[(14, 10)])])).unwrap();
    std::fs::write(scribbles.join("b.xml"), file(&[polygon("horse2", &[(2, 3)])])).unwrap();
    let out = tmp.path().join("train");
    let args = ["data", "import", "voc", "--root", s(&root), "--split", "train", "--out", s(&out), "--scribbles", s(&scribbles), "--scribble-brush", "1"];
    let output = common::wsss(tmp.path(), &args);
    let log = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("b.xml") && log.contains("\"horse2\""), "{log}");
    assert!(log.contains("c.xml"), "{log}");
    let labels: Dataset<PseudoRow> = Dataset::open_as(&tmp.path().join("train-scribbles")).unwrap();
    assert_eq!(labels.len(), 1);
    let row = labels.shard(0).unwrap().read_all().unwrap().remove(0);
    assert_eq!((row.id.as_str(), row.method.as_str()), ("a", "scribble"));
    let (w, h, map) = decode_mask(&row.mask).unwrap();
    assert_eq!((w, h), (16, 12));
    // Brush 1: the segment's pixels (2..=10, 3) and the single background point.
    for (p, &v) in map.iter().enumerate() {
        let (x, y) = (p % 16, p / 16);
        let expected = if y == 3 && (2..=10).contains(&x) {
            1
        } else if (x, y) == (14, 10) {
            0
        } else {
            255
        };
        assert_eq!(v, expected, "({x}, {y})");
    }
    wsss_ok(tmp.path(), &["data", "verify", "--images", s(&out), s(&tmp.path().join("train-scribbles"))]);
}

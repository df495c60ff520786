//! The random walk of `pseudo-label --method irn_rw` (refine::walk::walk_labels) on the inputs
//! `benchmarks/walk_torch.py inputs` writes, one image at a time on one thread; writes the
//! labels for `walk_torch.py agree` and prints images/s and the peak memory an image adds:
//!
//!     cargo bench --bench walk -- --inputs IN.safetensors --out LABELS.safetensors
//!
//! IN holds, for image i, `boundary.i` [h, w], `cams.i` [K, h, w], `classes.i` [K] and
//! `size.i` [2] (the image's height and width); LABELS gets `labels.i` [height, width] (u8).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Instant;

use clap::Parser;
use tch::{Kind, Tensor};
use wsss_dist::refine::walk::{walk_labels, WalkParams};

#[derive(Parser)]
struct Args {
    #[arg(long)]
    inputs: PathBuf,
    #[arg(long)]
    out: PathBuf,
    #[arg(long, hide = true)]
    bench: bool,
}

/// A field of /proc/self/status in KiB.
fn memory_kib(field: &str) -> anyhow::Result<i64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let line = status.lines().find(|l| l.starts_with(&format!("{field}:"))).ok_or_else(|| anyhow::anyhow!("no {field} in /proc/self/status"))?;
    Ok(line.split_whitespace().nth(1).unwrap_or("0").parse()?)
}

/// Linux: writing 5 to clear_refs resets the peak RSS (VmHWM) to the current RSS.
fn reset_peak() -> anyhow::Result<()> {
    Ok(std::fs::write("/proc/self/clear_refs", "5")?)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let inputs: BTreeMap<String, Tensor> = Tensor::read_safetensors(&args.inputs)?.into_iter().collect();
    let count = inputs.keys().filter(|k| k.starts_with("boundary.")).count();
    let params = WalkParams::default();
    let (mut labels, mut seconds, mut peak_kib) = (Vec::new(), 0.0, 0);
    for i in 0..count {
        let get = |name: &str| inputs.get(&format!("{name}.{i}")).ok_or_else(|| anyhow::anyhow!("{}: no {name}.{i}", args.inputs.display()));
        let boundary = get("boundary")?;
        let (h, w) = (boundary.size()[0] as usize, boundary.size()[1] as usize);
        let boundary = Vec::<f32>::try_from(boundary.flatten(0, -1))?;
        let cams = Vec::<f32>::try_from(get("cams")?.flatten(0, -1))?;
        let classes: Vec<u16> = Vec::<i64>::try_from(get("classes")?)?.into_iter().map(|c| c as u16).collect();
        let size = Vec::<i64>::try_from(get("size")?)?;
        let (height, width) = (size[0] as usize, size[1] as usize);
        reset_peak()?;
        let before = memory_kib("VmRSS")?;
        let start = Instant::now();
        let out = walk_labels(&cams, &classes, &boundary, (h, w), (height, width), &params);
        seconds += start.elapsed().as_secs_f64();
        peak_kib = peak_kib.max(memory_kib("VmHWM")? - before);
        labels.push((format!("labels.{i}"), Tensor::from_slice(&out).to_kind(Kind::Uint8).view([height as i64, width as i64])));
    }
    Tensor::write_safetensors(&labels, &args.out)?;
    println!("{{\"images\": {count}, \"images_per_s\": {:.4}, \"peak_mib_per_image\": {:.2}}}", count as f64 / seconds, peak_kib as f64 / 1024.0);
    Ok(())
}

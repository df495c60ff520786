//! Loader throughput: read (Parquet) + decode + augment + batch with N worker threads, after
//! one untimed warm-up epoch; or decode-only (read + decode on N threads) as the ceiling.
//! The same work as benchmarks/loader_torch.py; prints one JSON line.
//!
//!     cargo bench --bench loader -- --dataset DIR [--batch 16] [--threads 2] [--epochs 3] [--decode-only]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use wsss_dist::config::LoaderConfig;
use wsss_dist::data::codec::decode_rgb;
use wsss_dist::data::loader::{Loader, LoaderSpec};
use wsss_dist::data::sampler::{Cursor, Sampler, Uneven};
use wsss_dist::data::Dataset;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    dataset: PathBuf,
    #[arg(long, default_value_t = 16)]
    batch: usize,
    #[arg(long, default_value_t = 2)]
    threads: usize,
    #[arg(long, default_value_t = 3)]
    epochs: u64,
    #[arg(long)]
    decode_only: bool,
    /// cargo bench passes --bench to the harness.
    #[arg(long, hide = true)]
    bench: bool,
}

/// User + system CPU seconds of this process (all threads), from /proc.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11).and_then(|u| u.parse().ok()).unwrap_or(0.0) + fields.get(12).and_then(|s| s.parse().ok()).unwrap_or(0.0);
    ticks / 100.0
}

fn decode_epoch(dataset: &Dataset, threads: usize) -> usize {
    let indices: Vec<usize> = (0..dataset.len()).collect();
    let chunk = indices.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let handles: Vec<_> = indices
            .chunks(chunk)
            .map(|part| {
                scope.spawn(move || {
                    part.iter()
                        .map(|&i| {
                            let row = dataset.read(&[i]).expect("readable").remove(0);
                            decode_rgb(&row.image).expect("decodable").pixels.len()
                        })
                        .filter(|&n| n > 0)
                        .count()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("no panic")).sum()
    })
}

fn loader_epoch(loader: &Loader, epoch: u64) -> usize {
    loader
        .epoch(Cursor { epoch, position: 0 })
        .map(|batch| {
            let batch = batch.expect("batch");
            assert_eq!(&batch.images.size()[1..], &[3, 512, 512]);
            batch.indices.len()
        })
        .sum()
}

fn main() {
    let args = Args::parse();
    let dataset = Arc::new(Dataset::open(&args.dataset).expect("dataset"));
    // The transforms of loader_torch.py: resize long side [320, 640] bilinear, flip,
    // ColorJitter(0.3, 0.3, 0.3, 0.1), ImageNet normalisation, random crop 512 with padding.
    let config = LoaderConfig { batch_size: args.batch, threads: args.threads, ..LoaderConfig::default() };
    let spec =
        LoaderSpec { batch_size: args.batch, threads: args.threads, prefetch: 2 * args.threads, augment: config.augment_params(), with_mask: false, seed: 0 };
    let sampler = Sampler { len: dataset.len(), seed: 0, rank: 0, world: 1, shuffle: true, uneven: Uneven::Pad };
    let loader = Loader::new(dataset.clone(), sampler, spec).expect("loader");
    let run = |epoch: u64| if args.decode_only { decode_epoch(&dataset, args.threads) } else { loader_epoch(&loader, epoch) };
    run(0);
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let images: usize = (1..=args.epochs).map(run).sum();
    let seconds = t0.elapsed().as_secs_f64();
    let line = serde_json::json!({
        "tool": "wsss-dist", "mode": if args.decode_only { "decode" } else { "augment" },
        "images": images, "seconds": seconds, "images_per_s": images as f64 / seconds,
        "cpu_seconds": cpu_seconds() - cpu0, "threads": args.threads, "batch": args.batch,
    });
    println!("{line}");
}

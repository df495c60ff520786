//! Dense CRF timings on one photo, one thread: lattice builds and mean-field inference of
//! IRNet's two passes (2 labels each) in one pass over the lattices. Prints JSON.
//!
//!   cargo bench --bench crf -- PHOTO.jpg [--repeats N]

use std::time::Instant;

use wsss_dist::data::codec::decode_rgb;
use wsss_dist::refine::crf::unary_from_labels;
use wsss_dist::refine::{CrfParams, DenseCrf, Lattice};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let photo = args.first().expect("usage: crf PHOTO.jpg [--repeats N]");
    let repeats: usize = args.iter().position(|a| a == "--repeats").map_or(5, |i| args[i + 1].parse().expect("a number"));
    let rgb = decode_rgb(&std::fs::read(photo).expect("the photo reads")).expect("the photo decodes");
    let (w, h) = (rgb.width as usize, rgb.height as usize);
    let params = CrfParams::default();
    let bilateral: Vec<f32> = (0..w * h)
        .flat_map(|p| {
            let c = &rgb.pixels[p * 3..p * 3 + 3];
            [(p % w) as f32 / 50.0, (p / w) as f32 / 50.0, c[0] as f32 / 5.0, c[1] as f32 / 5.0, c[2] as f32 / 5.0]
        })
        .collect();
    let labels: Vec<u8> = (0..w * h).map(|p| (((p % w) / 32 + (p / w) / 48) % 2) as u8).collect();
    let one = unary_from_labels(&labels, 2, 0.7);
    let two: Vec<f32> = one.chunks(2).flat_map(|u| u.iter().chain(u)).copied().collect();
    let (mut lattice, mut build, mut infer) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..repeats {
        let t = Instant::now();
        let l = Lattice::new(&bilateral, 5);
        lattice.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        let crf = DenseCrf::new(&rgb.pixels, w, h, &params);
        build.push(t.elapsed().as_secs_f64());
        let t = Instant::now();
        std::hint::black_box(crf.inference(&two, 2, 2));
        infer.push(t.elapsed().as_secs_f64());
        std::hint::black_box(l.vertices());
    }
    println!(
        "{{\"pixels\": {}, \"bilateral_lattice_s\": {:.4}, \"crf_build_s\": {:.4}, \"inference_two_passes_s\": {:.4}}}",
        w * h,
        median(lattice),
        median(build),
        median(infer)
    );
}

//! Deterministic generator of the embedded default dataset (`synthetic`).
//!
//! Every image shows a few objects on a textured background, built so that the failures of
//! class activation maps that WSSS methods correct are present on purpose and measurable:
//! 1. partial activation: an object's body is drawn from one class-independent distribution;
//!    only a small mark (10–20% of its area) tells its class;
//! 2. context leakage: each class has a background texture that appears only with that class;
//! 3. colour-aligned boundaries: a body's colour keeps a minimum distance from what lies
//!    behind and next to it, so colour-based refinement can recover the full extent.
//!
//! Class appearance (marks, context textures) is a fixed function of the class id, so data
//! generated with different seeds share one class definition. Only `+ - * / sqrt floor` are
//! used on floats (no libm transcendental functions), so output is bit-identical everywhere.
//! See `docs/synthetic.md`.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::codec::{encode_mask, encode_rgb_png};
use super::importer::{ImportSource, RowOutcome};
use super::{DataError, ImageRow};
use crate::rounding::floor;

/// Most classes the generator has distinct marks and context textures for.
pub const MAX_CLASSES: u16 = 20;
/// Most objects an image may hold (the owner map keeps the object index in 7 bits, and
/// placement with limited overlap gets crowded beyond this).
pub const MAX_OBJECTS: u32 = 8;

const SIZE_RANGE: (u32, u32) = (32, 1024);
const SCALE_RANGE: (f32, f32) = (0.1, 0.8);
const MARK_FRACTION_RANGE: (f32, f32) = (0.02, 0.3);
const OVERLAP_RANGE: (f32, f32) = (0.0, 0.5);
const CONTRAST_RANGE: (f32, f32) = (0.0, 150.0);
const BODY_TEXTURE_RANGE: (f32, f32) = (0.0, 40.0);
const NOISE_RANGE: (f32, f32) = (0.0, 40.0);

/// Marks stay this far (pixels) inside their body, so a body rim surrounds every mark.
const MARK_INSET: f32 = 1.0;
/// Later objects stay this far (pixels) from earlier marks, so marks are never touched.
const MARK_GUARD: f32 = 2.0;
const MARK_TRIES: u32 = 48;
const POSITION_TRIES: u32 = 48;
/// Rounds of shrinking an object that found no free position; after that it is dropped.
const SHRINK_ROUNDS: u32 = 4;
const SHRINK_FACTOR: f32 = 0.85;
const COLOUR_TRIES: u32 = 64;
/// Least RGB distance from a body's base colour to any mark colour, so marks stay visible.
const MARK_CLEARANCE: f32 = 60.0;
/// Body base colours stay inside this channel range so texture and noise rarely clip.
const BODY_CHANNEL_RANGE: (f32, f32) = (25.0, 230.0);
/// Half the distance (per channel) between a background texture's two tones.
const TEXTURE_HALF_CONTRAST: f32 = 20.0;
/// Owner-map flag for mark pixels; the low 7 bits hold object index + 1 (0 = background).
const MARK_BIT: u8 = 0x80;

/// Knobs of the generator. Every field has a documented default and range;
/// [`SyntheticParams::validate`] checks them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SyntheticParams {
    /// Number of object classes C (ids 1..=C). Default 6, range 1..=20.
    pub classes: u16,
    /// Side of the square images in pixels. Default 128, range 32..=1024.
    pub size: u32,
    /// Fewest objects per image. Default 1, range 1..=max_objects. An object that finds no
    /// free place (even after shrinking) is dropped, so crowded settings (many large
    /// objects) can give fewer; the defaults never do.
    pub min_objects: u32,
    /// Most objects per image. Default 3, range min_objects..=8.
    pub max_objects: u32,
    /// Probability that the background is the context texture of a class present in the
    /// image (otherwise a neutral texture from a shared pool). Default 0.8, range 0..=1.
    pub context_prob: f32,
    /// Smallest object: diameter of the disk enclosing it over the image side.
    /// Default 0.25, range 0.1..=max_object_scale.
    pub min_object_scale: f32,
    /// Largest object, same unit. Default 0.5, range min_object_scale..=0.8.
    pub max_object_scale: f32,
    /// Smallest mark area as a fraction of its object's area. Default 0.10,
    /// range 0.02..=max_mark_fraction.
    pub min_mark_fraction: f32,
    /// Largest mark area fraction. Default 0.20, range min_mark_fraction..=0.3.
    pub max_mark_fraction: f32,
    /// Most pixels two objects may share, as a fraction of the smaller one's area.
    /// Default 0.2, range 0..=0.5.
    pub max_overlap: f32,
    /// Least Euclidean RGB distance (0..255 channels) from a body's base colour to both
    /// tones of the background and to the bodies of nearby objects. Default 80, range 0..=150.
    pub min_contrast: f32,
    /// RGB distance between a body's base colour and its second tone (the body texture).
    /// Default 16, range 0..=40.
    pub body_texture: f32,
    /// Per-channel pixel noise amplitude (triangular distribution on ±noise).
    /// Default 6, range 0..=40.
    pub noise: f32,
}

/// `classes=6 size=128 ...`: the settings as a log line shows them.
impl std::fmt::Display for SyntheticParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let p = self;
        write!(
            f,
            "classes={} size={} min_objects={} max_objects={} context_prob={} min_object_scale={} max_object_scale={} min_mark_fraction={} max_mark_fraction={} max_overlap={} min_contrast={} body_texture={} noise={}",
            p.classes, p.size, p.min_objects, p.max_objects, p.context_prob, p.min_object_scale, p.max_object_scale, p.min_mark_fraction, p.max_mark_fraction, p.max_overlap, p.min_contrast, p.body_texture, p.noise
        )
    }
}

impl Default for SyntheticParams {
    fn default() -> Self {
        SyntheticParams {
            classes: 6,
            size: 128,
            min_objects: 1,
            max_objects: 3,
            context_prob: 0.8,
            min_object_scale: 0.25,
            max_object_scale: 0.5,
            min_mark_fraction: 0.10,
            max_mark_fraction: 0.20,
            max_overlap: 0.2,
            min_contrast: 80.0,
            body_texture: 16.0,
            noise: 6.0,
        }
    }
}

fn check_int(name: &str, v: u32, lo: u32, hi: u32) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!("{name} = {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

fn check_f32(name: &str, v: f32, lo: f32, hi: f32) -> Result<(), String> {
    // Written so that NaN fails too.
    if !(v >= lo && v <= hi) {
        return Err(format!("{name} = {v} is outside {lo}..={hi}"));
    }
    Ok(())
}

/// Clamps into `lo..=hi`, with NaN replaced by `default` first.
fn clamp_f32(v: f32, lo: f32, hi: f32, default: f32) -> f32 {
    let v = if v.is_nan() { default } else { v };
    v.clamp(lo, hi)
}

impl SyntheticParams {
    /// Checks every field against its range; the error names the offending field.
    pub fn validate(&self) -> Result<(), String> {
        check_int("classes", self.classes.into(), 1, MAX_CLASSES.into())?;
        check_int("size", self.size, SIZE_RANGE.0, SIZE_RANGE.1)?;
        check_int("min_objects", self.min_objects, 1, MAX_OBJECTS)?;
        check_int("max_objects", self.max_objects, self.min_objects, MAX_OBJECTS)?;
        check_f32("context_prob", self.context_prob, 0.0, 1.0)?;
        check_f32("min_object_scale", self.min_object_scale, SCALE_RANGE.0, SCALE_RANGE.1)?;
        check_f32("max_object_scale", self.max_object_scale, self.min_object_scale, SCALE_RANGE.1)?;
        let (lo, hi) = MARK_FRACTION_RANGE;
        check_f32("min_mark_fraction", self.min_mark_fraction, lo, hi)?;
        check_f32("max_mark_fraction", self.max_mark_fraction, self.min_mark_fraction, hi)?;
        check_f32("max_overlap", self.max_overlap, OVERLAP_RANGE.0, OVERLAP_RANGE.1)?;
        check_f32("min_contrast", self.min_contrast, CONTRAST_RANGE.0, CONTRAST_RANGE.1)?;
        check_f32("body_texture", self.body_texture, BODY_TEXTURE_RANGE.0, BODY_TEXTURE_RANGE.1)?;
        check_f32("noise", self.noise, NOISE_RANGE.0, NOISE_RANGE.1)
    }

    /// A copy with every field clamped into its range, so that [`generate`] never panics.
    fn sanitized(&self) -> SyntheticParams {
        let d = SyntheticParams::default();
        let min_objects = self.min_objects.clamp(1, MAX_OBJECTS);
        let min_scale = clamp_f32(self.min_object_scale, SCALE_RANGE.0, SCALE_RANGE.1, d.min_object_scale);
        let (mlo, mhi) = MARK_FRACTION_RANGE;
        let min_mark = clamp_f32(self.min_mark_fraction, mlo, mhi, d.min_mark_fraction);
        SyntheticParams {
            classes: self.classes.clamp(1, MAX_CLASSES),
            size: self.size.clamp(SIZE_RANGE.0, SIZE_RANGE.1),
            min_objects,
            max_objects: self.max_objects.clamp(min_objects, MAX_OBJECTS),
            context_prob: clamp_f32(self.context_prob, 0.0, 1.0, d.context_prob),
            min_object_scale: min_scale,
            max_object_scale: clamp_f32(self.max_object_scale, min_scale, SCALE_RANGE.1, d.max_object_scale),
            min_mark_fraction: min_mark,
            max_mark_fraction: clamp_f32(self.max_mark_fraction, min_mark, mhi, d.max_mark_fraction),
            max_overlap: clamp_f32(self.max_overlap, OVERLAP_RANGE.0, OVERLAP_RANGE.1, d.max_overlap),
            min_contrast: clamp_f32(self.min_contrast, CONTRAST_RANGE.0, CONTRAST_RANGE.1, d.min_contrast),
            body_texture: clamp_f32(self.body_texture, BODY_TEXTURE_RANGE.0, BODY_TEXTURE_RANGE.1, d.body_texture),
            noise: clamp_f32(self.noise, NOISE_RANGE.0, NOISE_RANGE.1, d.noise),
        }
    }
}

/// One generated image with its ground truth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyntheticSample {
    /// Image width in pixels (equal to `SyntheticParams::size`).
    pub width: u32,
    /// Image height in pixels (equal to `SyntheticParams::size`).
    pub height: u32,
    /// Row-major HWC RGB, 3 bytes a pixel.
    pub rgb: Vec<u8>,
    /// Row-major class per pixel: 0 background, 1..=C the visible object's class.
    pub mask: Vec<u8>,
    /// Sorted, unique class ids (1..=C): exactly the classes present in `mask`.
    pub labels: Vec<u16>,
}

// ---------------------------------------------------------------------------------------
// Class appearance: marks and context textures, fixed functions of the class id.

const MARK_PAIRS: [(&str, [f32; 3], &str, [f32; 3]); 5] = [
    ("red", [220.0, 30.0, 40.0], "white", [245.0, 245.0, 240.0]),
    ("blue", [30.0, 70.0, 225.0], "yellow", [250.0, 215.0, 30.0]),
    ("green", [20.0, 170.0, 70.0], "black", [15.0, 15.0, 20.0]),
    ("magenta", [205.0, 40.0, 200.0], "cyan", [40.0, 215.0, 225.0]),
    ("orange", [250.0, 135.0, 20.0], "navy", [25.0, 25.0, 120.0]),
];
const MARK_PATTERNS: [&str; 4] = ["checker", "stripes", "rings", "cross"];

/// (colour pair, pattern) of class `class` (1-based). Consecutive classes change colour
/// pair first, so small C gets the most distinct marks; the pairs are unique for k < 20.
fn mark_style(class: u16) -> (usize, usize) {
    let k = usize::from(class - 1);
    (k % 5, (k / 5 + k % 5) % 4)
}

/// Whether mark-local point (u, v) (offsets over the mark radius) takes the second colour.
fn mark_pattern(pattern: usize, u: f32, v: f32) -> bool {
    match pattern {
        0 => (floor(u * 2.0) as i32 + floor(v * 2.0) as i32) & 1 == 1,
        1 => floor((u + v) * 1.5) as i32 & 1 == 1,
        2 => floor((u * u + v * v).sqrt() * 3.0) as i32 & 1 == 1,
        _ => u.abs() < 0.3 || v.abs() < 0.3,
    }
}

/// Names for class ids 1..=C, describing each class's mark, e.g. `red_white_checker`.
/// `classes` above 20 is treated as 20.
pub fn class_names(classes: u16) -> Vec<String> {
    (1..=classes.min(MAX_CLASSES))
        .map(|c| {
            let (pair, pattern) = mark_style(c);
            let (a, _, b, _) = MARK_PAIRS[pair];
            format!("{a}_{b}_{}", MARK_PATTERNS[pattern])
        })
        .collect()
}

/// Mean colours of the background textures: the first 20 are the class contexts T_1..T_20,
/// the last 6 the neutral pool. They lie on a 70-level RGB grid, so any two differ by 70+.
const TEXTURE_MEANS: [[f32; 3]; 26] = [
    [60.0, 130.0, 60.0],
    [60.0, 130.0, 200.0],
    [200.0, 130.0, 60.0],
    [130.0, 60.0, 130.0],
    [200.0, 200.0, 60.0],
    [60.0, 200.0, 200.0],
    [200.0, 60.0, 60.0],
    [130.0, 200.0, 60.0],
    [60.0, 60.0, 130.0],
    [200.0, 130.0, 200.0],
    [130.0, 130.0, 60.0],
    [60.0, 200.0, 130.0],
    [130.0, 60.0, 60.0],
    [200.0, 200.0, 130.0],
    [60.0, 60.0, 200.0],
    [130.0, 200.0, 200.0],
    [200.0, 60.0, 130.0],
    [130.0, 130.0, 200.0],
    [60.0, 130.0, 130.0],
    [200.0, 60.0, 200.0],
    [60.0, 60.0, 60.0],
    [130.0, 130.0, 130.0],
    [200.0, 200.0, 200.0],
    [130.0, 200.0, 130.0],
    [200.0, 130.0, 130.0],
    [130.0, 60.0, 200.0],
];
const NEUTRAL_COUNT: u32 = 6;
/// Pattern period of each texture kind, as a fraction of the image side.
const KIND_PERIODS: [f32; 5] = [0.07, 0.08, 0.10, 0.18, 0.09];
/// Orientations (unit vectors) that textures of the same kind cycle through.
const TEXTURE_DIRS: [[f32; 2]; 4] = [[1.0, 0.0], [0.6, 0.8], [0.0, 1.0], [0.8, -0.6]];

/// Which texture fills the background of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Background {
    /// The context texture T_c of class c.
    Context(u16),
    /// Entry i of the neutral pool.
    Neutral(u32),
}

impl Background {
    fn texture_id(self) -> usize {
        match self {
            Background::Context(c) => usize::from(c - 1),
            Background::Neutral(i) => usize::from(MAX_CLASSES) + i as usize,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextureKind {
    Stripes,
    Checker,
    Waves,
    Blotches,
    Dots,
}

/// Triangle wave with period 1: 1 at integers, 0 half-way between.
fn tri(u: f32) -> f32 {
    (2.0 * (u - floor(u)) - 1.0).abs()
}

fn smoothstep(t: f32) -> f32 {
    t * t * (3.0 - 2.0 * t)
}

/// Bilinear interpolation (smoothstep weights) in a row-major grid of width `w`;
/// (gx, gy) must lie inside the grid.
fn value_noise(grid: &[f32], w: usize, gx: f32, gy: f32) -> f32 {
    let (ix, iy) = (floor(gx), floor(gy));
    let (fx, fy) = (smoothstep(gx - ix), smoothstep(gy - iy));
    let i = iy as usize * w + ix as usize;
    let top = grid[i] + fx * (grid[i + 1] - grid[i]);
    let bottom = grid[i + w] + fx * (grid[i + w + 1] - grid[i + w]);
    top + fy * (bottom - top)
}

/// A background texture as drawn in one image: a fixed definition (colours, kind,
/// period, orientation) plus a random phase and, for blotches, a random value grid.
struct Texture {
    kind: TextureKind,
    a: [f32; 3],
    b: [f32; 3],
    /// Cycles per pixel (1 / period), so the pixel loop multiplies instead of dividing.
    freq: f32,
    dir: [f32; 2],
    phase: [f32; 2],
    grid: Vec<f32>,
    grid_w: usize,
}

impl Texture {
    fn new(id: usize, size: u32, rng: &mut ChaCha8Rng) -> Texture {
        let kind = [TextureKind::Stripes, TextureKind::Checker, TextureKind::Waves, TextureKind::Blotches, TextureKind::Dots][id % 5];
        // Textures of one kind differ in orientation and a little in period as well as colour.
        let period = KIND_PERIODS[id % 5] * (1.0 + 0.1 * (id / 5) as f32) * size as f32;
        let m = TEXTURE_MEANS[id];
        let h = TEXTURE_HALF_CONTRAST;
        let phase = [rng.random::<f32>(), rng.random::<f32>()];
        let (grid, grid_w) = if kind == TextureKind::Blotches {
            let w = (size as f32 / period).ceil() as usize + 2;
            ((0..w * w).map(|_| rng.random::<f32>()).collect(), w)
        } else {
            (Vec::new(), 0)
        };
        Texture {
            kind,
            a: [m[0] - h, m[1] - h, m[2] - h],
            b: [m[0] + h, m[1] + h, m[2] + h],
            freq: 1.0 / period,
            dir: TEXTURE_DIRS[(id / 5) % 4],
            phase,
            grid,
            grid_w,
        }
    }

    /// Mix weight of the second tone at pixel centre (x, y), in 0..=1.
    fn weight(&self, x: f32, y: f32) -> f32 {
        let [dx, dy] = self.dir;
        let u = (x * dx + y * dy) * self.freq;
        let v = (y * dx - x * dy) * self.freq;
        match self.kind {
            TextureKind::Stripes => tri(u + self.phase[0]),
            TextureKind::Checker => {
                let i = floor(u + self.phase[0]) as i64 + floor(v + self.phase[1]) as i64;
                (i & 1) as f32
            }
            TextureKind::Waves => 0.5 * (tri(u + self.phase[0]) + tri(0.7 * v + self.phase[1])),
            TextureKind::Blotches => value_noise(&self.grid, self.grid_w, x * self.freq, y * self.freq),
            TextureKind::Dots => {
                let fu = u + self.phase[0] - floor(u + self.phase[0]) - 0.5;
                let fv = v + self.phase[1] - floor(v + self.phase[1]) - 0.5;
                if fu * fu + fv * fv < 0.09 {
                    1.0
                } else {
                    0.0
                }
            }
        }
    }

    fn colour(&self, x: f32, y: f32) -> [f32; 3] {
        let t = self.weight(x, y);
        [0, 1, 2].map(|c| self.a[c] + t * (self.b[c] - self.a[c]))
    }
}

// ---------------------------------------------------------------------------------------
// Object shapes and placement.

/// A unit vector drawn through the rational parametrisation of the half circle, which
/// needs no trigonometry (and so is bit-exact on every platform).
fn random_half_turn(rng: &mut ChaCha8Rng) -> [f32; 2] {
    let t: f32 = rng.random_range(-1.0..=1.0);
    let d = 1.0 + t * t;
    [(1.0 - t * t) / d, 2.0 * t / d]
}

enum Shape {
    Ellipse {
        a: f32,
        b: f32,
        rot: [f32; 2],
    },
    RoundedRect {
        hx: f32,
        hy: f32,
        corner: f32,
        rot: [f32; 2],
    },
    /// Star-shaped blob: radius r0 (1 + sum_k c_k cos kθ + s_k sin kθ), k = 2..=4.
    Blob {
        r0: f32,
        cos: [f32; 3],
        sin: [f32; 3],
    },
}

impl Shape {
    /// A random shape that fits in a disk of `radius` around the origin.
    fn random(rng: &mut ChaCha8Rng, radius: f32) -> Shape {
        match rng.random_range(0..3u32) {
            0 => {
                let aspect: f32 = rng.random_range(1.0..=1.7);
                Shape::Ellipse { a: radius, b: radius / aspect, rot: random_half_turn(rng) }
            }
            1 => {
                let aspect: f32 = rng.random_range(1.0..=1.7);
                let k: f32 = rng.random_range(0.25..=0.7);
                // Sized so the farthest point (on a corner arc) is exactly `radius` away.
                let hy = radius / ((sq(aspect - k) + sq(1.0 - k)).sqrt() + k);
                let corner = k * hy;
                Shape::RoundedRect { hx: aspect * hy, hy, corner, rot: random_half_turn(rng) }
            }
            _ => {
                let mut cos = [0.0; 3];
                let mut sin = [0.0; 3];
                for k in 0..3 {
                    cos[k] = rng.random_range(-0.045..=0.045f32);
                    sin[k] = rng.random_range(-0.045..=0.045f32);
                }
                let wobble: f32 = cos.iter().chain(&sin).map(|c| c.abs()).sum();
                Shape::Blob { r0: radius / (1.0 + wobble), cos, sin }
            }
        }
    }

    fn contains(&self, dx: f32, dy: f32) -> bool {
        match *self {
            Shape::Ellipse { a, b, rot: [c, s] } => {
                let (u, v) = ((dx * c + dy * s) / a, (dy * c - dx * s) / b);
                u * u + v * v <= 1.0
            }
            Shape::RoundedRect { hx, hy, corner, rot: [c, s] } => {
                let qx = ((dx * c + dy * s).abs() - (hx - corner)).max(0.0);
                let qy = ((dy * c - dx * s).abs() - (hy - corner)).max(0.0);
                qx * qx + qy * qy <= corner * corner
            }
            Shape::Blob { r0, cos, sin } => {
                let d2 = dx * dx + dy * dy;
                if d2 == 0.0 {
                    return true;
                }
                let d = d2.sqrt();
                // cos kθ, sin kθ as powers of the unit complex number (dx + i dy) / d.
                let (c1, s1) = (dx / d, dy / d);
                let (c2, s2) = (c1 * c1 - s1 * s1, 2.0 * c1 * s1);
                let (c3, s3) = (c2 * c1 - s2 * s1, c2 * s1 + s2 * c1);
                let (c4, s4) = (c2 * c2 - s2 * s2, 2.0 * c2 * s2);
                let wobble = cos[0] * c2 + sin[0] * s2 + cos[1] * c3 + sin[1] * s3 + cos[2] * c4 + sin[2] * s4;
                d <= r0 * (1.0 + wobble)
            }
        }
    }
}

/// A shape rasterised on a `side`×`side` grid whose centre pixel `side / 2` is the origin.
struct Raster {
    side: u32,
    inside: Vec<bool>,
    area: u32,
}

impl Raster {
    fn new(shape: &Shape, radius: f32) -> Raster {
        let half = radius.ceil() as i32;
        let side = (2 * half + 1) as u32;
        let inside: Vec<bool> =
            (-half..=half).flat_map(|dy| (-half..=half).map(move |dx| (dx as f32, dy as f32))).map(|(dx, dy)| shape.contains(dx, dy)).collect();
        let area = inside.iter().filter(|&&b| b).count() as u32;
        Raster { side, inside, area }
    }

    fn at(&self, x: i32, y: i32) -> bool {
        let s = self.side as i32;
        x >= 0 && y >= 0 && x < s && y < s && self.inside[(y * s + x) as usize]
    }

    /// Whether every pixel within sqrt(r2) of (cx, cy) is inside the shape.
    fn disk_inside(&self, cx: i32, cy: i32, r2: f32) -> bool {
        let r = r2.sqrt() as i32;
        (-r..=r).all(|dy| (-r..=r).all(|dx| (dx * dx + dy * dy) as f32 > r2 || self.at(cx + dx, cy + dy)))
    }
}

/// Number of lattice points (dx, dy) with dx² + dy² <= q: the pixel count of a mark.
fn disk_count(q: u32) -> u32 {
    // f64 sqrt is correctly rounded, so its floor is the exact integer root of a u32.
    let isqrt = |n: u32| (f64::from(n)).sqrt() as u32;
    let r = isqrt(q) as i64;
    (-r..=r).map(|dx| 2 * isqrt(q - (dx * dx) as u32) + 1).sum()
}

/// Squared mark radius whose pixel count is about `f · area` for a random f in the
/// configured range, moved to the nearest lattice radius inside the range.
fn mark_radius2(p: &SyntheticParams, area: u32, rng: &mut ChaCha8Rng) -> u32 {
    let f: f32 = rng.random_range(p.min_mark_fraction..=p.max_mark_fraction);
    let lo = (p.min_mark_fraction * area as f32).ceil() as u32;
    let hi = (p.max_mark_fraction * area as f32).floor() as u32;
    let mut q = (f * area as f32 / std::f32::consts::PI).round() as u32;
    while disk_count(q) < lo {
        q += 1;
    }
    // Only when the range is narrower than one lattice step can this undershoot `lo`.
    while q > 0 && disk_count(q) > hi {
        q -= 1;
    }
    q
}

/// An object as placed: class, position, shape and mark, all in image pixels.
struct Placed {
    class: u16,
    /// Top-left corner of the raster in the image.
    x0: u32,
    y0: u32,
    raster: Raster,
    /// Radius of the disk the shape fits in, and its centre in image coordinates.
    radius: f32,
    centre: [f32; 2],
    /// Mark centre pixel in image coordinates and squared radius: the mark is the pixels
    /// (x, y) with (x - mark_x)² + (y - mark_y)² <= mark_r2, clipped to the shape.
    mark_x: u32,
    mark_y: u32,
    mark_r2: u32,
}

/// Draws object count, classes, shapes and marks, and places them with limited overlap;
/// returns them in drawing order and the owner map (index + 1 per pixel, MARK_BIT on marks).
fn place_objects(p: &SyntheticParams, rng: &mut ChaCha8Rng) -> (Vec<Placed>, Vec<u8>) {
    let size = p.size;
    let n = (size * size) as usize;
    let mut owner = vec![0u8; n];
    // Pixels within MARK_GUARD of a mark, which later objects may not cover.
    let mut guarded = vec![false; n];
    let mut placed: Vec<Placed> = Vec::new();
    let count = rng.random_range(p.min_objects..=p.max_objects);
    for _ in 0..count {
        let class = rng.random_range(1..=p.classes);
        let scale: f32 = rng.random_range(p.min_object_scale..=p.max_object_scale);
        let mut radius = 0.5 * scale * size as f32;
        'shrink: for _ in 0..SHRINK_ROUNDS {
            let shape = Shape::random(rng, radius);
            let raster = Raster::new(&shape, radius);
            let mark_r2 = mark_radius2(p, raster.area, rng);
            let (mx, my) = place_mark(&raster, mark_r2, rng);
            for _ in 0..POSITION_TRIES {
                let x0 = rng.random_range(0..=size - raster.side);
                let y0 = rng.random_range(0..=size - raster.side);
                if !fits(p, &raster, x0, y0, &placed, &owner, &guarded) {
                    continue;
                }
                let obj = Placed {
                    class,
                    x0,
                    y0,
                    radius,
                    centre: [(x0 + raster.side / 2) as f32 + 0.5, (y0 + raster.side / 2) as f32 + 0.5],
                    mark_x: x0 + mx as u32,
                    mark_y: y0 + my as u32,
                    mark_r2,
                    raster,
                };
                commit(&obj, placed.len() as u8 + 1, size, &mut owner, &mut guarded);
                placed.push(obj);
                break 'shrink;
            }
            radius *= SHRINK_FACTOR;
        }
    }
    (placed, owner)
}

/// A random mark centre (raster coordinates) at which the mark, grown by MARK_INSET, lies
/// inside the shape; the raster centre if none is found (the mark is then clipped).
fn place_mark(raster: &Raster, mark_r2: u32, rng: &mut ChaCha8Rng) -> (i32, i32) {
    let grown = sq((mark_r2 as f32).sqrt() + MARK_INSET);
    for _ in 0..MARK_TRIES {
        let x = rng.random_range(0..raster.side) as i32;
        let y = rng.random_range(0..raster.side) as i32;
        if raster.at(x, y) && raster.disk_inside(x, y, grown) {
            return (x, y);
        }
    }
    let c = (raster.side / 2) as i32;
    (c, c)
}

/// Whether a raster at (x0, y0) keeps clear of earlier marks and overlaps each earlier
/// object by at most `max_overlap` of the smaller area.
fn fits(p: &SyntheticParams, raster: &Raster, x0: u32, y0: u32, placed: &[Placed], owner: &[u8], guarded: &[bool]) -> bool {
    let mut shared = [0u32; MAX_OBJECTS as usize];
    let s = raster.side as usize;
    for (j, row) in raster.inside.chunks_exact(s).enumerate() {
        let base = (y0 as usize + j) * p.size as usize + x0 as usize;
        for (i, _) in row.iter().enumerate().filter(|(_, &b)| b) {
            if guarded[base + i] {
                return false;
            }
            if owner[base + i] != 0 {
                shared[usize::from((owner[base + i] & !MARK_BIT) - 1)] += 1;
            }
        }
    }
    placed.iter().zip(shared).all(|(o, n)| n as f32 <= p.max_overlap * raster.area.min(o.raster.area) as f32)
}

/// Writes a placed object into the owner map (on top of earlier ones) and guards its mark.
fn commit(obj: &Placed, id: u8, size: u32, owner: &mut [u8], guarded: &mut [bool]) {
    let s = obj.raster.side as usize;
    for (j, row) in obj.raster.inside.chunks_exact(s).enumerate() {
        let base = (obj.y0 as usize + j) * size as usize + obj.x0 as usize;
        for (i, _) in row.iter().enumerate().filter(|(_, &b)| b) {
            owner[base + i] = id;
        }
    }
    let r2 = obj.mark_r2 as f32;
    let guard2 = sq(r2.sqrt() + MARK_GUARD);
    let r = guard2.sqrt() as i64;
    for dy in -r..=r {
        for dx in -r..=r {
            let (x, y) = (obj.mark_x as i64 + dx, obj.mark_y as i64 + dy);
            let d2 = (dx * dx + dy * dy) as f32;
            if x < 0 || y < 0 || x >= size as i64 || y >= size as i64 || d2 > guard2 {
                continue;
            }
            let i = (y * size as i64 + x) as usize;
            guarded[i] = true;
            let (rx, ry) = (x - obj.x0 as i64, y - obj.y0 as i64);
            if d2 <= r2 && obj.raster.at(rx as i32, ry as i32) {
                owner[i] |= MARK_BIT;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Body appearance: one distribution for every class.

#[derive(Clone, Copy)]
enum BodyKind {
    /// Linear shading across the object.
    Shading,
    /// Soft stripes.
    Stripes,
    /// Smooth blotches from a 4×4 value grid over the object's disk.
    Blotches,
}

/// Colour of an object's body: base colour plus `t · delta`, t in -1..=1 from the texture.
struct Body {
    base: [f32; 3],
    delta: [f32; 3],
    kind: BodyKind,
    dir: [f32; 2],
    /// Stripe cycles per pixel.
    freq: f32,
    grid: [f32; 16],
    centre: [f32; 2],
    /// 1 / radius of the object's enclosing disk.
    inv_radius: f32,
}

impl Body {
    fn colour(&self, x: f32, y: f32) -> [f32; 3] {
        let (dx, dy) = (x - self.centre[0], y - self.centre[1]);
        let t = match self.kind {
            BodyKind::Shading => ((dx * self.dir[0] + dy * self.dir[1]) * self.inv_radius).clamp(-1.0, 1.0),
            BodyKind::Stripes => 2.0 * tri((dx * self.dir[0] + dy * self.dir[1]) * self.freq) - 1.0,
            BodyKind::Blotches => {
                // Map the enclosing disk onto grid coordinates 0..=3 (clamped for safety at the rim).
                let g = |d: f32| ((d * self.inv_radius + 1.0) * 1.5).clamp(0.0, 2.999);
                2.0 * value_noise(&self.grid, 4, g(dx), g(dy)) - 1.0
            }
        };
        [0, 1, 2].map(|c| self.base[c] + t * self.delta[c])
    }
}

/// x², spelled out: `powi` is documented as not bit-exact across platforms.
fn sq(x: f32) -> f32 {
    x * x
}

fn distance(a: [f32; 3], b: [f32; 3]) -> f32 {
    (sq(a[0] - b[0]) + sq(a[1] - b[1]) + sq(a[2] - b[2])).sqrt()
}

/// Body base colours in drawing order: uniform in the RGB cube, re-drawn until at least
/// `min_contrast` from both background tones and from every earlier nearby body, and
/// MARK_CLEARANCE from every mark colour of every class (a class-independent rule, so that
/// marks stand out without the body hinting at its class). Keeps the best draw if none
/// qualifies.
fn body_colours(p: &SyntheticParams, objs: &[Placed], bg: &Texture, rng: &mut ChaCha8Rng) -> Vec<[f32; 3]> {
    let (lo, hi) = BODY_CHANNEL_RANGE;
    let mut bases: Vec<[f32; 3]> = Vec::with_capacity(objs.len());
    for (k, obj) in objs.iter().enumerate() {
        let mut refs = vec![bg.a, bg.b];
        for (j, other) in objs[..k].iter().enumerate() {
            let d = (sq(obj.centre[0] - other.centre[0]) + sq(obj.centre[1] - other.centre[1])).sqrt();
            if d < obj.radius + other.radius + 2.0 {
                refs.push(bases[j]);
            }
        }
        // Slack of a colour: how far it clears the tighter of the two requirements.
        let slack = |c: [f32; 3]| {
            let near = refs.iter().map(|&r| distance(c, r)).fold(f32::INFINITY, f32::min);
            let mark = MARK_PAIRS.iter().flat_map(|&(_, a, _, b)| [a, b]).map(|m| distance(c, m)).fold(f32::INFINITY, f32::min);
            (near - p.min_contrast).min(mark - MARK_CLEARANCE)
        };
        let mut best = ([0.0; 3], f32::NEG_INFINITY);
        for _ in 0..COLOUR_TRIES {
            let c: [f32; 3] = [0; 3].map(|_| rng.random_range(lo..=hi));
            let score = slack(c);
            if score > best.1 {
                best = (c, score);
            }
            if score >= 0.0 {
                break;
            }
        }
        bases.push(best.0);
    }
    bases
}

fn random_body(p: &SyntheticParams, obj: &Placed, base: [f32; 3], rng: &mut ChaCha8Rng) -> Body {
    let kind = [BodyKind::Shading, BodyKind::Stripes, BodyKind::Blotches][rng.random_range(0..3u32) as usize];
    // Second-tone direction: a random point of the cube's surface, normalised.
    let mut v: [f32; 3] = [0; 3].map(|_| rng.random_range(-1.0..=1.0));
    v[rng.random_range(0..3u32) as usize] = if rng.random_bool(0.5) { 1.0 } else { -1.0 };
    let norm = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
    let mut dir = random_half_turn(rng);
    if rng.random_bool(0.5) {
        dir = [-dir[0], -dir[1]];
    }
    Body {
        base,
        delta: v.map(|x| x / norm * p.body_texture),
        kind,
        dir,
        freq: 1.0 / (obj.radius * rng.random_range(0.3..=0.6f32)),
        grid: [0; 16].map(|_| rng.random::<f32>()),
        centre: obj.centre,
        inv_radius: 1.0 / obj.radius,
    }
}

// ---------------------------------------------------------------------------------------
// Composition and rendering.

/// Everything drawn for one image before rendering.
struct Layout {
    objects: Vec<Placed>,
    bodies: Vec<Body>,
    owner: Vec<u8>,
    // Only the tests read this back: rendering uses the texture built from it.
    #[cfg_attr(not(test), allow(dead_code))]
    background: Background,
    texture: Texture,
    noise_seed: u64,
}

/// The image's RNG: a ChaCha8 key from `seed` and stream `index`, so that images are
/// independent and any one can be generated alone, on any thread.
fn image_rng(seed: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    // A domain tag so this generator's streams differ from other ChaCha8 users of the seed.
    key[8..].copy_from_slice(b"wsss-dist/synthetic/v1.0");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(index);
    rng
}

/// Draws everything random about image `index`: objects, background, body appearance.
fn compose(p: &SyntheticParams, seed: u64, index: u64) -> Layout {
    let mut rng = image_rng(seed, index);
    let (objects, owner) = place_objects(p, &mut rng);
    let mut present: Vec<u16> = objects.iter().map(|o| o.class).collect();
    present.sort_unstable();
    present.dedup();
    let background = if !present.is_empty() && rng.random_bool(f64::from(p.context_prob)) {
        Background::Context(present[rng.random_range(0..present.len() as u32) as usize])
    } else {
        Background::Neutral(rng.random_range(0..NEUTRAL_COUNT))
    };
    let texture = Texture::new(background.texture_id(), p.size, &mut rng);
    let bases = body_colours(p, &objects, &texture, &mut rng);
    let bodies = objects.iter().zip(bases).map(|(o, base)| random_body(p, o, base, &mut rng)).collect();
    Layout { objects, bodies, owner, background, texture, noise_seed: rng.random() }
}

/// SplitMix64 finaliser: per-pixel noise bits far cheaper than drawing them from ChaCha.
fn splitmix64(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Paints a layout: background texture, bodies, marks, noise; the mask and labels come
/// from the same owner map, so they describe exactly what is visible.
fn render(p: &SyntheticParams, layout: &Layout) -> SyntheticSample {
    let size = p.size;
    let n = (size * size) as usize;
    let mut rgb = vec![0u8; 3 * n];
    let mut mask = vec![0u8; n];
    let mut present = [false; MAX_CLASSES as usize + 1];
    let noise_scale = p.noise / 255.0;
    let (mut col, mut row) = (0u32, 0u32);
    for (i, &own) in layout.owner.iter().enumerate() {
        // Pixel centre; x and y are counted rather than divided out of i.
        let (x, y) = (col as f32 + 0.5, row as f32 + 0.5);
        col += 1;
        if col == size {
            col = 0;
            row += 1;
        }
        let colour = if own == 0 {
            layout.texture.colour(x, y)
        } else {
            let k = usize::from(own & !MARK_BIT) - 1;
            let obj = &layout.objects[k];
            mask[i] = obj.class as u8;
            present[usize::from(obj.class)] = true;
            if own & MARK_BIT != 0 {
                let (pair, pattern) = mark_style(obj.class);
                let r = (obj.mark_r2 as f32).sqrt();
                let u = (x - 0.5 - obj.mark_x as f32) / r;
                let v = (y - 0.5 - obj.mark_y as f32) / r;
                let (_, a, _, b) = MARK_PAIRS[pair];
                if mark_pattern(pattern, u, v) {
                    b
                } else {
                    a
                }
            } else {
                layout.bodies[k].colour(x, y)
            }
        };
        // Triangular noise on ±noise: the sum of two uniform bytes, centred.
        let bits = splitmix64(layout.noise_seed ^ i as u64).to_le_bytes();
        for c in 0..3 {
            let tri = f32::from(bits[2 * c]) + f32::from(bits[2 * c + 1]) - 255.0;
            // + 0.5 and truncation rounds (values are >= 0 after the clamp) without libm.
            rgb[3 * i + c] = (colour[c] + tri * noise_scale + 0.5).clamp(0.0, 255.0) as u8;
        }
    }
    let labels = (1..=MAX_CLASSES).filter(|&c| present[usize::from(c)]).collect();
    SyntheticSample { width: size, height: size, rgb, mask, labels }
}

/// Generates image `index` of the dataset with `seed`.
///
/// A pure function of (params, seed, index): the same inputs always give the same bytes,
/// on any thread and platform. Fields outside the ranges of [`SyntheticParams::validate`]
/// are clamped into them.
pub fn generate(params: &SyntheticParams, seed: u64, index: u64) -> SyntheticSample {
    let p = params.sanitized();
    render(&p, &compose(&p, seed, index))
}

/// The synthetic dataset as an import source: `images` samples of (params, seed), encoded as
/// PNG (lossless, so colour edges stay exact) with their GT masks.
pub struct SyntheticSource {
    params: SyntheticParams,
    seed: u64,
    images: u64,
    split: String,
}

impl SyntheticSource {
    pub fn new(params: SyntheticParams, seed: u64, images: u64, split: &str) -> Result<SyntheticSource, DataError> {
        params.validate().map_err(|message| DataError::Invalid(format!("synthetic dataset: {message}")))?;
        Ok(SyntheticSource { params, seed, images, split: split.into() })
    }
}

impl ImportSource for SyntheticSource {
    fn len(&self) -> usize {
        self.images as usize
    }

    fn classes(&self) -> Vec<String> {
        std::iter::once("background".to_string()).chain(class_names(self.params.classes)).collect()
    }

    fn split(&self) -> String {
        self.split.clone()
    }

    fn describe(&self) -> String {
        format!("synthetic seed={} images={} {}", self.seed, self.images, self.params)
    }

    fn row(&self, index: usize) -> Result<RowOutcome, DataError> {
        let sample = generate(&self.params, self.seed, index as u64);
        Ok(RowOutcome::Row(ImageRow {
            id: format!("syn_{index:07}"),
            image: encode_rgb_png(sample.width, sample.height, &sample.rgb),
            width: sample.width,
            height: sample.height,
            labels: sample.labels,
            mask: Some(encode_mask(sample.width, sample.height, &sample.mask)),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Sorted unique nonzero values of a mask, computed without the generator's code.
    fn classes_in(mask: &[u8]) -> Vec<u16> {
        let mut seen = [false; 256];
        for &m in mask {
            seen[usize::from(m)] = true;
        }
        (1..256u16).filter(|&c| seen[usize::from(c)]).collect()
    }

    /// Image pixels of a mark, from its recorded centre and squared radius.
    fn mark_pixels(o: &Placed) -> Vec<(u32, u32)> {
        let r = (o.mark_r2 as f64).sqrt() as i64 + 1;
        let mut px = Vec::new();
        for dy in -r..=r {
            for dx in -r..=r {
                if (dx * dx + dy * dy) as u32 <= o.mark_r2 {
                    px.push(((o.mark_x as i64 + dx) as u32, (o.mark_y as i64 + dy) as u32));
                }
            }
        }
        px
    }

    #[test]
    fn defaults_validate_and_errors_name_the_field() {
        assert_eq!(SyntheticParams::default().validate(), Ok(()));
        let d = SyntheticParams::default();
        let cases: Vec<(&str, SyntheticParams)> = vec![
            ("classes", SyntheticParams { classes: 0, ..d.clone() }),
            ("classes", SyntheticParams { classes: 21, ..d.clone() }),
            ("size", SyntheticParams { size: 31, ..d.clone() }),
            ("size", SyntheticParams { size: 1025, ..d.clone() }),
            ("min_objects", SyntheticParams { min_objects: 0, ..d.clone() }),
            ("max_objects", SyntheticParams { min_objects: 3, max_objects: 2, ..d.clone() }),
            ("max_objects", SyntheticParams { max_objects: 9, ..d.clone() }),
            ("context_prob", SyntheticParams { context_prob: 1.5, ..d.clone() }),
            ("context_prob", SyntheticParams { context_prob: f32::NAN, ..d.clone() }),
            ("min_object_scale", SyntheticParams { min_object_scale: 0.05, ..d.clone() }),
            ("max_object_scale", SyntheticParams { max_object_scale: 0.2, ..d.clone() }),
            ("max_object_scale", SyntheticParams { max_object_scale: 0.9, ..d.clone() }),
            ("min_mark_fraction", SyntheticParams { min_mark_fraction: 0.0, ..d.clone() }),
            ("max_mark_fraction", SyntheticParams { max_mark_fraction: 0.05, ..d.clone() }),
            ("max_overlap", SyntheticParams { max_overlap: -0.1, ..d.clone() }),
            ("min_contrast", SyntheticParams { min_contrast: 200.0, ..d.clone() }),
            ("body_texture", SyntheticParams { body_texture: 50.0, ..d.clone() }),
            ("noise", SyntheticParams { noise: f32::INFINITY, ..d.clone() }),
        ];
        for (field, p) in cases {
            let err = p.validate().expect_err(field);
            assert!(err.starts_with(field), "{field}: {err}");
        }
    }

    #[test]
    fn invalid_params_are_clamped_not_panicked_on() {
        let p = SyntheticParams {
            classes: 0,
            size: 7,
            min_objects: 0,
            max_objects: 99,
            context_prob: f32::NAN,
            min_object_scale: 5.0,
            max_object_scale: -1.0,
            min_mark_fraction: f32::NAN,
            max_mark_fraction: 0.0,
            max_overlap: 9.0,
            min_contrast: -3.0,
            body_texture: f32::NAN,
            noise: 1e9,
        };
        assert!(p.sanitized().validate().is_ok());
        let s = generate(&p, 0, 0);
        assert_eq!((s.width, s.height, s.mask.len()), (32, 32, 32 * 32));
        assert!(s.labels.iter().all(|&c| c == 1));
    }

    #[test]
    fn class_names_are_distinct_and_cover_the_classes() {
        assert_eq!(class_names(6).len(), 6);
        assert_eq!(class_names(40).len(), 20);
        let mut all = class_names(20);
        assert_eq!(all[0], "red_white_checker");
        all.sort();
        all.dedup();
        assert_eq!(all.len(), 20);
        // Marks are distinct as (colour pair, pattern) too, not only by name.
        let mut styles: Vec<_> = (1..=20).map(mark_style).collect();
        styles.sort();
        styles.dedup();
        assert_eq!(styles.len(), 20);
    }

    #[test]
    fn generation_is_a_pure_function_of_seed_and_index() {
        let p = SyntheticParams::default();
        let a = generate(&p, 42, 7);
        assert_eq!(a, generate(&p, 42, 7));
        let p2 = p.clone();
        let b = std::thread::spawn(move || generate(&p2, 42, 7)).join().unwrap();
        assert_eq!(a, b);
        assert_ne!(a.rgb, generate(&p, 42, 8).rgb);
        assert_ne!(a.rgb, generate(&p, 43, 7).rgb);
        assert_eq!((a.width, a.height), (128, 128));
        assert_eq!(a.rgb.len(), 128 * 128 * 3);
        assert_eq!(a.mask.len(), 128 * 128);
        let big = generate(&SyntheticParams { size: 300, ..p }, 1, 1);
        assert_eq!((big.rgb.len(), big.mask.len()), (300 * 300 * 3, 300 * 300));
    }

    /// Pins the bytes of the default dataset: a change here means every stored copy of
    /// `synthetic` differs from a fresh one, so bump the key's version tag with it.
    #[test]
    fn default_dataset_is_pinned() {
        let p = SyntheticParams::default();
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for i in 0..4 {
            let s = generate(&p, 0, i);
            for &b in s.rgb.iter().chain(&s.mask) {
                h = (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
            }
        }
        assert_eq!(h, 7518249529652052922);
    }

    #[test]
    fn labels_are_the_classes_in_the_mask() {
        for classes in [1u16, 6, 20] {
            let p = SyntheticParams { classes, ..Default::default() };
            for i in 0..300 {
                let layout = compose(&p, 5, i);
                let s = render(&p, &layout);
                assert_eq!(s.labels, classes_in(&s.mask), "image {i}");
                assert!(!s.labels.is_empty() && s.labels.iter().all(|&c| (1..=classes).contains(&c)));
                let n = layout.objects.len() as u32;
                assert!((p.min_objects..=p.max_objects).contains(&n), "image {i}: {n} objects");
                // Every object stays visible, so its class is labelled.
                assert!(layout.objects.iter().all(|o| s.labels.contains(&o.class)));
            }
        }
    }

    #[test]
    fn every_mark_is_visible_in_its_class_region() {
        let p = SyntheticParams::default();
        let tol = p.noise.ceil() as i32 + 1;
        let mut marks = 0;
        for i in 0..400 {
            let layout = compose(&p, 11, i);
            let s = render(&p, &layout);
            for o in &layout.objects {
                let (pair, _) = mark_style(o.class);
                let (_, a, _, b) = MARK_PAIRS[pair];
                let (mut seen_a, mut seen_b) = (false, false);
                for (x, y) in mark_pixels(o) {
                    let idx = (y * s.width + x) as usize;
                    assert_eq!(u16::from(s.mask[idx]), o.class, "image {i}: mark pixel ({x},{y})");
                    let px = &s.rgb[3 * idx..3 * idx + 3];
                    let near = |c: [f32; 3]| (0..3).all(|k| (i32::from(px[k]) - c[k] as i32).abs() <= tol);
                    assert!(near(a) || near(b), "image {i}: pixel {px:?} is not a mark colour");
                    seen_a |= near(a);
                    seen_b |= near(b);
                }
                // Both colours of the pattern show, so the mark is a pattern, not a blob.
                assert!(seen_a && seen_b, "image {i}: class {} mark shows one colour", o.class);
                marks += 1;
            }
        }
        assert!(marks > 400);
    }

    #[test]
    fn mark_area_fraction_is_in_range() {
        for (lo, hi) in [(0.10f32, 0.20f32), (0.05, 0.08), (0.25, 0.3)] {
            let p = SyntheticParams { min_mark_fraction: lo, max_mark_fraction: hi, ..Default::default() };
            let mut fractions = Vec::new();
            for i in 0..300 {
                for o in compose(&p, 3, i).objects {
                    let area = o.raster.inside.iter().filter(|&&b| b).count() as f32;
                    let f = mark_pixels(&o).len() as f32 / area;
                    assert!(f >= lo && f <= hi, "mark fraction {f} outside {lo}..={hi}");
                    fractions.push(f);
                }
            }
            // The range is used, not just one end of it.
            let mean = fractions.iter().sum::<f32>() / fractions.len() as f32;
            assert!((mean - 0.5 * (lo + hi)).abs() < 0.2 * (hi - lo), "mean {mean}");
        }
    }

    #[test]
    fn context_textures_follow_their_classes() {
        let p = SyntheticParams::default();
        let prob = f64::from(p.context_prob);
        let n = 2000;
        let c_max = usize::from(p.classes);
        let mut context_images = 0.0;
        // Per class: images holding it, how many of them show T_c, and the expected count
        // sum of prob / K over those images (the texture is that of one of K present classes).
        let mut with = vec![0.0f64; c_max + 1];
        let mut shown = vec![0.0f64; c_max + 1];
        let mut expected = vec![0.0f64; c_max + 1];
        let mut variance = vec![0.0f64; c_max + 1];
        let (mut single, mut single_shown) = (vec![0.0f64; c_max + 1], vec![0.0f64; c_max + 1]);
        for i in 0..n {
            let layout = compose(&p, 21, i);
            let s = render(&p, &layout);
            // The texture behind the objects is identified from pixels: the nearest of all
            // texture mean colours to the mean background colour.
            let mut sum = [0.0f64; 3];
            let mut count = 0.0;
            for (px, _) in s.rgb.chunks_exact(3).zip(&s.mask).filter(|(_, &m)| m == 0) {
                for k in 0..3 {
                    sum[k] += f64::from(px[k]);
                }
                count += 1.0;
            }
            let mean = sum.map(|v| v / count);
            let nearest = (0..TEXTURE_MEANS.len())
                .min_by(|&a, &b| {
                    let d = |t: usize| (0..3).map(|k| (mean[k] - f64::from(TEXTURE_MEANS[t][k])).powi(2)).sum::<f64>();
                    d(a).total_cmp(&d(b))
                })
                .unwrap();
            assert_eq!(nearest, layout.background.texture_id(), "image {i}");
            let k = s.labels.len() as f64;
            if let Background::Context(c) = layout.background {
                assert!(s.labels.contains(&c), "image {i}: T_{c} without class {c}");
                context_images += 1.0;
            }
            for &c in &s.labels {
                let c = usize::from(c);
                let hit = f64::from(u8::from(layout.background == Background::Context(c as u16)));
                with[c] += 1.0;
                shown[c] += hit;
                expected[c] += prob / k;
                variance[c] += prob / k * (1.0 - prob / k);
                if s.labels.len() == 1 {
                    single[c] += 1.0;
                    single_shown[c] += hit;
                }
            }
        }
        let nf = n as f64;
        let sd = (prob * (1.0 - prob) / nf).sqrt();
        assert!((context_images / nf - prob).abs() < 4.0 * sd, "context fraction {}", context_images / nf);
        for c in 1..=c_max {
            assert!(with[c] > 200.0, "class {c} in only {} images", with[c]);
            let tol = 4.0 * variance[c].sqrt();
            assert!((shown[c] - expected[c]).abs() < tol, "class {c}: T_c in {} images, expected {}", shown[c], expected[c]);
            // Images with c alone show T_c with probability context_prob itself.
            let frac = single_shown[c] / single[c];
            let sd1 = (prob * (1.0 - prob) / single[c]).sqrt();
            assert!((frac - prob).abs() < 4.0 * sd1, "class {c}: alone, T_c fraction {frac}");
        }
    }

    #[test]
    fn context_prob_extremes() {
        for (prob, want) in [(0.0f32, false), (1.0, true)] {
            let p = SyntheticParams { context_prob: prob, ..Default::default() };
            for i in 0..100 {
                let is_context = matches!(compose(&p, 2, i).background, Background::Context(_));
                assert_eq!(is_context, want);
            }
        }
    }

    #[test]
    fn object_boundaries_are_colour_edges() {
        let p = SyntheticParams::default();
        let (mut edge, mut edge_n, mut flat, mut flat_n) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
        let mut weak_images = 0;
        for i in 0..200 {
            let s = generate(&p, 9, i);
            let w = s.width as usize;
            let (mut e, mut en) = (0.0, 0.0);
            for y in 0..w {
                for x in 0..w {
                    let a = y * w + x;
                    for b in [a + 1, a + w] {
                        if (b == a + 1 && x + 1 == w) || b >= w * w {
                            continue;
                        }
                        let d: f64 = (0..3).map(|k| (f64::from(s.rgb[3 * a + k]) - f64::from(s.rgb[3 * b + k])).abs()).sum();
                        if s.mask[a] != s.mask[b] {
                            e += d;
                            en += 1.0;
                        } else {
                            flat += d;
                            flat_n += 1.0;
                        }
                    }
                }
            }
            edge += e;
            edge_n += en;
            weak_images += usize::from(e / en < 60.0);
        }
        let (edge, flat) = (edge / edge_n, flat / flat_n);
        assert!(edge > 4.0 * flat, "boundary |dRGB| {edge:.1} vs inside {flat:.1}");
        assert!(weak_images <= 2, "{weak_images} images with weak boundaries");
    }

    #[test]
    fn bodies_are_class_agnostic() {
        // Without context textures the body colour cannot depend on the class at all:
        // the mean base colour of each class's bodies agrees within sampling error.
        let p = SyntheticParams { context_prob: 0.0, ..Default::default() };
        let c_max = usize::from(p.classes);
        let mut sum = vec![[0.0f64; 3]; c_max + 1];
        let mut count = vec![0.0f64; c_max + 1];
        for i in 0..2000 {
            let layout = compose(&p, 4, i);
            for (o, b) in layout.objects.iter().zip(&layout.bodies) {
                for (acc, &v) in sum[usize::from(o.class)].iter_mut().zip(&b.base) {
                    *acc += f64::from(v);
                }
                count[usize::from(o.class)] += 1.0;
            }
        }
        let all: f64 = count.iter().sum();
        let overall: Vec<f64> = (0..3).map(|k| sum.iter().map(|s| s[k]).sum::<f64>() / all).collect();
        // Channel s.d. is at most that of a uniform on BODY_CHANNEL_RANGE (205 / sqrt 12).
        let sd = 205.0 / 12f64.sqrt();
        for c in 1..=c_max {
            for k in 0..3 {
                let m = sum[c][k] / count[c];
                assert!((m - overall[k]).abs() < 4.0 * sd / count[c].sqrt(), "class {c} channel {k}: {m:.1} vs {:.1}", overall[k]);
            }
        }
    }

    #[test]
    #[ignore = "timing, not a check: cargo test --release -- --ignored --nocapture speed"]
    fn speed() {
        for (size, n) in [(128u32, 3000u64), (512, 200)] {
            let p = SyntheticParams { size, ..Default::default() };
            let t = Instant::now();
            let bytes: usize = (0..n).map(|i| generate(&p, 2, i).rgb.len()).sum();
            let per = t.elapsed().as_secs_f64() / n as f64;
            println!("{size}px: {:.1} us per image ({bytes} bytes)", per * 1e6);
        }
    }
}

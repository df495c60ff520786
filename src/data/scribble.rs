//! Scribble labels (docs/datasets.md, "Scribbles"): sparse label maps with a class id on the
//! strokes and 255 elsewhere, stored as pseudo-label datasets so that `train seg` joins them by
//! id. Two sources: ScribbleSup's XML annotations (Lin et al., CVPR 2016), rasterised; and
//! strokes drawn from ground-truth masks by a deterministic random walk, where no scribbles
//! exist.

use std::collections::VecDeque;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

use super::sampler::mix_seed;

/// The label of a pixel no stroke covers.
pub const UNLABELLED: u8 = 255;

/// A stroke: its class id (0 background, 1..=C) and its points (x, y) in pixels.
#[derive(Debug, Clone, PartialEq)]
pub struct Stroke {
    pub class: u8,
    pub points: Vec<(f64, f64)>,
}

/// Draws `strokes` in order onto a `width`×`height` map of 255 with a round brush of diameter
/// `brush` pixels: a pixel is on a stroke when its centre lies within `brush / 2` of one of the
/// stroke's segments (or of its only point). A later stroke over an earlier one wins.
pub fn rasterise(strokes: &[Stroke], width: u32, height: u32, brush: f64) -> Vec<u8> {
    let mut map = vec![UNLABELLED; width as usize * height as usize];
    for stroke in strokes {
        draw_polyline(&mut map, width, &stroke.points, brush / 2.0, stroke.class, |_| true);
    }
    map
}

/// Labels with `class` the pixels within `radius` of the polyline `points` for which `allowed(pixel
/// index)` holds.
fn draw_polyline(map: &mut [u8], width: u32, points: &[(f64, f64)], radius: f64, class: u8, allowed: impl Fn(usize) -> bool) {
    let height = map.len() / width.max(1) as usize;
    let segments: Vec<((f64, f64), (f64, f64))> = match points {
        [] => return,
        [p] => vec![(*p, *p)],
        _ => points.windows(2).map(|w| (w[0], w[1])).collect(),
    };
    for (a, b) in segments {
        let columns = pixel_range(a.0.min(b.0) - radius, a.0.max(b.0) + radius, width as usize);
        for y in pixel_range(a.1.min(b.1) - radius, a.1.max(b.1) + radius, height) {
            for x in columns.clone() {
                let index = y * width as usize + x;
                if distance_to_segment((x as f64, y as f64), a, b) <= radius && allowed(index) {
                    map[index] = class;
                }
            }
        }
    }
}

/// The pixel indices in [lo, hi] that lie on an axis of `size` pixels.
fn pixel_range(lo: f64, hi: f64, size: usize) -> std::ops::Range<usize> {
    let start = lo.ceil().max(0.0);
    let end = (hi.floor() + 1.0).min(size as f64);
    if end > start {
        start as usize..end as usize
    } else {
        0..0
    }
}

/// The Euclidean distance from `p` to the segment `a`–`b`.
fn distance_to_segment(p: (f64, f64), a: (f64, f64), b: (f64, f64)) -> f64 {
    let (dx, dy) = (b.0 - a.0, b.1 - a.1);
    let length2 = dx * dx + dy * dy;
    let t = if length2 > 0.0 { (((p.0 - a.0) * dx + (p.1 - a.1) * dy) / length2).clamp(0.0, 1.0) } else { 0.0 };
    ((p.0 - a.0 - t * dx).powi(2) + (p.1 - a.1 - t * dy).powi(2)).sqrt()
}

/// The strokes of one ScribbleSup annotation file: `<annotation>` holding a `<polygon>` per
/// stroke, each with its class name in `<tag>` and its points as `<point><X>x</X><Y>y</Y></point>`
/// (an optional `<size>` with `<width>` and `<height>` is checked against the image's).
/// `classes` are the dataset's class names, background first. An error names the polygon or
/// point at fault.
pub fn parse_scribblesup(xml: &str, classes: &[String], image_size: (u32, u32)) -> Result<Vec<Stroke>, String> {
    let document = roxmltree::Document::parse(xml).map_err(|e| format!("not XML: {e}"))?;
    let root = document.root_element();
    if !root.has_tag_name("annotation") {
        return Err(format!("the root element is <{}>, not <annotation>", root.tag_name().name()));
    }
    if let Some(size) = root.children().find(|c| c.has_tag_name("size")) {
        let side = |name: &str| child_text(size, name).map(|t| t.parse::<u32>().map_err(|_| format!("<size><{name}> is {t:?}, not a whole number")));
        if let (Some(width), Some(height)) = (side("width"), side("height")) {
            let declared = (width?, height?);
            if declared != image_size {
                return Err(format!("<size> says {}x{} but the image is {}x{}", declared.0, declared.1, image_size.0, image_size.1));
            }
        }
    }
    let mut strokes = Vec::new();
    for (p, polygon) in root.children().filter(|c| c.has_tag_name("polygon")).enumerate() {
        let tag = child_text(polygon, "tag").ok_or_else(|| format!("polygon {p} has no <tag>"))?;
        let class = classes
            .iter()
            .position(|c| c == tag)
            .ok_or_else(|| format!("polygon {p}: unknown class tag {tag:?} (the dataset's classes: {})", classes.join(", ")))?;
        let mut points = Vec::new();
        for (i, point) in polygon.children().filter(|c| c.has_tag_name("point")).enumerate() {
            let coordinate = |name: &str| {
                let text = child_text(point, name).ok_or_else(|| format!("polygon {p} point {i} has no <{name}>"))?;
                text.parse::<f64>().ok().filter(|v| v.is_finite()).ok_or_else(|| format!("polygon {p} point {i}: <{name}> is {text:?}, not a number"))
            };
            points.push((coordinate("X")?, coordinate("Y")?));
        }
        strokes.push(Stroke { class: class as u8, points });
    }
    Ok(strokes)
}

/// The trimmed text of `node`'s first child element `name`.
fn child_text<'a>(node: roxmltree::Node<'a, '_>, name: &str) -> Option<&'a str> {
    node.children().find(|c| c.has_tag_name(name)).and_then(|c| c.text()).map(str::trim)
}

/// How `data scribbles --from-masks` draws strokes (docs/datasets.md, "Scribbles").
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct FromMasks {
    /// Brush diameter in pixels.
    pub brush: f64,
    /// Steps of a region's walk, as a multiple of the square root of its area.
    pub length: f64,
    /// The walk stays on pixels at least this share of the region's largest inner distance
    /// from its border (at least 1 pixel).
    pub erosion: f64,
    /// Regions smaller than this many pixels get no stroke.
    pub min_area: usize,
    pub seed: u64,
}

impl Default for FromMasks {
    fn default() -> Self {
        FromMasks { brush: 3.0, length: 1.0, erosion: 0.3, min_area: 16, seed: 0 }
    }
}

impl FromMasks {
    /// An error names the option at fault.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.brush > 0.0 && self.brush.is_finite()) {
            return Err(format!("--brush must be a positive number of pixels, not {}", self.brush));
        }
        if !(self.length > 0.0 && self.length.is_finite()) {
            return Err(format!("--length must be a positive number, not {}", self.length));
        }
        if !(0.0..=1.0).contains(&self.erosion) {
            return Err(format!("--erosion must lie in [0, 1], not {}", self.erosion));
        }
        Ok(())
    }
}

/// The eight neighbours, in the order the walk's headings index them (opposite = +4 mod 8).
const DIRECTIONS: [(i64, i64); 8] = [(1, 0), (1, 1), (0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1)];
/// The chance that the walk keeps its heading when it can.
const KEEP_HEADING: f64 = 0.8;

/// Scribbles drawn from a ground-truth `mask` (0..=C, 255 ignored; `width`×`height`): one
/// stroke per 8-connected region of one class (background included) of at least `min_area`
/// pixels: a random walk with momentum from the region's innermost pixel over its eroded core,
/// drawn with the brush and clipped to the region, so every labelled pixel carries its true
/// class. The walk's draws come from `seed`, the image's id and the region's index: the same
/// input gives the same scribbles.
pub fn scribbles_from_mask(mask: &[u8], width: u32, height: u32, id: &str, params: &FromMasks) -> Vec<u8> {
    let (w, h) = (width as usize, height as usize);
    let regions = Regions::of(mask, w, h);
    let mut map = vec![UNLABELLED; mask.len()];
    for (index, pixels) in regions.members.iter().enumerate() {
        if pixels.len() < params.min_area.max(1) {
            continue;
        }
        let inner = regions.inner_distance(index as u32, pixels, w, h);
        let deepest = pixels.iter().zip(&inner).fold((pixels[0], 0), |best, (&p, &d)| if d > best.1 { (p, d) } else { best });
        let core_depth = ((params.erosion * f64::from(deepest.1)).ceil() as u32).max(1);
        let depth_of = |p: usize| pixels.binary_search(&p).ok().map(|k| inner[k]);
        let steps = (params.length * (pixels.len() as f64).sqrt()).ceil() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(mix_seed(&[params.seed, id_hash(id), index as u64]));
        let path = walk(deepest.0, steps, w, h, |p| depth_of(p).is_some_and(|d| d >= core_depth), &mut rng);
        let points: Vec<(f64, f64)> = path.iter().map(|&p| ((p % w) as f64, (p / w) as f64)).collect();
        let region = index as u32;
        draw_polyline(&mut map, width, &points, params.brush / 2.0, mask[deepest.0], |p| regions.of_pixel[p] == region);
    }
    map
}

/// A walk of at most `steps` moves from `start` over the pixels where `inside` holds: it keeps
/// its heading with probability [`KEEP_HEADING`] when the next pixel is inside, else turns to a
/// random inside neighbour other than straight back (back only when nothing else is left), and
/// stops where no neighbour is inside.
fn walk(start: usize, steps: usize, w: usize, h: usize, inside: impl Fn(usize) -> bool, rng: &mut ChaCha8Rng) -> Vec<usize> {
    let next = |p: usize, d: usize| {
        let (x, y) = ((p % w) as i64 + DIRECTIONS[d].0, (p / w) as i64 + DIRECTIONS[d].1);
        (x >= 0 && y >= 0 && (x as usize) < w && (y as usize) < h).then(|| y as usize * w + x as usize).filter(|&q| inside(q))
    };
    let mut path = vec![start];
    let (mut at, mut heading) = (start, rng.random_range(0..8));
    for _ in 0..steps {
        let keep = rng.random::<f64>() < KEEP_HEADING;
        let step = match next(at, heading).filter(|_| keep) {
            Some(q) => Some((q, heading)),
            None => {
                let turns: Vec<usize> = (0..8).filter(|&d| d != (heading + 4) % 8 && next(at, d).is_some()).collect();
                let turns = if turns.is_empty() { vec![(heading + 4) % 8] } else { turns };
                let d = turns[rng.random_range(0..turns.len())];
                next(at, d).map(|q| (q, d))
            }
        };
        let Some((q, d)) = step else { break };
        (at, heading) = (q, d);
        path.push(at);
    }
    path
}

/// FNV-1a of an id: the walk's draws depend on the image, not on its position in a shard.
fn id_hash(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |acc, b| (acc ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// The 8-connected regions of equal label (255 excluded) of a mask.
struct Regions {
    /// Each pixel's region, u32::MAX for 255.
    of_pixel: Vec<u32>,
    /// Each region's pixels, ascending.
    members: Vec<Vec<usize>>,
}

impl Regions {
    fn of(mask: &[u8], w: usize, h: usize) -> Regions {
        let mut of_pixel = vec![u32::MAX; mask.len()];
        let mut members = Vec::new();
        for seed in 0..mask.len() {
            if mask[seed] == UNLABELLED || of_pixel[seed] != u32::MAX {
                continue;
            }
            let region = members.len() as u32;
            let mut pixels = vec![seed];
            of_pixel[seed] = region;
            let mut queue = VecDeque::from([seed]);
            while let Some(p) = queue.pop_front() {
                for q in neighbours(p, w, h) {
                    if of_pixel[q] == u32::MAX && mask[q] == mask[seed] {
                        of_pixel[q] = region;
                        pixels.push(q);
                        queue.push_back(q);
                    }
                }
            }
            pixels.sort_unstable();
            members.push(pixels);
        }
        Regions { of_pixel, members }
    }

    /// The chessboard distance of each of `pixels` (region `region`) to the nearest pixel
    /// outside it or off the image: 1 on its border.
    fn inner_distance(&self, region: u32, pixels: &[usize], w: usize, h: usize) -> Vec<u32> {
        let position = |p: usize| pixels.binary_search(&p).expect("a pixel of the region");
        let mut depth = vec![0u32; pixels.len()];
        let mut queue = VecDeque::new();
        for (k, &p) in pixels.iter().enumerate() {
            let (x, y) = (p % w, p / w);
            let on_edge = x == 0 || y == 0 || x + 1 == w || y + 1 == h;
            if on_edge || neighbours(p, w, h).any(|q| self.of_pixel[q] != region) {
                depth[k] = 1;
                queue.push_back(p);
            }
        }
        while let Some(p) = queue.pop_front() {
            let d = depth[position(p)];
            for q in neighbours(p, w, h) {
                if self.of_pixel[q] == region && depth[position(q)] == 0 {
                    depth[position(q)] = d + 1;
                    queue.push_back(q);
                }
            }
        }
        depth
    }
}

/// The in-image 8-neighbours of pixel `p`.
fn neighbours(p: usize, w: usize, h: usize) -> impl Iterator<Item = usize> {
    let (x, y) = ((p % w) as i64, (p / w) as i64);
    DIRECTIONS.iter().filter_map(move |&(dx, dy)| {
        let (nx, ny) = (x + dx, y + dy);
        (nx >= 0 && ny >= 0 && (nx as usize) < w && (ny as usize) < h).then(|| ny as usize * w + nx as usize)
    })
}

/// The share of pixels a scribble map labels.
pub fn labelled_share(map: &[u8]) -> f64 {
    map.iter().filter(|&&v| v != UNLABELLED).count() as f64 / map.len().max(1) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn classes() -> Vec<String> {
        ["background", "aeroplane", "bicycle"].iter().map(|c| c.to_string()).collect()
    }

    /// A horizontal stroke of brush 3 from (1, 2) to (5, 2) covers rows 1–3 of columns 1–5
    /// (centres within 1.5 of the segment: (0, 2) at distance 1 too, (0, 1) at √2 ≈ 1.41 too,
    /// (0, 0) at √5 not); a later stroke overwrites.
    #[test]
    fn strokes_rasterise_with_a_round_brush() {
        let strokes = [Stroke { class: 1, points: vec![(1.0, 2.0), (5.0, 2.0)] }, Stroke { class: 2, points: vec![(3.0, 2.0)] }];
        let map = rasterise(&strokes, 8, 5, 3.0);
        let at = |x: usize, y: usize| map[y * 8 + x];
        for x in 0..=6 {
            for y in 1..=3 {
                let expected = if (x as f64 - 3.0).hypot(y as f64 - 2.0) <= 1.5 { 2 } else { 1 };
                assert_eq!(at(x, y), expected, "({x}, {y})");
            }
            assert_eq!(at(x, 0), UNLABELLED, "({x}, 0)");
            assert_eq!(at(x, 4), UNLABELLED, "({x}, 4)");
        }
        assert_eq!(at(7, 2), UNLABELLED);
        // Points off the image are clipped, not an error.
        let off = rasterise(&[Stroke { class: 1, points: vec![(-5.0, -5.0), (20.0, 20.0)] }], 4, 4, 1.0);
        assert_eq!(off.iter().filter(|&&v| v == 1).count(), 4, "the diagonal's four pixels");
    }

    #[test]
    fn scribblesup_files_parse_and_bad_ones_are_named() {
        let xml = "<annotation><filename>2007_000032.jpg</filename><size><width>8</width><height>5</height></size>\
            <polygon><tag>aeroplane</tag><point><X>1</X><Y>2</Y></point><point><X>5</X><Y>2</Y></point></polygon>\
            <polygon><tag>background</tag><point><X>0</X><Y>4</Y></point></polygon></annotation>";
        let strokes = parse_scribblesup(xml, &classes(), (8, 5)).unwrap();
        assert_eq!(strokes, [Stroke { class: 1, points: vec![(1.0, 2.0), (5.0, 2.0)] }, Stroke { class: 0, points: vec![(0.0, 4.0)] }]);
        let size = parse_scribblesup(xml, &classes(), (9, 5)).unwrap_err();
        assert!(size.contains("8x5") && size.contains("9x5"), "{size}");
        let unknown = parse_scribblesup("<annotation><polygon><tag>horse</tag></polygon></annotation>", &classes(), (8, 5)).unwrap_err();
        assert!(unknown.contains("polygon 0") && unknown.contains("\"horse\""), "{unknown}");
        let point =
            parse_scribblesup("<annotation><polygon><tag>bicycle</tag><point><X>1</X><Y>y</Y></point></polygon></annotation>", &classes(), (8, 5)).unwrap_err();
        assert!(point.contains("polygon 0 point 0") && point.contains("<Y>"), "{point}");
        assert!(parse_scribblesup("<other/>", &classes(), (8, 5)).unwrap_err().contains("<other>"));
    }

    /// A 40×30 mask: background with a 16×12 object of class 2 and a 3×3 one of class 1 (under
    /// min_area). Every region of enough pixels gets a stroke of its own class, nothing is
    /// drawn outside its region, the small object gets none, and the draw is deterministic by
    /// seed and id.
    #[test]
    fn strokes_from_masks_stay_inside_their_regions() {
        let (w, h) = (40usize, 30usize);
        let mut mask = vec![0u8; w * h];
        for y in 8..20 {
            for x in 10..26 {
                mask[y * w + x] = 2;
            }
        }
        for y in 2..5 {
            for x in 32..35 {
                mask[y * w + x] = 1;
            }
        }
        mask[0] = UNLABELLED;
        let params = FromMasks::default();
        let map = scribbles_from_mask(&mask, w as u32, h as u32, "a", &params);
        for (p, &label) in map.iter().enumerate() {
            if label != UNLABELLED {
                assert_eq!(label, mask[p], "pixel {p} labelled {label} in a region of {}", mask[p]);
            }
        }
        let count = |class: u8| map.iter().filter(|&&v| v == class).count();
        assert!(count(2) >= 12, "the object's stroke: {} pixels", count(2));
        assert!(count(0) >= 30, "the background's stroke: {} pixels", count(0));
        assert_eq!(count(1), 0, "a 9-pixel region is under min_area");
        // With erosion ½ the object's stroke keeps off its border: the core is half its depth (6),
        // 3 pixels (depth 1 is the border), and the brush reaches 1.5 further, so no labelled
        // object pixel is on its outer ring.
        let inner = scribbles_from_mask(&mask, w as u32, h as u32, "a", &FromMasks { erosion: 0.5, ..params });
        for y in 8..20 {
            for x in 10..26 {
                if y == 8 || y == 19 || x == 10 || x == 25 {
                    assert_ne!(inner[y * w + x], 2, "({x}, {y}) is on the object's border");
                }
            }
        }
        assert_eq!(map, scribbles_from_mask(&mask, w as u32, h as u32, "a", &params));
        let other_id = scribbles_from_mask(&mask, w as u32, h as u32, "b", &params);
        let other_seed = scribbles_from_mask(&mask, w as u32, h as u32, "a", &FromMasks { seed: 1, ..params });
        assert!(other_id != map || other_seed != map, "the draw depends on the id and the seed");
        let share = labelled_share(&map);
        assert!(share > 0.02 && share < 0.5, "{share}");
        // Longer walks label more.
        let longer = scribbles_from_mask(&mask, w as u32, h as u32, "a", &FromMasks { length: 4.0, ..params });
        assert!(labelled_share(&longer) > share);
    }

    /// The walk's inner distance: a 5×5 square in a larger background is 1 on its ring, 2 inside
    /// it and 3 at the centre.
    #[test]
    fn inner_distance_is_the_chessboard_depth() {
        let (w, h) = (9usize, 9usize);
        let mut mask = vec![0u8; w * h];
        for y in 2..7 {
            for x in 2..7 {
                mask[y * w + x] = 1;
            }
        }
        let regions = Regions::of(&mask, w, h);
        assert_eq!(regions.members.len(), 2);
        let square = regions.of_pixel[4 * w + 4];
        let pixels = &regions.members[square as usize];
        let depth = regions.inner_distance(square, pixels, w, h);
        let at = |x: usize, y: usize| depth[pixels.binary_search(&(y * w + x)).unwrap()];
        assert_eq!((at(2, 2), at(3, 3), at(4, 4), at(6, 4), at(5, 4)), (1, 2, 3, 1, 2));
    }
}

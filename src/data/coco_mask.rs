//! COCO segmentation decoding and rasterisation, bit-exact with pycocotools.
//!
//! COCO stores an object's shape either as polygons or as a run-length encoding (RLE),
//! the latter uncompressed (a list of run lengths) or compressed (pycocotools' ASCII string).
//! pycocotools' C code (`maskApi.c`) is the de-facto definition of which pixels a polygon
//! covers, so [`Rle::from_polygon`] ports `rleFrPoly` step by step rather than using a
//! generic scan-line fill: any other rasteriser disagrees with the reference on edge pixels.

use thiserror::Error;

/// Polygons are upsampled by this factor before their boundary is traced (as in `rleFrPoly`).
const SCALE: f64 = 5.0;

/// Largest accepted polygon coordinate magnitude. Far beyond any real image, yet small enough
/// that the upsampled integer arithmetic cannot overflow (where the C code would be undefined)
/// and that tracing a polygon's boundary stays fast.
const MAX_COORD: f64 = 1.0e7;

/// A compressed run needs at most 7 characters of 5 bits: the delta of two u32 runs fits in 34
/// signed bits. Longer values can only come from corrupt strings.
const MAX_CHARS_PER_VALUE: usize = 7;

/// What can be wrong with a segmentation.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum CocoMaskError {
    /// The runs of an RLE do not cover the mask exactly.
    #[error("RLE counts sum to {sum} but the mask has {height}×{width} = {pixels} pixels")]
    CountsSum {
        /// Sum of the runs.
        sum: u64,
        /// Mask height.
        height: u32,
        /// Mask width.
        width: u32,
        /// `height * width`.
        pixels: u64,
    },
    /// A compressed RLE string contains a byte outside pycocotools' alphabet.
    #[error("compressed RLE string has byte {byte:#04x} at offset {offset}, outside the alphabet '0'..='o' (ASCII 48..=111)")]
    InvalidChar {
        /// Byte offset in the string.
        offset: usize,
        /// The offending byte.
        byte: u8,
    },
    /// A compressed RLE string ends in the middle of a value.
    #[error("compressed RLE string ends inside run #{index} (its last character has the continuation bit set)")]
    TruncatedString {
        /// Index of the unfinished run.
        index: usize,
    },
    /// A compressed value spans more characters than any 32-bit run can need.
    #[error("compressed RLE run #{index} spans more than {MAX_CHARS_PER_VALUE} characters")]
    ValueTooLong {
        /// Index of the run.
        index: usize,
    },
    /// A compressed run decodes to a negative length or one beyond 32 bits.
    #[error("compressed RLE run #{index} decodes to {value}, outside 0..=4294967295")]
    RunOutOfRange {
        /// Index of the run.
        index: usize,
        /// The decoded (delta-resolved) value.
        value: i64,
    },
    /// A polygon's coordinate list cannot be split into (x, y) pairs.
    #[error("polygon has an odd number of coordinates ({len}); it must be x0, y0, x1, y1, ...")]
    OddPolygon {
        /// Number of coordinates.
        len: usize,
    },
    /// A polygon with fewer than 3 vertices has no area.
    #[error("polygon has {points} points; at least 3 are needed")]
    TooFewPoints {
        /// Number of (x, y) points.
        points: usize,
    },
    /// A polygon coordinate is not finite or absurdly far from any image.
    #[error("polygon coordinate #{index} is {value}, not a finite number within ±{MAX_COORD}")]
    BadCoordinate {
        /// Index in the flat coordinate list.
        index: usize,
        /// The offending value.
        value: f64,
    },
    /// COCO run lengths are 32-bit, so larger images cannot be encoded.
    #[error("image {height}×{width} has more than 4294967295 pixels, too many for COCO's 32-bit runs")]
    ImageTooLarge {
        /// Image height.
        height: u32,
        /// Image width.
        width: u32,
    },
    /// The semantic mask buffer could not be allocated.
    #[error("cannot allocate a {height}×{width} mask")]
    Allocation {
        /// Image height.
        height: u32,
        /// Image width.
        width: u32,
    },
    /// An RLE annotation was made for an image of another size.
    #[error("RLE is {rle_height}×{rle_width} (height×width) but the image is {height}×{width}")]
    SizeMismatch {
        /// Height stored with the RLE.
        rle_height: u32,
        /// Width stored with the RLE.
        rle_width: u32,
        /// Image height.
        height: u32,
        /// Image width.
        width: u32,
    },
    /// A polygon segmentation without any polygon.
    #[error("polygon segmentation has no polygons")]
    NoPolygons,
    /// An error in one annotation of [`semantic_mask`], with its position in the slice.
    #[error("annotation #{index}: {cause}")]
    Annotation {
        /// Index of the annotation in the slice.
        index: usize,
        /// What is wrong with it.
        cause: Box<CocoMaskError>,
    },
}

/// A binary mask as COCO run-length encoding: column-major (Fortran order) runs that alternate
/// 0s and 1s, starting with a run of 0s (which may be 0 long).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rle {
    /// Mask height in pixels.
    pub height: u32,
    /// Mask width in pixels.
    pub width: u32,
    /// Run lengths, alternately background and foreground, summing to `height * width`.
    pub counts: Vec<u32>,
}

impl Rle {
    /// An RLE from uncompressed COCO counts; errors unless they sum to `height * width`.
    pub fn from_counts(height: u32, width: u32, counts: Vec<u32>) -> Result<Rle, CocoMaskError> {
        check_counts(height, width, &counts)?;
        Ok(Rle { height, width, counts })
    }

    /// An RLE from pycocotools' compressed string (`rleFrString`): each run is a signed value
    /// in 5-bit groups, least significant first, one ASCII character (48 + bits) per group with
    /// 0x20 as the continuation bit and 0x10 of the last group as the sign; from the fourth run
    /// (index 3) on, the value is the difference to the run two places earlier. Errors on bytes outside the alphabet, truncation, runs outside
    /// 32 bits and counts that do not sum to `height * width`.
    pub fn from_compressed(height: u32, width: u32, counts: &str) -> Result<Rle, CocoMaskError> {
        let mut runs: Vec<u32> = Vec::with_capacity(counts.len());
        let mut value: i64 = 0;
        let mut groups = 0;
        for (offset, &byte) in counts.as_bytes().iter().enumerate() {
            if !(48..=111).contains(&byte) {
                return Err(CocoMaskError::InvalidChar { offset, byte });
            }
            let index = runs.len();
            if groups == MAX_CHARS_PER_VALUE {
                return Err(CocoMaskError::ValueTooLong { index });
            }
            let c = i64::from(byte - 48);
            value |= (c & 0x1f) << (5 * groups);
            groups += 1;
            if c & 0x20 != 0 {
                continue;
            }
            if c & 0x10 != 0 {
                // The last group's top bit is the sign: extend it.
                value |= -1i64 << (5 * groups);
            }
            if index > 2 {
                value += i64::from(runs[index - 2]);
            }
            let run = u32::try_from(value).map_err(|_| CocoMaskError::RunOutOfRange { index, value })?;
            runs.push(run);
            value = 0;
            groups = 0;
        }
        if groups != 0 {
            return Err(CocoMaskError::TruncatedString { index: runs.len() });
        }
        Rle::from_counts(height, width, runs)
    }

    /// The mask of one polygon `[x0, y0, x1, y1, ...]`, exactly as pycocotools' `rleFrPoly`
    /// computes it: vertices are scaled by 5 and rounded with `(int)(v*5 + .5)`, the closed
    /// boundary is traced point by point, and every crossing of a pixel-column centre becomes
    /// a run boundary. Errors on an odd number of coordinates, fewer than 3 points, coordinates
    /// that are not finite or beyond ±1e7, and images over 2^32-1 pixels.
    pub fn from_polygon(height: u32, width: u32, xy: &[f64]) -> Result<Rle, CocoMaskError> {
        if !xy.len().is_multiple_of(2) {
            return Err(CocoMaskError::OddPolygon { len: xy.len() });
        }
        if xy.len() < 6 {
            return Err(CocoMaskError::TooFewPoints { points: xy.len() / 2 });
        }
        if let Some((index, &value)) = xy.iter().enumerate().find(|(_, v)| !(v.is_finite() && v.abs() <= MAX_COORD)) {
            return Err(CocoMaskError::BadCoordinate { index, value });
        }
        let pixels = pixel_count(height, width);
        // Run boundaries are u32 positions up to height * width.
        let total = u32::try_from(pixels).map_err(|_| CocoMaskError::ImageTooLarge { height, width })?;

        // `(int)` in C truncates toward zero, as `as i32` does; the bound above keeps it in range.
        let up: Vec<(i32, i32)> = xy.chunks_exact(2).map(|p| ((SCALE * p[0] + 0.5) as i32, (SCALE * p[1] + 0.5) as i32)).collect();

        let mut crossings = ColumnCrossings { height, width, previous: None, positions: Vec::new() };
        for (j, &start) in up.iter().enumerate() {
            let end = up[(j + 1) % up.len()];
            trace_edge(start, end, |u, v| crossings.visit(u, v));
        }

        // A sorted list of toggle positions, ending at the mask's end, becomes run lengths.
        let mut a = crossings.positions;
        a.push(total);
        a.sort_unstable();
        let mut previous = 0;
        for p in a.iter_mut() {
            let position = *p;
            *p -= previous;
            previous = position;
        }
        // Two toggles at one position cancel: a zero-length run merges its neighbours, exactly
        // as `rleFrPoly` does (including its handling of a trailing zero).
        let mut counts = Vec::with_capacity(a.len());
        counts.push(a[0]);
        let mut j = 1;
        while j < a.len() {
            if a[j] > 0 {
                counts.push(a[j]);
                j += 1;
            } else {
                j += 1;
                if j < a.len() {
                    if let Some(last) = counts.last_mut() {
                        *last += a[j];
                    }
                    j += 1;
                }
            }
        }
        Ok(Rle { height, width, counts })
    }

    /// Number of foreground pixels.
    pub fn area(&self) -> u64 {
        self.counts.iter().skip(1).step_by(2).map(|&c| u64::from(c)).sum()
    }

    /// Calls `paint(index)` for every foreground pixel, index = row-major y*width + x.
    ///
    /// The fields are public, so runs past the end of the mask are ignored rather than
    /// producing out-of-range indices.
    pub fn for_each_pixel(&self, mut paint: impl FnMut(usize)) {
        paint_runs(self.height, self.width, &self.counts, &mut paint);
    }
}

/// The three forms COCO's `segmentation` takes.
#[derive(Debug, Clone, PartialEq)]
pub enum Segmentation {
    /// One or more polygons `[x0, y0, x1, y1, ...]`; the object is their union.
    Polygons(Vec<Vec<f64>>),
    /// Uncompressed RLE (`{"size": [h, w], "counts": [...]}` with a list of runs).
    Counts {
        /// Height from `size[0]`.
        height: u32,
        /// Width from `size[1]`.
        width: u32,
        /// Run lengths.
        counts: Vec<u32>,
    },
    /// Compressed RLE (`{"size": [h, w], "counts": "..."}` with pycocotools' string).
    Compressed {
        /// Height from `size[0]`.
        height: u32,
        /// Width from `size[1]`.
        width: u32,
        /// The compressed string.
        counts: String,
    },
}

/// One annotation reduced to what a semantic mask needs.
#[derive(Debug, Clone, PartialEq)]
pub struct MaskAnnotation {
    /// Class painted into the semantic mask (for non-crowd annotations).
    pub class_id: u8,
    /// COCO `iscrowd`: the region is painted 255 (ignore) where no object covers it.
    pub crowd: bool,
    /// The shape.
    pub segmentation: Segmentation,
}

/// The semantic mask (row-major, height*width bytes) of one image:
/// non-crowd annotations are painted with their class_id in the given order (a later one wins where they overlap);
/// then every crowd region is painted 255 (ignore) on the pixels that no non-crowd annotation covered.
/// Background is 0. An RLE whose size differs from (height, width) is an error naming both sizes.
///
/// Polygon segmentations follow [`Rle::from_polygon`], so a polygon with fewer than 3 points or
/// an empty polygon list is an error; errors name the annotation's index.
pub fn semantic_mask(height: u32, width: u32, annotations: &[MaskAnnotation]) -> Result<Vec<u8>, CocoMaskError> {
    let pixels = usize::try_from(pixel_count(height, width)).map_err(|_| CocoMaskError::ImageTooLarge { height, width })?;
    let mut mask = Vec::new();
    mask.try_reserve_exact(pixels).map_err(|_| CocoMaskError::Allocation { height, width })?;
    mask.resize(pixels, 0u8);
    // Painting crowd regions first and objects over them gives "crowd only where no object is"
    // without a second coverage buffer.
    for crowd_pass in [true, false] {
        for (index, annotation) in annotations.iter().enumerate() {
            if annotation.crowd != crowd_pass {
                continue;
            }
            let value = if annotation.crowd { 255 } else { annotation.class_id };
            paint_segmentation(height, width, &annotation.segmentation, &mut |i| mask[i] = value)
                .map_err(|cause| CocoMaskError::Annotation { index, cause: Box::new(cause) })?;
        }
    }
    Ok(mask)
}

/// Calls `paint` for every pixel of `segmentation` (a pixel may come twice for overlapping
/// polygons, which painting makes a union, as pycocotools' `merge`).
fn paint_segmentation(height: u32, width: u32, segmentation: &Segmentation, paint: &mut impl FnMut(usize)) -> Result<(), CocoMaskError> {
    let check_size = |rle_height: u32, rle_width: u32| {
        if (rle_height, rle_width) == (height, width) {
            Ok(())
        } else {
            Err(CocoMaskError::SizeMismatch { rle_height, rle_width, height, width })
        }
    };
    match segmentation {
        Segmentation::Polygons(polygons) => {
            if polygons.is_empty() {
                return Err(CocoMaskError::NoPolygons);
            }
            for polygon in polygons {
                Rle::from_polygon(height, width, polygon)?.for_each_pixel(&mut *paint);
            }
        }
        Segmentation::Counts { height: h, width: w, counts } => {
            check_size(*h, *w)?;
            check_counts(height, width, counts)?;
            paint_runs(height, width, counts, paint);
        }
        Segmentation::Compressed { height: h, width: w, counts } => {
            check_size(*h, *w)?;
            Rle::from_compressed(height, width, counts)?.for_each_pixel(&mut *paint);
        }
    }
    Ok(())
}

/// `height * width` without overflow.
fn pixel_count(height: u32, width: u32) -> u64 {
    u64::from(height) * u64::from(width)
}

/// Errors unless `counts` sums to `height * width`.
fn check_counts(height: u32, width: u32, counts: &[u32]) -> Result<(), CocoMaskError> {
    let sum: u64 = counts.iter().map(|&c| u64::from(c)).sum();
    let pixels = pixel_count(height, width);
    if sum == pixels {
        Ok(())
    } else {
        Err(CocoMaskError::CountsSum { sum, height, width, pixels })
    }
}

/// Calls `paint(y*width + x)` for the pixels of the odd (foreground) runs, stopping at the
/// mask's end.
fn paint_runs(height: u32, width: u32, counts: &[u32], paint: &mut impl FnMut(usize)) {
    let (h, w) = (height as usize, width as usize);
    let total = h.saturating_mul(w);
    let mut start = 0usize;
    for (i, &run) in counts.iter().enumerate() {
        if start >= total {
            break;
        }
        let end = start.saturating_add(run as usize).min(total);
        if i % 2 == 1 {
            // Column-major position → (x, y), advanced incrementally instead of dividing per pixel.
            let (mut x, mut y) = (start / h, start % h);
            for _ in start..end {
                paint(y * w + x);
                y += 1;
                if y == h {
                    y = 0;
                    x += 1;
                }
            }
        }
        start = end;
    }
}

/// Emits the upsampled integer points of the segment `start`–`end`, from `start` to `end`
/// inclusive, stepping one unit along the major axis (the inner loop of `rleFrPoly`).
fn trace_edge(start: (i32, i32), end: (i32, i32), mut emit: impl FnMut(i32, i32)) {
    let ((mut xs, mut ys), (mut xe, mut ye)) = (start, end);
    let dx = (xe - xs).abs();
    let dy = (ys - ye).abs();
    // The C code always steps from the smaller to the larger major coordinate, so the rounding
    // of the minor coordinate depends on that direction; `t` then walks back to keep order.
    let flip = (dx >= dy && xs > xe) || (dx < dy && ys > ye);
    if flip {
        std::mem::swap(&mut xs, &mut xe);
        std::mem::swap(&mut ys, &mut ye);
    }
    if dx >= dy {
        // For a zero-length edge C computes 0/0; that single point's v is never read because
        // its u equals its neighbours', so any finite slope gives the same mask.
        let s = if dx == 0 { 0.0 } else { f64::from(ye - ys) / f64::from(dx) };
        for d in 0..=dx {
            let t = if flip { dx - d } else { d };
            emit(t + xs, (f64::from(ys) + s * f64::from(t) + 0.5) as i32);
        }
    } else {
        let s = f64::from(xe - xs) / f64::from(dy);
        for d in 0..=dy {
            let t = if flip { dy - d } else { d };
            emit((f64::from(xs) + s * f64::from(t) + 0.5) as i32, t + ys);
        }
    }
}

/// Collects, from the stream of upsampled boundary points, the places where the boundary
/// crosses the centre of a pixel column (`rleFrPoly`'s "points along y-boundary and
/// downsample"), as column-major positions where the mask toggles.
struct ColumnCrossings {
    height: u32,
    width: u32,
    previous: Option<(i32, i32)>,
    positions: Vec<u32>,
}

impl ColumnCrossings {
    fn visit(&mut self, u: i32, v: i32) {
        let Some((pu, pv)) = self.previous.replace((u, v)) else {
            return;
        };
        if u == pu {
            return;
        }
        // The same floating-point steps as C, so ties round identically.
        let xd = f64::from(if u < pu { u } else { u - 1 });
        let xd = (xd + 0.5) / SCALE - 0.5;
        if xd.floor() != xd || xd < 0.0 || xd > f64::from(self.width) - 1.0 {
            return;
        }
        let yd = f64::from(if v < pv { v } else { pv });
        let mut yd = (yd + 0.5) / SCALE - 0.5;
        if yd < 0.0 {
            yd = 0.0;
        } else if yd > f64::from(self.height) {
            yd = f64::from(self.height);
        }
        let yd = yd.ceil();
        // x <= width-1 and y <= height, so the position is at most height*width, which the
        // caller checked fits in u32.
        self.positions.push(xd as u32 * self.height + yd as u32);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Row-major 0/1 mask of an RLE.
    fn decode(rle: &Rle) -> Vec<u8> {
        let mut mask = vec![0u8; rle.height as usize * rle.width as usize];
        rle.for_each_pixel(|i| mask[i] = 1);
        mask
    }

    /// Parses a literal picture, one string per row, '1' foreground.
    fn picture(rows: &[&str]) -> Vec<u8> {
        rows.iter().flat_map(|r| r.bytes().map(|b| u8::from(b == b'1'))).collect()
    }

    #[test]
    fn rectangle_polygon_covers_pixels_whose_centres_are_inside() {
        // Corners (1,1)–(4,3): pixel centres x+0.5 in {1.5, 2.5, 3.5}, y+0.5 in {1.5, 2.5}.
        let rle = Rle::from_polygon(5, 6, &[1.0, 1.0, 4.0, 1.0, 4.0, 3.0, 1.0, 3.0]).unwrap();
        let expected = picture(&["000000", "011100", "011100", "000000", "000000"]);
        assert_eq!(decode(&rle), expected);
        // Toggles at column-major positions 6, 8, 11, 13, 16, 18 and the end 30.
        assert_eq!(rle.counts, vec![6, 2, 3, 2, 3, 2, 12]);
        assert_eq!(rle.area(), 6);
    }

    #[test]
    fn rectangle_polygon_is_clipped_to_the_image() {
        let rle = Rle::from_polygon(3, 4, &[-1.0, -1.0, 3.0, -1.0, 3.0, 2.0, -1.0, 2.0]).unwrap();
        assert_eq!(decode(&rle), picture(&["1110", "1110", "0000"]));
    }

    #[test]
    fn triangle_polygon_excludes_centres_on_the_hypotenuse() {
        // (0,0), (4,0), (0,4): the diagonal passes through the centres with x+y = 3, and
        // rleFrPoly's rounding leaves them out.
        let rle = Rle::from_polygon(5, 5, &[0.0, 0.0, 4.0, 0.0, 0.0, 4.0]).unwrap();
        let expected = picture(&["11100", "11000", "10000", "00000", "00000"]);
        assert_eq!(decode(&rle), expected);
        // Column-major toggles 0,3 | 5,7 | 10,11 | 15,15 (cancel) | 25: a leading empty run and
        // the zero run merged into the last one.
        assert_eq!(rle.counts, vec![0, 3, 2, 2, 3, 1, 14]);
        assert_eq!(rle.area(), 6);
    }

    #[test]
    fn uncompressed_counts_decode_column_major() {
        // 3×4 (h×w), runs: 2 off, 3 on (y=2 of x=0, y=0..1 of x=1), 4 off, 3 on (all of x=3).
        let rle = Rle::from_counts(3, 4, vec![2, 3, 4, 3]).unwrap();
        assert_eq!(decode(&rle), picture(&["0101", "0101", "1001"]));
        assert_eq!(rle.area(), 6);
        let mut seen = Vec::new();
        rle.for_each_pixel(|i| seen.push(i));
        assert_eq!(seen, vec![8, 1, 5, 3, 7, 11]);
    }

    #[test]
    fn leading_foreground_needs_an_empty_first_run() {
        let rle = Rle::from_counts(2, 2, vec![0, 3, 1]).unwrap();
        assert_eq!(decode(&rle), picture(&["11", "10"]));
    }

    #[test]
    fn compressed_strings_decode_hand_encoded_runs() {
        // 40 = 0b01_01000 → 'X' (8|0x20 +48), '1'; 2 → '2'; 5 → '5';
        // 50-2 = 48 = 0b01_10000 → '`' (16|0x20 +48), '1' (16 has the sign bit, so a group 1 follows);
        // 3-5 = -2 → 30 +48 = 'N' (sign bit set, no continuation).
        let rle = Rle::from_compressed(10, 10, "X125`1N").unwrap();
        assert_eq!(rle.counts, vec![40, 2, 5, 50, 3]);
        // 25 → 'i' (25|0x20 +48), '0'; 5-25 = -20 → low group 12|0x20 +48 = '\\', then 31 +48 = 'O';
        // 25-5 = 20 → 'd' (20|0x20 +48), '0'.
        let rle = Rle::from_compressed(10, 10, "X1i05\\Od0").unwrap();
        assert_eq!(rle.counts, vec![40, 25, 5, 5, 25]);
        // The triangle's runs: 0, 3, 2, then deltas -1 ('O'), +1 ('1'), -1 ('O'), +11 (';').
        let rle = Rle::from_compressed(5, 5, "032O1O;").unwrap();
        assert_eq!(rle.counts, vec![0, 3, 2, 2, 3, 1, 14]);
    }

    #[test]
    fn counts_that_do_not_cover_the_mask_are_errors() {
        let err = Rle::from_counts(3, 4, vec![2, 3, 4]).unwrap_err();
        assert_eq!(err, CocoMaskError::CountsSum { sum: 9, height: 3, width: 4, pixels: 12 });
        assert_eq!(err.to_string(), "RLE counts sum to 9 but the mask has 3×4 = 12 pixels");
        assert!(matches!(Rle::from_counts(3, 4, vec![2, 3, 4, 4]), Err(CocoMaskError::CountsSum { sum: 13, .. })));
        // Valid string, wrong size.
        assert!(matches!(Rle::from_compressed(10, 9, "X125`1N"), Err(CocoMaskError::CountsSum { sum: 100, pixels: 90, .. })));
    }

    #[test]
    fn malformed_compressed_strings_are_errors() {
        assert_eq!(Rle::from_compressed(2, 2, "0 4"), Err(CocoMaskError::InvalidChar { offset: 1, byte: b' ' }));
        // 'X' carries the continuation bit, and nothing follows.
        assert_eq!(Rle::from_compressed(2, 2, "1X"), Err(CocoMaskError::TruncatedString { index: 1 }));
        // Eight continued groups.
        assert_eq!(Rle::from_compressed(2, 2, "PPPPPPPP0"), Err(CocoMaskError::ValueTooLong { index: 0 }));
        // A first run of -1 ('O').
        assert_eq!(Rle::from_compressed(2, 2, "O"), Err(CocoMaskError::RunOutOfRange { index: 0, value: -1 }));
        // The third run is still absolute: -2 ('N').
        assert_eq!(Rle::from_compressed(2, 2, "11N"), Err(CocoMaskError::RunOutOfRange { index: 2, value: -2 }));
        // The fourth is a delta: 1 + -2 = -1.
        assert_eq!(Rle::from_compressed(2, 2, "111N"), Err(CocoMaskError::RunOutOfRange { index: 3, value: -1 }));
    }

    #[test]
    fn malformed_polygons_are_errors() {
        assert_eq!(Rle::from_polygon(4, 4, &[0.0, 0.0, 2.0, 0.0, 2.0]), Err(CocoMaskError::OddPolygon { len: 5 }));
        assert_eq!(Rle::from_polygon(4, 4, &[0.0, 0.0, 2.0, 2.0]), Err(CocoMaskError::TooFewPoints { points: 2 }));
        assert!(matches!(Rle::from_polygon(4, 4, &[0.0, 0.0, 2.0, f64::NAN, 1.0, 1.0]), Err(CocoMaskError::BadCoordinate { index: 3, .. })));
        assert!(matches!(Rle::from_polygon(4, 4, &[0.0, 0.0, 2.0e9, 0.0, 1.0, 1.0]), Err(CocoMaskError::BadCoordinate { index: 2, .. })));
        assert_eq!(Rle::from_polygon(70_000, 70_000, &[0.0, 0.0, 2.0, 0.0, 1.0, 1.0]), Err(CocoMaskError::ImageTooLarge { height: 70_000, width: 70_000 }));
    }

    #[test]
    fn degenerate_polygons_and_empty_images_do_not_panic() {
        // All vertices on one point: no area.
        let rle = Rle::from_polygon(3, 3, &[1.0, 1.0, 1.0, 1.0, 1.0, 1.0]).unwrap();
        assert_eq!(rle.area(), 0);
        assert_eq!(rle.counts.iter().map(|&c| u64::from(c)).sum::<u64>(), 9);
        let rle = Rle::from_polygon(0, 0, &[0.0, 0.0, 2.0, 0.0, 1.0, 1.0]).unwrap();
        assert_eq!(rle.counts, vec![0]);
        // Hand-built RLEs with too many pixels paint only inside the mask.
        let bad = Rle { height: 2, width: 2, counts: vec![1, 10] };
        assert_eq!(decode(&bad), picture(&["01", "11"]));
        let empty = Rle { height: 0, width: 5, counts: vec![0, 4] };
        empty.for_each_pixel(|_| panic!("no pixel expected"));
    }

    /// Segmentation of a rectangle polygon with corners (x0, y0)–(x1, y1).
    fn rectangle(x0: f64, y0: f64, x1: f64, y1: f64) -> Segmentation {
        Segmentation::Polygons(vec![vec![x0, y0, x1, y0, x1, y1, x0, y1]])
    }

    #[test]
    fn semantic_mask_paints_in_order_and_crowds_only_where_free() {
        let annotations = [
            // Class 3 on x 0..=2, y 0..=1.
            MaskAnnotation { class_id: 3, crowd: false, segmentation: rectangle(0.0, 0.0, 3.0, 2.0) },
            // Class 7 on x 2..=3, y 1..=2: column-major positions 9, 10, 13, 14; wins over class 3 at (2,1).
            MaskAnnotation { class_id: 7, crowd: false, segmentation: Segmentation::Counts { height: 4, width: 5, counts: vec![9, 2, 2, 2, 5] } },
            // Crowd on positions 14..=19: (3,2), (3,3) and all of x=4; "14, 6" is ">6".
            MaskAnnotation { class_id: 9, crowd: true, segmentation: Segmentation::Compressed { height: 4, width: 5, counts: ">6".to_string() } },
            // Class 2 on (4,0), listed after the crowd yet drawn over it.
            MaskAnnotation { class_id: 2, crowd: false, segmentation: rectangle(4.0, 0.0, 5.0, 1.0) },
        ];
        let mask = semantic_mask(4, 5, &annotations).unwrap();
        #[rustfmt::skip]
        let expected: Vec<u8> = vec![
            3, 3, 3, 0, 2,
            3, 3, 7, 7, 255,
            0, 0, 7, 7, 255,
            0, 0, 0, 255, 255,
        ];
        assert_eq!(mask, expected);
        // Reversing the two overlapping objects lets class 3 win at (2,1).
        let swapped = [annotations[1].clone(), annotations[0].clone()];
        assert_eq!(semantic_mask(4, 5, &swapped).unwrap()[7], 3);
    }

    #[test]
    fn semantic_mask_unions_polygons_of_one_annotation() {
        let annotations = [MaskAnnotation {
            class_id: 4,
            crowd: false,
            segmentation: Segmentation::Polygons(vec![vec![0.0, 0.0, 2.0, 0.0, 2.0, 1.0, 0.0, 1.0], vec![1.0, 0.0, 3.0, 0.0, 3.0, 2.0, 1.0, 2.0]]),
        }];
        let mask = semantic_mask(2, 3, &annotations).unwrap();
        assert_eq!(mask, vec![4, 4, 4, 0, 4, 4]);
    }

    #[test]
    fn semantic_mask_rejects_mismatched_sizes_and_names_the_annotation() {
        let annotations = [
            MaskAnnotation { class_id: 1, crowd: false, segmentation: rectangle(0.0, 0.0, 1.0, 1.0) },
            MaskAnnotation { class_id: 1, crowd: true, segmentation: Segmentation::Counts { height: 5, width: 4, counts: vec![20] } },
        ];
        let err = semantic_mask(4, 5, &annotations).unwrap_err();
        assert_eq!(err.to_string(), "annotation #1: RLE is 5×4 (height×width) but the image is 4×5");
        let empty = [MaskAnnotation { class_id: 1, crowd: false, segmentation: Segmentation::Polygons(vec![]) }];
        assert!(matches!(
            semantic_mask(4, 5, &empty),
            Err(CocoMaskError::Annotation { index: 0, cause }) if *cause == CocoMaskError::NoPolygons
        ));
    }

    /// Deterministic 64-bit LCG (Knuth's MMIX constants), high bits as output.
    struct Lcg(u64);

    impl Lcg {
        fn next(&mut self) -> u32 {
            self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (self.0 >> 32) as u32
        }
        /// Uniform in `lo..=hi`.
        fn range(&mut self, lo: u32, hi: u32) -> u32 {
            lo + self.next() % (hi - lo + 1)
        }
        /// Uniform in `[0, 1)`.
        fn unit(&mut self) -> f64 {
            f64::from(self.next()) / 4294967296.0
        }
    }

    /// A random polygon coordinate in `[-2, extent + 2]`: fully fractional, on a 0.1 grid, or
    /// on a 0.5 grid (the last two hit rleFrPoly's rounding ties).
    fn coordinate(rng: &mut Lcg, extent: u32, style: u32) -> f64 {
        let v = -2.0 + rng.unit() * f64::from(extent + 4);
        match style {
            0 => v,
            1 => (v * 10.0).round() / 10.0,
            _ => (v * 2.0).round() / 2.0,
        }
    }

    /// Random runs covering `height * width`, alternating 0s and 1s, first run possibly empty.
    fn random_counts(rng: &mut Lcg, height: u32, width: u32) -> Vec<u32> {
        let total = height * width;
        let mut counts = vec![if rng.range(0, 2) == 0 { 0 } else { rng.range(1, total / 4) }];
        let mut used = counts[0];
        while used < total {
            let longest = rng.range(1, total / 3).min(total - used);
            let run = rng.range(1, longest);
            counts.push(run);
            used += run;
        }
        counts
    }

    fn python() -> std::path::PathBuf {
        let bundled = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".deps/pyenv/bin/python");
        match std::env::var_os("WSSS_TEST_PYTHON") {
            Some(p) => std::path::PathBuf::from(p),
            None if bundled.exists() => bundled,
            None => panic!("pycocotools cross-check needs Python: set WSSS_TEST_PYTHON or create {} (scripts/setup.sh)", bundled.display()),
        }
    }

    /// Runs pycocotools on polygon and RLE cases: per polygon case the per-polygon compressed
    /// strings (`frPyObjects`) and the decoded `merge` of them; per RLE case the `frPyObjects`
    /// string, the decoded mask and the `encode` string of that mask. Masks come back row-major.
    const PYCOCOTOOLS_SCRIPT: &str = r#"
import json, sys
import numpy as np
from pycocotools import mask as M
req = json.load(sys.stdin)
out = {"polygons": [], "rles": []}
for c in req["polygons"]:
    rles = M.frPyObjects(c["polygons"], c["height"], c["width"])
    merged = M.decode(M.merge(rles))
    out["polygons"].append({
        "strings": [r["counts"].decode("ascii") for r in rles],
        "mask": merged.ravel(order="C").tolist(),
    })
for c in req["rles"]:
    h, w = c["height"], c["width"]
    r = M.frPyObjects({"size": [h, w], "counts": c["counts"]}, h, w)
    m = M.decode(r)
    e = M.encode(np.asfortranarray(m))
    out["rles"].append({
        "string": r["counts"].decode("ascii"),
        "mask": m.ravel(order="C").tolist(),
        "encoded": e["counts"].decode("ascii"),
    })
json.dump(out, sys.stdout)
"#;

    fn run_pycocotools(request: &serde_json::Value) -> serde_json::Value {
        use std::io::Write;
        use std::process::{Command, Stdio};
        let python = python();
        let mut child = Command::new(&python)
            .args(["-c", PYCOCOTOOLS_SCRIPT])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let mut stdin = child.stdin.take().unwrap();
        let body = request.to_string();
        // Write from another thread so a chatty child cannot deadlock on a full stdout pipe.
        let writer = std::thread::spawn(move || stdin.write_all(body.as_bytes()));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(output.status.success(), "pycocotools script failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    fn json_mask(value: &serde_json::Value) -> Vec<u8> {
        value.as_array().unwrap().iter().map(|v| v.as_u64().unwrap() as u8).collect()
    }

    #[test]
    fn matches_pycocotools() {
        let mut rng = Lcg(0x5eed_c0c0);
        let polygon_cases: Vec<(u32, u32, Vec<Vec<f64>>)> = (0..60)
            .map(|_| {
                let (height, width) = (rng.range(7, 60), rng.range(9, 60));
                let polygons = (0..rng.range(1, 3))
                    .map(|_| {
                        let style = rng.range(0, 2);
                        (0..rng.range(3, 12))
                            .flat_map(|_| {
                                let x = coordinate(&mut rng, width, style);
                                [x, coordinate(&mut rng, height, style)]
                            })
                            .collect()
                    })
                    .collect();
                (height, width, polygons)
            })
            .collect();
        let rle_cases: Vec<(u32, u32, Vec<u32>)> = (0..40)
            .map(|_| {
                let (height, width) = (rng.range(7, 60), rng.range(9, 45));
                (height, width, random_counts(&mut rng, height, width))
            })
            .collect();

        let request = serde_json::json!({
            "polygons": polygon_cases.iter().map(|(h, w, p)| serde_json::json!({"height": h, "width": w, "polygons": p})).collect::<Vec<_>>(),
            "rles": rle_cases.iter().map(|(h, w, c)| serde_json::json!({"height": h, "width": w, "counts": c})).collect::<Vec<_>>(),
        });
        let reply = run_pycocotools(&request);
        assert_eq!(reply["polygons"].as_array().unwrap().len(), polygon_cases.len());
        assert_eq!(reply["rles"].as_array().unwrap().len(), rle_cases.len());

        let mut foreground = 0;
        for (case, ((height, width, polygons), expected)) in polygon_cases.iter().zip(reply["polygons"].as_array().unwrap()).enumerate() {
            let mut union = vec![0u8; (height * width) as usize];
            for (polygon, string) in polygons.iter().zip(expected["strings"].as_array().unwrap()) {
                let ours = Rle::from_polygon(*height, *width, polygon).unwrap();
                let theirs = Rle::from_compressed(*height, *width, string.as_str().unwrap()).unwrap();
                assert_eq!(ours.counts, theirs.counts, "polygon case {case}: {polygon:?}");
                ours.for_each_pixel(|i| union[i] = 1);
            }
            assert_eq!(union, json_mask(&expected["mask"]), "polygon case {case}: merged mask");
            foreground += union.iter().filter(|&&p| p == 1).count();
        }
        // Guard against a vacuous comparison of empty masks.
        assert!(foreground > 1000, "random polygons covered only {foreground} pixels");

        for (case, ((height, width, counts), expected)) in rle_cases.iter().zip(reply["rles"].as_array().unwrap()).enumerate() {
            let ours = Rle::from_counts(*height, *width, counts.clone()).unwrap();
            let mask = json_mask(&expected["mask"]);
            assert_eq!(decode(&ours), mask, "RLE case {case}: decoded mask");
            for key in ["string", "encoded"] {
                let parsed = Rle::from_compressed(*height, *width, expected[key].as_str().unwrap()).unwrap();
                assert_eq!(&parsed.counts, counts, "RLE case {case}: {key}");
            }
        }
    }
}

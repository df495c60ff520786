//! Image codecs: photos (JPEG/PNG) to RGB, label PNGs to class ids, and the PNG encoders the
//! importers use for masks and synthetic images. Errors are plain messages; callers add the
//! shard, row and id.

use std::io::Cursor;

/// A decoded image, row-major HWC with 3 bytes a pixel.
#[derive(Debug, Clone, PartialEq)]
pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

/// Decodes a JPEG or PNG (any colour type) to 8-bit RGB.
pub fn decode_rgb(bytes: &[u8]) -> Result<Rgb, String> {
    let image = image::load_from_memory(bytes).map_err(|e| format!("image does not decode: {e}"))?;
    let rgb = image.into_rgb8();
    Ok(Rgb { width: rgb.width(), height: rgb.height(), pixels: rgb.into_raw() })
}

/// Decodes the image of a dataset row, checking that its size is the one the row records.
pub fn decode_row_image(row: &super::ImageRow) -> Result<Rgb, String> {
    let rgb = decode_rgb(&row.image)?;
    if (rgb.width, rgb.height) != (row.width, row.height) {
        return Err(format!("image decodes to {}x{} but the row says {}x{}", rgb.width, rgb.height, row.width, row.height));
    }
    Ok(rgb)
}

/// The pixels of a label PNG: class ids (8-bit grayscale or palette indices) or colours
/// (an RGB PNG, which a dataset-specific palette must map to ids).
#[derive(Debug, Clone, PartialEq)]
pub enum LabelPixels {
    Ids(Vec<u8>),
    Rgb(Vec<u8>),
}

/// Decodes a label PNG without expanding its palette: indices are the class ids.
pub fn decode_label_png(bytes: &[u8]) -> Result<(u32, u32, LabelPixels), String> {
    let mut decoder = png::Decoder::new(Cursor::new(bytes));
    decoder.set_transformations(png::Transformations::IDENTITY);
    let mut reader = decoder.read_info().map_err(|e| format!("mask PNG does not decode: {e}"))?;
    let (color, depth) = reader.output_color_type();
    let size = reader.output_buffer_size().ok_or("mask PNG is too large")?;
    let mut buf = vec![0; size];
    let info = reader.next_frame(&mut buf).map_err(|e| format!("mask PNG does not decode: {e}"))?;
    buf.truncate(info.buffer_size());
    let pixels = match (color, depth) {
        (png::ColorType::Grayscale | png::ColorType::Indexed, png::BitDepth::Eight) => LabelPixels::Ids(buf),
        (png::ColorType::Rgb, png::BitDepth::Eight) => LabelPixels::Rgb(buf),
        other => return Err(format!("mask PNG is {other:?}; expected 8-bit grayscale, palette or RGB")),
    };
    Ok((info.width, info.height, pixels))
}

/// Decodes a mask as wsss-dist stores it (8-bit ids) into (width, height, ids).
pub fn decode_mask(bytes: &[u8]) -> Result<(u32, u32, Vec<u8>), String> {
    match decode_label_png(bytes)? {
        (w, h, LabelPixels::Ids(ids)) => Ok((w, h, ids)),
        (_, _, LabelPixels::Rgb(_)) => Err("mask PNG is RGB; expected 8-bit class ids".into()),
    }
}

/// Both encoders use png's `Fast` level (fdeflate): it compresses label maps' long runs
/// well, and the slower levels spend most of their time initialising a large deflate state
/// per image (measured: a fifth of synthetic import time).
fn encode_png(width: u32, height: u32, color: png::ColorType, data: &[u8]) -> Vec<u8> {
    encode_png_with(width, height, color, data, None)
}

fn encode_png_with(width: u32, height: u32, color: png::ColorType, data: &[u8], palette: Option<Vec<u8>>) -> Vec<u8> {
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, width, height);
    encoder.set_color(color);
    if let Some(palette) = palette {
        encoder.set_palette(palette);
    }
    encoder.set_depth(png::BitDepth::Eight);
    encoder.set_compression(png::Compression::Fast);
    let mut writer = encoder.write_header().expect("writing to a Vec cannot fail");
    writer.write_image_data(data).expect("buffer size matches the header");
    writer.finish().expect("writing to a Vec cannot fail");
    out
}

/// Encodes class ids as an 8-bit grayscale PNG (the stored mask format).
pub fn encode_mask(width: u32, height: u32, ids: &[u8]) -> Vec<u8> {
    assert_eq!(ids.len(), (width * height) as usize, "mask buffer size");
    encode_png(width, height, png::ColorType::Grayscale, ids)
}

/// Encodes class ids as a palette PNG with the VOC colours (index 255 is the devkit's
/// (224, 224, 192)): what VOC's `SegmentationClass/` files are, readable as ids by any tool.
pub fn encode_voc_palette_png(width: u32, height: u32, ids: &[u8]) -> Vec<u8> {
    assert_eq!(ids.len(), (width * height) as usize, "mask buffer size");
    let palette: Vec<u8> = (0..=255u8).flat_map(voc_color).collect();
    encode_png_with(width, height, png::ColorType::Indexed, ids, Some(palette))
}

/// Encodes an RGB image as PNG (synthetic images: lossless, so colour edges stay exact).
pub fn encode_rgb_png(width: u32, height: u32, rgb: &[u8]) -> Vec<u8> {
    assert_eq!(rgb.len(), (width * height * 3) as usize, "image buffer size");
    encode_png(width, height, png::ColorType::Rgb, rgb)
}

/// The VOC colour of palette index `i` (the devkit's bit-interleaving colour map).
pub fn voc_color(i: u8) -> [u8; 3] {
    let mut rgb = [0u8; 3];
    let mut c = i;
    for shift in (0..8).rev() {
        for (channel, value) in rgb.iter_mut().enumerate() {
            *value |= ((c >> channel) & 1) << shift;
        }
        c >>= 3;
    }
    rgb
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mask_round_trips_and_rgb_png_decodes() {
        let ids: Vec<u8> = (0..12).map(|i| [0u8, 3, 255][i % 3]).collect();
        let png = encode_mask(4, 3, &ids);
        assert_eq!(decode_mask(&png).unwrap(), (4, 3, ids));
        let rgb: Vec<u8> = (0..6 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let png = encode_rgb_png(6, 5, &rgb);
        assert_eq!(decode_rgb(&png).unwrap(), Rgb { width: 6, height: 5, pixels: rgb.clone() });
        assert!(matches!(decode_label_png(&png).unwrap().2, LabelPixels::Rgb(p) if p == rgb));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_rgb(b"\xff\xd8\xff\xe0 not really a jpeg").is_err());
        assert!(decode_mask(b"\x89PNG\r\n\x1a\n").is_err());
        let mut png = encode_mask(2, 2, &[1, 2, 3, 4]);
        png.truncate(png.len() - 20);
        assert!(decode_mask(&png).is_err());
    }
}

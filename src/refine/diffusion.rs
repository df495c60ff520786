//! Class activation diffusion along attention (AD-CAM, docs/methods.md §9): the CAMs of one image
//! spread to the pixels each pixel attends to, after the attention is refined by how alike two
//! pixels' attention to the other pixels is, and the direct coupling it is measured against.
//!
//! Everything is on the feature grid of N = h·w tokens: the attention is N × N, 4·N² bytes (the
//! stage pools the features to at most `max_tokens` tokens first, which bounds it).

use serde::{Deserialize, Serialize};
use tch::{Kind, Tensor};

/// How the CAMs of `cam` are refined after they are made (`cam.refine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CamRefine {
    /// The CAMs as the network makes them.
    #[default]
    None,
    /// The direct coupling: each pixel's activation replaced by the attention-weighted sum of all
    /// activations, M' = A·M, once (TransCAM's product for a source without a class token).
    Couple,
    /// AD-CAM: the attention refined (`[cam.ad_cam] refinement`), made a transition matrix,
    /// and the activations diffused along it `steps` times.
    AdCam,
}

/// How the attention between two pixels is computed from their features.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Similarity {
    /// softmax(F·Fᵀ / (τ·√d)): the scaled dot product, as a transformer's attention without its
    /// query and key projections.
    Dot,
    /// softmax(cos(F_i, F_j) / τ): the same on unit-length features, so that a pixel attends to
    /// pixels like it rather than to the pixels of largest norm.
    Cosine,
}

/// How the attention between two pixels is refined by their attention to common neighbours.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Refinement {
    /// Ã_ij = A_ij · cos(A_i, A_j): a pair whose rows (attention to every pixel) differ loses
    /// attention in proportion, one that attends alike keeps it.
    Cosine,
    /// Ã = A·Aᵀ: the attention two pixels give the same neighbours, in place of their own
    /// (CLIP-ES's square of the symmetrised attention).
    Shared,
    /// Ã = A: the diffusion alone.
    None,
}

/// What the CAMs are diffused along.
pub enum AttentionSource {
    /// A CNN's feature map [C, h, w]: its attention is computed (`similarity`).
    Features(Tensor),
    /// A given row-stochastic attention [N, N] over a grid of N = h·w pixels (a ViT's).
    Matrix { attention: Tensor, grid: [i64; 2] },
}

/// `[cam.ad_cam]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AdCamParams {
    pub similarity: Similarity,
    pub refinement: Refinement,
    /// t of M' = Pᵗ·M.
    pub steps: u32,
    /// τ of the feature attention (`similarity`).
    pub temperature: f64,
    /// The feature grid is average-pooled to at most this many tokens before the attention
    /// (4096: a 64 MiB matrix per image).
    pub max_tokens: i64,
    /// A ViT's attention: the mean of its last `layers` blocks (and their heads).
    pub layers: usize,
}

impl Default for AdCamParams {
    fn default() -> Self {
        AdCamParams { similarity: Similarity::Cosine, refinement: Refinement::Cosine, steps: 2, temperature: 0.1, max_tokens: 4096, layers: 8 }
    }
}

impl AdCamParams {
    /// The key at fault and why, when a setting is out of range.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        if !(1..=64).contains(&self.steps) {
            return Err(("steps", "must be in 1..=64"));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(("temperature", "must be a positive number"));
        }
        if self.max_tokens < 16 {
            return Err(("max_tokens", "must be at least 16"));
        }
        if !(1..=crate::model::vit::DEPTH).contains(&self.layers) {
            return Err(("layers", "must be in 1..=12 (a ViT's blocks)"));
        }
        Ok(())
    }
}

/// The attention of a feature map [C, h, w]: softmax over each row of F·Fᵀ / (τ·√C) (`Dot`) or
/// of cos(F_i, F_j) / τ (`Cosine`), [N, N] with N = h·w in row-major pixel order.
pub fn feature_attention(features: &Tensor, similarity: Similarity, temperature: f64) -> Tensor {
    let channels = features.size()[0];
    let tokens = features.flatten(1, -1).transpose(0, 1).to_kind(Kind::Float);
    let (tokens, scale) = match similarity {
        Similarity::Dot => (tokens, temperature * (channels as f64).sqrt()),
        Similarity::Cosine => (unit_rows(&tokens), temperature),
    };
    (tokens.matmul(&tokens.transpose(0, 1)) / scale).softmax(1, Kind::Float)
}

/// Ã from A [N, N] (non-negative rows).
pub fn refine_attention(attention: &Tensor, refinement: Refinement) -> Tensor {
    match refinement {
        Refinement::None => attention.shallow_clone(),
        Refinement::Shared => attention.matmul(&attention.transpose(0, 1)),
        Refinement::Cosine => {
            let unit = unit_rows(attention);
            attention * unit.matmul(&unit.transpose(0, 1))
        }
    }
}

/// Each row of a matrix scaled to unit length (a zero row stays zero): the rows' dot products
/// are then their cosines.
fn unit_rows(rows: &Tensor) -> Tensor {
    rows / rows.norm_scalaropt_dim(2.0, [1].as_slice(), true).clamp_min(1e-12)
}

/// Pᵗ·M: `cams` [K, h, w] diffused `steps` times along the row-stochastic P = D⁻¹Ã of
/// `attention` [N, N] (M'_i = Σ_j P_ij M_j), each class then divided by its max (+1e-5), as CAMs
/// are.
pub fn diffuse(cams: &Tensor, attention: &Tensor, steps: u32) -> Tensor {
    let size = cams.size();
    let transition = attention / attention.sum_dim_intlist([1].as_slice(), true, Kind::Float).clamp_min(1e-12);
    let mut maps = cams.flatten(1, -1).to_kind(Kind::Float);
    for _ in 0..steps {
        maps = maps.matmul(&transition.transpose(0, 1));
    }
    let maps = maps.view(size.as_slice());
    let max = maps.amax([1, 2].as_slice(), true);
    maps / (max + 1e-5)
}

/// The refined CAMs of one image: `cams` [K, H, W] (the stride-4 maps) diffused along `source`.
/// A CNN's features are resized (bilinearly) to the CAMs' grid and pooled to at most
/// `max_tokens`, so that the diffusion keeps the CAMs' resolution where the bound allows; a
/// ViT's attention is on its patch grid. The CAMs are resized to that grid, diffused, and
/// resized back to [H, W].
pub fn refine_cams(cams: &Tensor, source: &AttentionSource, refine: CamRefine, params: &AdCamParams) -> Tensor {
    if refine == CamRefine::None || cams.size()[0] == 0 {
        return cams.shallow_clone();
    }
    let size = cams.size();
    let (attention, grid) = match source {
        AttentionSource::Features(features) => {
            let features = features.unsqueeze(0).upsample_bilinear2d([size[1], size[2]], false, None, None).squeeze_dim(0);
            let features = pool_to_tokens(&features, params.max_tokens);
            (feature_attention(&features, params.similarity, params.temperature), [features.size()[1], features.size()[2]])
        }
        AttentionSource::Matrix { attention, grid } => (attention.shallow_clone(), *grid),
    };
    let low = cams.unsqueeze(0).upsample_bilinear2d(grid, false, None, None).squeeze_dim(0);
    let (attention, steps) = match refine {
        CamRefine::AdCam => (refine_attention(&attention, params.refinement), params.steps),
        _ => (attention, 1),
    };
    diffuse(&low, &attention, steps).unsqueeze(0).upsample_bilinear2d([size[1], size[2]], false, None, None).squeeze_dim(0)
}

/// `features` [C, h, w] average-pooled by the smallest integer factor that leaves at most
/// `max_tokens` pixels (unchanged when it has no more).
fn pool_to_tokens(features: &Tensor, max_tokens: i64) -> Tensor {
    let (h, w) = (features.size()[1], features.size()[2]);
    let pooled = |f: i64| ((h + f - 1) / f) * ((w + f - 1) / f);
    // A factor as large as the grid leaves one token, and max_tokens is at least 1.
    let factor = (1..=h.max(w)).find(|&f| pooled(f) <= max_tokens.max(1)).unwrap_or(h.max(w));
    if factor == 1 {
        return features.shallow_clone();
    }
    features.unsqueeze(0).avg_pool2d([factor, factor], [factor, factor], [0, 0], true, false, None::<i64>).squeeze_dim(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn values(t: &Tensor) -> Vec<f32> {
        Vec::try_from(t.flatten(0, -1).to_kind(Kind::Float)).unwrap()
    }

    fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
        a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
    }

    /// Two 1-channel tokens of value 1 and 2 (C = 1, τ = 1): scores [[1, 2], [2, 4]], rows
    /// softmaxed: [e/(e+e²), e²/(e+e²)] and [e²/(e²+e⁴), e⁴/(e²+e⁴)].
    #[test]
    fn feature_attention_is_the_row_softmax_of_scaled_dot_products() {
        let features = Tensor::from_slice(&[1.0f32, 2.0]).view([1, 1, 2]);
        let a = values(&feature_attention(&features, Similarity::Dot, 1.0));
        let e = std::f32::consts::E;
        let row0 = [e / (e + e * e), e * e / (e + e * e)];
        let row1 = [1.0 / (1.0 + e * e), e * e / (1.0 + e * e)];
        assert!(close(&a, &[row0[0], row0[1], row1[0], row1[1]], 1e-6), "{a:?}");
        // Four such channels sum four times the products, and τ = 2 with √4 divides by 4 again.
        let four = features.repeat([4, 1, 1]);
        assert!(close(&values(&feature_attention(&four, Similarity::Dot, 2.0)), &a, 1e-6));
        // Cosine: two tokens (1, 0) and (3, 4)/… : cos = 0.6; at τ = 0.5 row 0 is softmax([2, 1.2]).
        let features = Tensor::from_slice(&[1.0f32, 3.0, 0.0, 4.0]).view([2, 1, 2]);
        let a = values(&feature_attention(&features, Similarity::Cosine, 0.5));
        let row0 = [1.0 / (1.0 + (-0.8f32).exp()), (-0.8f32).exp() / (1.0 + (-0.8f32).exp())];
        assert!(close(&a, &[row0[0], row0[1], row0[1], row0[0]], 1e-6), "{a:?}");
    }

    /// On A = [[.5, .5, 0], [.5, .5, 0], [0, .2, .8]]: rows 0 and 1 are equal (cosine 1), row 2
    /// shares one neighbour with them: cos = .1 / (√.5 · √.68) = 0.17150.
    #[test]
    fn refinement_by_common_neighbours_follows_the_formulas() {
        let a = Tensor::from_slice(&[0.5f32, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 0.2, 0.8]).view([3, 3]);
        let cos = 0.1 / (0.5f32.sqrt() * 0.68f32.sqrt());
        let cosine = values(&refine_attention(&a, Refinement::Cosine));
        assert!(close(&cosine, &[0.5, 0.5, 0.0, 0.5, 0.5, 0.0, 0.0, 0.2 * cos, 0.8], 1e-6), "{cosine:?}");
        // A·Aᵀ: (0,0) = .5, (0,2) = .1, (2,2) = .04 + .64.
        let shared = values(&refine_attention(&a, Refinement::Shared));
        assert!(close(&shared, &[0.5, 0.5, 0.1, 0.5, 0.5, 0.1, 0.1, 0.1, 0.68], 1e-6), "{shared:?}");
        assert_eq!(values(&refine_attention(&a, Refinement::None)), values(&a));
    }

    /// Two steps along P = D⁻¹Ã on three pixels in a row, computed by hand: P = [[.5, .5, 0],
    /// [.25, .5, .25], [0, .5, .5]], M = [1, 0, 0] → [.5, .25, 0] → [.375, .25, .125], over its max.
    #[test]
    fn diffusion_is_the_power_of_the_row_normalised_attention() {
        let attention = Tensor::from_slice(&[2.0f32, 2.0, 0.0, 1.0, 2.0, 1.0, 0.0, 3.0, 3.0]).view([3, 3]);
        let cam = Tensor::from_slice(&[1.0f32, 0.0, 0.0]).view([1, 1, 3]);
        let out = values(&diffuse(&cam, &attention, 2));
        let expected = [0.375 / (0.375 + 1e-5), 0.25 / (0.375 + 1e-5), 0.125 / (0.375 + 1e-5)];
        assert!(close(&out, &expected, 1e-6), "{out:?}");
    }

    /// The point of the refinement: pixels attending to a different group (an object and a
    /// background that attends partly to it) keep less of the object's activation under AD-CAM
    /// than under the direct coupling.
    #[test]
    fn refined_attention_leaks_less_into_a_differently_attending_group() {
        // Pixels 0-1 an object (attend to each other), 2-3 background attending mostly to itself
        // and a little to the object.
        let a = Tensor::from_slice(&[0.5f32, 0.5, 0.0, 0.0, 0.5, 0.5, 0.0, 0.0, 0.2, 0.0, 0.4, 0.4, 0.0, 0.2, 0.4, 0.4]).view([4, 4]);
        let cam = Tensor::from_slice(&[1.0f32, 1.0, 0.0, 0.0]).view([1, 1, 4]);
        let coupled = values(&diffuse(&cam, &a, 1));
        let refined = values(&diffuse(&cam, &refine_attention(&a, Refinement::Cosine), 1));
        assert!(coupled[2] > 0.15 && refined[2] < 0.5 * coupled[2], "coupled {coupled:?} refined {refined:?}");
        assert!(refined[0] > 0.99 && refined[1] > 0.99, "{refined:?}");
    }

    /// A grid larger than `max_tokens` is pooled by the smallest factor that fits; the refined
    /// CAMs come back at the CAMs' size, and `none` leaves them untouched.
    #[test]
    fn the_attention_is_bounded_and_the_maps_keep_their_size() {
        tch::manual_seed(0);
        let features = Tensor::rand([8, 10, 12], (Kind::Float, tch::Device::Cpu));
        assert_eq!(pool_to_tokens(&features, 120).size(), [8, 10, 12]);
        assert_eq!(pool_to_tokens(&features, 119).size(), [8, 5, 6]);
        assert_eq!(pool_to_tokens(&features, 20).size(), [8, 4, 4]);
        let cams = Tensor::rand([2, 40, 48], (Kind::Float, tch::Device::Cpu));
        let params = AdCamParams { max_tokens: 30, ..AdCamParams::default() };
        for refine in [CamRefine::Couple, CamRefine::AdCam] {
            let out = refine_cams(&cams, &AttentionSource::Features(features.shallow_clone()), refine, &params);
            assert_eq!(out.size(), [2, 40, 48]);
            let max = values(&out.amax([1, 2].as_slice(), false));
            // Max-normalised on the pooled grid; the bilinear resize back can only lower a peak.
            assert!(max.iter().all(|m| *m > 0.9 && *m <= 1.0 + 1e-5), "{max:?}");
        }
        assert_eq!(values(&refine_cams(&cams, &AttentionSource::Features(features), CamRefine::None, &params)), values(&cams));
    }
}

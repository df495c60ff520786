//! A ViT/DeiT backbone with timm's parameter names (docs/methods.md §6, §9): 16-pixel patches,
//! a class token, learned position embeddings, 12 pre-norm blocks of multi-head attention and a
//! GELU MLP, the final LayerNorm. The CAM classifier reads the patch tokens as a stride-16
//! feature map; AD-CAM reads the blocks' attention.

use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Pixels per patch side: the output stride.
pub const PATCH: i64 = 16;
/// Blocks of every size here (ViT-Ti/S/B).
pub const DEPTH: usize = 12;
/// The patch grid the position embeddings are stored for (224 px, timm's and DeiT's).
pub const STORED_GRID: i64 = 224 / PATCH;
/// timm's LayerNorm epsilon for ViT/DeiT.
const LN_EPS: f64 = 1e-6;

/// Which ViT (`model.vit`): DeiT's tiny, small and base widths.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum VitSize {
    #[default]
    Tiny,
    Small,
    Base,
}

impl VitSize {
    /// (embedding width, attention heads).
    pub fn dims(self) -> (i64, i64) {
        match self {
            VitSize::Tiny => (192, 3),
            VitSize::Small => (384, 6),
            VitSize::Base => (768, 12),
        }
    }
}

#[derive(Debug)]
struct Block {
    norm1: nn::LayerNorm,
    qkv: nn::Linear,
    proj: nn::Linear,
    norm2: nn::LayerNorm,
    fc1: nn::Linear,
    fc2: nn::Linear,
    heads: i64,
}

fn layer_norm(vs: &nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(vs, vec![dim], nn::LayerNormConfig { eps: LN_EPS, ..Default::default() })
}

/// timm's initialisation of a ViT linear layer: truncated normal (std 0.02), zero bias.
fn linear(vs: &nn::Path, input: i64, output: i64) -> nn::Linear {
    let ws_init = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
    nn::linear(vs, input, output, nn::LinearConfig { ws_init, bs_init: Some(nn::Init::Const(0.0)), bias: true })
}

impl Block {
    fn new(vs: &nn::Path, dim: i64, heads: i64) -> Block {
        Block {
            norm1: layer_norm(&(vs / "norm1"), dim),
            qkv: linear(&(vs / "attn" / "qkv"), dim, 3 * dim),
            proj: linear(&(vs / "attn" / "proj"), dim, dim),
            norm2: layer_norm(&(vs / "norm2"), dim),
            fc1: linear(&(vs / "mlp" / "fc1"), dim, 4 * dim),
            fc2: linear(&(vs / "mlp" / "fc2"), 4 * dim, dim),
            heads,
        }
    }

    /// `x` [B, T, D] → (the block's output [B, T, D], its attention [B, heads, T, T]).
    fn forward(&self, x: &Tensor) -> (Tensor, Tensor) {
        let (b, t, d) = x.size3().expect("tokens are [B, T, D]");
        let head_dim = d / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)).reshape([b, t, 3, self.heads, head_dim]).permute([2, 0, 3, 1, 4]);
        let (q, k, v) = (qkv.get(0), qkv.get(1), qkv.get(2));
        let attention = (q * (head_dim as f64).powf(-0.5)).matmul(&k.transpose(-2, -1)).softmax(-1, Kind::Float);
        let mixed = attention.matmul(&v).transpose(1, 2).reshape([b, t, d]);
        let x = x + self.proj.forward(&mixed);
        let x = &x + self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)).gelu("none"));
        (x, attention)
    }
}

/// A ViT under `vs` with timm's names: `patch_embed.proj`, `cls_token`, `pos_embed`,
/// `blocks.{i}.{norm1, attn.qkv, attn.proj, norm2, mlp.fc1, mlp.fc2}`, `norm`.
#[derive(Debug)]
pub struct Vit {
    patch_embed: nn::Conv2D,
    cls_token: Tensor,
    /// [1, 1 + 14·14, D]
    pos_embed: Tensor,
    blocks: Vec<Block>,
    norm: nn::LayerNorm,
    dim: i64,
}

impl Vit {
    pub fn new(vs: &nn::Path, size: VitSize) -> Vit {
        let (dim, heads) = size.dims();
        let patch_embed = nn::conv2d(&(vs / "patch_embed" / "proj"), 3, dim, PATCH, nn::ConvConfig { stride: PATCH, ..Default::default() });
        let small = nn::Init::Randn { mean: 0.0, stdev: 0.02 };
        Vit {
            patch_embed,
            cls_token: vs.var("cls_token", &[1, 1, dim], nn::Init::Randn { mean: 0.0, stdev: 1e-6 }),
            pos_embed: vs.var("pos_embed", &[1, 1 + STORED_GRID * STORED_GRID, dim], small),
            blocks: (0..DEPTH).map(|i| Block::new(&(vs / "blocks" / i), dim, heads)).collect(),
            norm: layer_norm(&(vs / "norm"), dim),
            dim,
        }
    }

    pub fn out_channels(&self) -> i64 {
        self.dim
    }

    /// [N, 3, H, W] → the last block's patch tokens after the final norm as a map
    /// [N, D, ⌈H/16⌉, ⌈W/16⌉] (the image zero-padded on the right and bottom to whole patches,
    /// as timm's `dynamic_img_pad`).
    pub fn run(&self, xs: &Tensor) -> Tensor {
        let (tokens, _, [h, w]) = self.encode(xs, 0);
        let patches = self.norm.forward(&tokens).narrow(1, 1, h * w);
        patches.transpose(1, 2).reshape([xs.size()[0], self.dim, h, w])
    }

    /// The attention of the last `layers` blocks between patches, averaged over their heads
    /// and blocks, the class token's row and column dropped and each row scaled to sum to 1:
    /// [N, h·w, h·w] with its grid [h, w].
    pub fn patch_attention(&self, xs: &Tensor, layers: usize) -> (Tensor, [i64; 2]) {
        let (_, attentions, [h, w]) = self.encode(xs, layers.clamp(1, DEPTH));
        let mean = Tensor::stack(&attentions, 0).mean_dim([0, 2].as_slice(), false, Kind::Float);
        let patches = mean.narrow(1, 1, h * w).narrow(2, 1, h * w);
        let rows = patches.sum_dim_intlist([2].as_slice(), true, Kind::Float).clamp_min(1e-12);
        (patches / rows, [h, w])
    }

    /// The tokens after the last block [N, 1 + h·w, D], the attention of the last `keep` blocks,
    /// and the patch grid.
    fn encode(&self, xs: &Tensor, keep: usize) -> (Tensor, Vec<Tensor>, [i64; 2]) {
        let (height, width) = (xs.size()[2], xs.size()[3]);
        let grid = [(height + PATCH - 1) / PATCH, (width + PATCH - 1) / PATCH];
        let padded = xs.constant_pad_nd([0, grid[1] * PATCH - width, 0, grid[0] * PATCH - height]);
        let patches = self.patch_embed.forward(&padded).flatten(2, -1).transpose(1, 2);
        let cls = self.cls_token.expand([xs.size()[0], 1, self.dim], false);
        let mut tokens = Tensor::cat(&[cls, patches], 1) + self.position_embedding(grid);
        let mut attentions = Vec::new();
        for (i, block) in self.blocks.iter().enumerate() {
            let (out, attention) = block.forward(&tokens);
            tokens = out;
            if i + keep >= DEPTH {
                attentions.push(attention);
            }
        }
        (tokens, attentions, grid)
    }

    /// The position embeddings for a patch grid: the stored 14 × 14 grid resized to `grid` as
    /// timm's `resample_abs_pos_embed` does (bicubic with antialiasing: PyTorch's PIL-style
    /// kernel, a = −0.5), the class token's unchanged.
    fn position_embedding(&self, grid: [i64; 2]) -> Tensor {
        if grid == [STORED_GRID, STORED_GRID] {
            return self.pos_embed.shallow_clone();
        }
        let cls = self.pos_embed.narrow(1, 0, 1);
        let stored = self.pos_embed.narrow(1, 1, STORED_GRID * STORED_GRID).reshape([1, STORED_GRID, STORED_GRID, self.dim]).permute([0, 3, 1, 2]);
        let resized = stored.internal_upsample_bicubic2d_aa(grid, false, None, None).permute([0, 2, 3, 1]).reshape([1, grid[0] * grid[1], self.dim]);
        Tensor::cat(&[cls, resized], 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device};

    /// timm's names and shapes (ViT-Ti: 5.5 M parameters without the ImageNet head).
    #[test]
    fn names_and_shapes_are_timms() {
        let vs = VarStore::new(Device::Cpu);
        let _vit = Vit::new(&vs.root(), VitSize::Tiny);
        let vars = vs.variables();
        for (name, shape) in [
            ("patch_embed.proj.weight", vec![192, 3, 16, 16]),
            ("cls_token", vec![1, 1, 192]),
            ("pos_embed", vec![1, 197, 192]),
            ("blocks.0.attn.qkv.weight", vec![576, 192]),
            ("blocks.11.mlp.fc2.weight", vec![192, 768]),
            ("norm.bias", vec![192]),
        ] {
            assert_eq!(vars[name].size(), shape, "{name}");
        }
        let count: i64 = vars.values().map(|t| t.numel() as i64).sum();
        assert_eq!(count, 5_524_416, "timm's vit_tiny_patch16_224 less its 192×1000 head");
    }

    /// timm's file (its ImageNet head and all) into a CAM network with a ViT: all 150 ViT
    /// tensors loaded (patch embedding 2, tokens 2, 12 blocks of 12, final norm 2), the head
    /// ignored, the CAM classifier new.
    #[test]
    fn timm_weights_load_into_a_vit_cam_network() {
        let source = VarStore::new(Device::Cpu);
        let _vit = Vit::new(&source.root(), VitSize::Tiny);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vit_tiny.safetensors");
        let mut tensors: Vec<(String, Tensor)> = source.variables().into_iter().collect();
        tensors.push(("head.weight".into(), Tensor::zeros([1000, 192], (Kind::Float, Device::Cpu))));
        tensors.push(("head.bias".into(), Tensor::zeros([1000], (Kind::Float, Device::Cpu))));
        Tensor::write_safetensors(&tensors, &path).unwrap();
        let target = VarStore::new(Device::Cpu);
        let _net = crate::model::cam::CamNet::new(&target.root(), crate::model::backbone::BackboneSpec::vit(VitSize::Tiny), 5);
        let report = crate::model::weights::import(&target, &path, &crate::model::weights::TORCHVISION_BACKBONE).unwrap();
        assert_eq!(
            (report.loaded, report.kept_init.clone(), report.ignored.clone()),
            (150, vec!["classifier.weight".to_string()], vec!["head.bias".to_string(), "head.weight".into()])
        );
        assert!(target.variables()["blocks.3.attn.qkv.weight"].equal(&source.variables()["blocks.3.attn.qkv.weight"]));
    }

    /// Any image size: the map is on the padded patch grid; attention rows are distributions over
    /// the patches; at 224 px the stored position embeddings are used as they are.
    #[test]
    fn maps_and_attention_follow_the_patch_grid() {
        tch::manual_seed(0);
        let vs = VarStore::new(Device::Cpu);
        let vit = Vit::new(&vs.root(), VitSize::Tiny);
        let xs = Tensor::randn([2, 3, 40, 70], (Kind::Float, Device::Cpu));
        assert_eq!(vit.run(&xs).size(), [2, 192, 3, 5]);
        let (attention, grid) = vit.patch_attention(&xs, 2);
        assert_eq!((attention.size(), grid), (vec![2, 15, 15], [3, 5]));
        let rows: Vec<f32> = Vec::try_from(attention.sum_dim_intlist([2].as_slice(), false, Kind::Float).flatten(0, -1)).unwrap();
        assert!(rows.iter().all(|r| (r - 1.0).abs() < 1e-5), "{rows:?}");
        assert!(vit.position_embedding([14, 14]).equal(&vit.pos_embed));
        // Resized to 7 × 7 (halved): a constant embedding stays constant.
        let _ = tch::no_grad(|| vit.pos_embed.shallow_clone().fill_(0.5));
        let resized: Vec<f32> = Vec::try_from(vit.position_embedding([7, 7]).flatten(0, -1)).unwrap();
        assert!(resized.len() == 50 * 192 && resized.iter().all(|v| (v - 0.5).abs() < 1e-5));
    }
}

//! The command-line surface (docs/commands.md; docs/architecture.md, "Stages"): clap
//! definitions only.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "wsss-dist", version, about = "Distributed weakly-supervised semantic segmentation")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Import, verify and inspect datasets.
    Data {
        #[command(subcommand)]
        command: DataCommand,
    },
    /// Show the resolved configuration.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Train a network (the CAM classifier, IRNet's relation network or the segmenter).
    Train {
        #[command(subcommand)]
        command: TrainCommand,
    },
    /// CAM inference over a split (map phase): writes a CAM dataset.
    Cam {
        #[command(flatten)]
        args: MapArgs,
        /// Refine each CAM into its pseudo-label in the same pass (inference and refinement
        /// overlap): also writes the pseudo-label dataset.
        #[arg(long)]
        pseudo_labels: bool,
    },
    /// Refinement of the CAMs into pseudo-labels (map phase): writes a pseudo-label dataset.
    PseudoLabel(MapArgs),
    /// The segmenter's predictions over seg.infer.split (map phase), in the pseudo-label format.
    Seg(MapArgs),
    /// Export a dataset's masks for other frameworks.
    Export {
        #[command(subcommand)]
        command: ExportCommand,
    },
    /// Evaluate against the ground-truth masks (mIoU, per-class IoU; JSON + Markdown).
    Eval {
        #[command(subcommand)]
        command: EvalCommand,
    },
    /// Run the whole pipeline of a config (what `make demo` calls). Run again, it continues
    /// where an earlier run of the same config stopped.
    Run {
        #[command(flatten)]
        config: ConfigArgs,
        /// What a plain rerun does (every stage continues from what is already there): accepted
        /// so that a stopped job's "continue with --resume" works for `run` too.
        #[arg(long)]
        resume: bool,
    },
    /// The run's report: one self-contained HTML file (curves, τ sweep, per-class IoU, samples).
    Report {
        #[command(flatten)]
        config: ConfigArgs,
        /// Where to write it (default `<run dir>/report.html`).
        #[arg(long)]
        out: Option<PathBuf>,
        /// Sample images shown with their CAM, pseudo-label and ground truth.
        #[arg(long, default_value_t = 8)]
        samples: usize,
    },
    /// Show versions and what this machine offers (libtorch, CUDA, MPI, NCCL).
    Info,
}

#[derive(Subcommand, Debug)]
pub enum DataCommand {
    /// Import a dataset into Parquet shards.
    Import {
        #[command(subcommand)]
        source: ImportSourceArgs,
    },
    /// Check every shard and row; exits non-zero on any problem and lists every bad row.
    Verify {
        dir: PathBuf,
        /// The image dataset a pseudo-label dataset belongs to: each mask must then have its
        /// image's size (pseudo-label rows do not record it).
        #[arg(long)]
        images: Option<PathBuf>,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Scribble labels drawn from an image dataset's ground-truth masks (docs/datasets.md,
    /// "Scribbles"), written in the pseudo-label format for `seg.labels`.
    Scribbles {
        /// Draw the strokes from the ground-truth masks (the one source this command has; ScribbleSup's
        /// files come in with `data import voc --scribbles`).
        #[arg(long, required = true)]
        from_masks: bool,
        /// The image dataset (with masks).
        #[arg(long)]
        data: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Brush diameter in pixels.
        #[arg(long, default_value_t = crate::data::scribble::FromMasks::default().brush)]
        brush: f64,
        /// A region's walk length, as a multiple of the square root of its area.
        #[arg(long, default_value_t = crate::data::scribble::FromMasks::default().length)]
        length: f64,
        /// The walk keeps to pixels at least this share of the region's depth inside it.
        #[arg(long, default_value_t = crate::data::scribble::FromMasks::default().erosion)]
        erosion: f64,
        /// Regions of fewer pixels get no stroke.
        #[arg(long, default_value_t = crate::data::scribble::FromMasks::default().min_area)]
        min_area: usize,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Redo every shard, also those an earlier run finished.
        #[arg(long)]
        force: bool,
    },
    /// Counts, class histogram and image sizes of a dataset.
    Inspect {
        dir: PathBuf,
        /// Print the statistics as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImportSourceArgs {
    /// Generate the embedded synthetic dataset (docs/synthetic.md).
    Synthetic {
        #[arg(long)]
        out: PathBuf,
        // The defaults are the library's (`data.synthetic` of the config, the generator's).
        #[arg(long, default_value_t = crate::config::SyntheticConfig::default().train_images)]
        images: u64,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Image side in pixels.
        #[arg(long, default_value_t = crate::data::synthetic::SyntheticParams::default().size)]
        size: u32,
        #[arg(long, default_value_t = crate::data::synthetic::SyntheticParams::default().classes)]
        classes: u16,
        /// Split name recorded in the manifest.
        #[arg(long, default_value = "train")]
        split: String,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// PASCAL VOC (VOCdevkit layout).
    Voc {
        /// The VOC2012 directory (holding JPEGImages, ImageSets, ...).
        #[arg(long)]
        root: PathBuf,
        /// Split list under ImageSets/Segmentation (e.g. train_aug, val).
        #[arg(long)]
        split: String,
        #[arg(long)]
        out: PathBuf,
        /// ScribbleSup's annotation folder (one `<id>.xml` per image): also writes the
        /// scribbles, in the pseudo-label format, to --scribbles-out.
        #[arg(long)]
        scribbles: Option<PathBuf>,
        /// Where the scribbles go (default: `<out>-scribbles`).
        #[arg(long, requires = "scribbles")]
        scribbles_out: Option<PathBuf>,
        /// The strokes' brush diameter in pixels.
        #[arg(long, default_value_t = 3.0)]
        scribble_brush: f64,
        #[command(flatten)]
        write: WriteArgs,
    },
    /// MS COCO (instances_*.json and an image folder).
    Coco {
        #[arg(long)]
        annotations: PathBuf,
        #[arg(long)]
        images: PathBuf,
        #[arg(long)]
        out: PathBuf,
        /// Keep images that have no annotations (empty labels, background mask).
        #[arg(long)]
        keep_unlabeled: bool,
        #[command(flatten)]
        write: WriteArgs,
    },
}

/// Options of every importer's output.
#[derive(Args, Debug, Clone)]
pub struct WriteArgs {
    /// Images per shard file.
    #[arg(long, default_value_t = crate::data::importer::ImportOptions::default().shard_rows)]
    pub shard_rows: usize,
    /// Rows per Parquet row group.
    #[arg(long, default_value_t = crate::data::shard::ShardLayout::default().rows_per_group)]
    pub rows_per_group: usize,
    /// Replace an existing dataset at --out.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum TrainCommand {
    /// The CAM classifier (docs/methods.md §1) on data.train.
    Cam {
        #[command(flatten)]
        config: ConfigArgs,
        /// Continue from the run's latest checkpoint.
        #[arg(long)]
        resume: bool,
    },
    /// The segmenter (`[seg]`, docs/segmenter.md) on data.train and its pseudo-labels.
    Seg {
        #[command(flatten)]
        config: ConfigArgs,
        /// Continue from the latest checkpoint in `<run dir>/seg`.
        #[arg(long)]
        resume: bool,
    },
    /// IRNet's inter-pixel relation network (`[irn]`, docs/methods.md §8) on data.train and its
    /// irn_seeds pseudo-labels.
    Irn {
        #[command(flatten)]
        config: ConfigArgs,
        /// Continue from the latest checkpoint in `<run dir>/irn`.
        #[arg(long)]
        resume: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum EvalCommand {
    /// The CAM dataset of cam.split: τ sweep, best τ, per-class IoU, image-label baseline.
    Cam(ConfigArgs),
    /// The pseudo-labels of cam.split: mIoU (255 ignored), per-class IoU, share of pixels labelled.
    Pseudo(ConfigArgs),
    /// The segmenter's predictions of seg.infer.split, without and with the CRF (those made).
    Seg(ConfigArgs),
}

#[derive(Subcommand, Debug)]
pub enum ExportCommand {
    /// Palette PNGs (VOC colours, 255 white) named <id>.png, as SegmentationClass folders hold them.
    Png {
        /// A pseudo-label dataset, or an image dataset (its ground-truth masks).
        #[arg(long)]
        labels: PathBuf,
        /// Output folder (created; existing files of the same names are replaced).
        #[arg(long)]
        out: PathBuf,
    },
}

/// A map-phase stage's arguments.
#[derive(Args, Debug, Clone)]
pub struct MapArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Redo every task, also those an earlier run finished.
    #[arg(long)]
    pub force: bool,
}

#[derive(Subcommand, Debug)]
pub enum ConfigCommand {
    /// Print the resolved config (file + overrides + defaults) as TOML.
    Show(ConfigArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ConfigArgs {
    /// TOML config file; without it the defaults apply.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a key: `--set section.key=value` (repeatable; the value in TOML syntax).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub overrides: Vec<String>,
}

//! Thin entry point: parse the CLI, join the world, call the stage, map the outcome to an exit code.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;
use wsss_dist::cli::{Cli, Command, ConfigArgs, ConfigCommand, DataCommand, EvalCommand, ExportCommand, TrainCommand};
use wsss_dist::config::Config;
use wsss_dist::data::scribble::FromMasks;
use wsss_dist::dist::World;
use wsss_dist::stages::{self, Summary};
use wsss_dist::stop::Stopped;

/// Exit code of a stage that ran but found problems (e.g. `data verify`).
const EXIT_PROBLEMS: u8 = 1;
/// Exit code of a stage that could not run (bad input, I/O).
const EXIT_ERROR: u8 = 2;
/// Exit code of a stage stopped cleanly by a signal (a checkpoint or the finished tasks kept).
const EXIT_STOPPED: u8 = 3;

/// Keeps freed memory in the process instead of handing it back to the kernel at once: the
/// map phase allocates and frees the same large buffers for every image, and with glibc's
/// defaults each image pays for its pages again (measured: ~15% of `pseudo-label`'s time).
/// The peak stays what it was; only the return of memory below it is given up.
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; it runs before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
    }
}

/// A write past the file-size limit (`ulimit -f`) then fails with EFBIG and takes the path of
/// any failed write (named, temporary files removed) instead of killing the process by SIGXFSZ
/// with nothing said and a temporary file left.
fn fail_writes_past_the_file_size_limit() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler; it runs before
    // any thread starts.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

fn main() -> ExitCode {
    keep_freed_memory();
    fail_writes_past_the_file_size_limit();
    // Before any tch call: libtorch's CUDA backend, where the machine has one.
    let cuda_backend = wsss_dist::dist::device::load_cuda_backend();
    let cli = Cli::parse();
    let world = World::from_env();
    // Rank 0 logs; the other ranks only warn and fail (WSSS_LOG overrides both).
    let level = if world.as_ref().is_ok_and(|w| !w.is_root()) { "warn" } else { "info" };
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org): SLURM
    // output files and `2> log` get plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("WSSS_LOG").unwrap_or_else(|_| EnvFilter::new(level)))
        .with_ansi(colour)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    if let Err(reason) = &cuda_backend {
        tracing::debug!("libtorch's CUDA backend is not loaded ({reason}): CPU only");
    }
    let world = match world {
        Ok(world) => world,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    if stops_cleanly(&cli.command) {
        if let Err(e) = wsss_dist::stop::install() {
            tracing::warn!("cannot install the stop-signal handlers ({e}): a signal will end the job at once");
        }
    }
    match dispatch(&cli.command, &world) {
        Err(e) if e.downcast_ref::<Stopped>().is_some() => {
            // Every rank stops at the same point, so all meet here; rank 0 says so for all.
            if world.is_root() {
                tracing::warn!("{e}");
            }
            world.barrier();
            ExitCode::from(EXIT_STOPPED)
        }
        Ok(summary) if summary.ok => {
            world.barrier();
            ExitCode::SUCCESS
        }
        Ok(_) => {
            world.barrier();
            ExitCode::from(EXIT_PROBLEMS)
        }
        Err(e) if world.size > 1 => {
            tracing::error!("rank {} of {}: {e:#}", world.rank, world.size);
            // Other ranks may wait in a collective: end them all.
            world.abort(EXIT_ERROR as i32);
        }
        Err(e) => {
            tracing::error!("{e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The stages that stop cleanly on SIGTERM/SIGINT/SIGUSR1 (training, map phases, the
/// pipeline); the others keep the default of ending at once.
fn stops_cleanly(command: &Command) -> bool {
    matches!(
        command,
        Command::Data { command: DataCommand::Scribbles { .. } }
            | Command::Train { .. }
            | Command::Cam { .. }
            | Command::PseudoLabel(_)
            | Command::Seg(_)
            | Command::Run { .. }
    )
}

fn dispatch(command: &Command, world: &World) -> anyhow::Result<Summary> {
    match command {
        Command::Data { command: DataCommand::Import { source } } => stages::import::run(source, world),
        Command::Data { command: DataCommand::Verify { dir, images, json } } => stages::verify::run(dir, images.as_deref(), *json, world),
        Command::Data { command: DataCommand::Inspect { dir, json } } => stages::inspect::run(dir, *json),
        Command::Data { command: DataCommand::Scribbles { from_masks: _, data, out, brush, length, erosion, min_area, seed, force } } => {
            let params = FromMasks { brush: *brush, length: *length, erosion: *erosion, min_area: *min_area, seed: *seed };
            stages::scribbles::run(data, out, &stages::scribbles::ScribbleSource::FromMasks(params), world, *force)
        }
        Command::Config { command: ConfigCommand::Show(args) } => {
            print!("{}", load(args)?.to_toml());
            Ok(Summary::ok(serde_json::Value::Null))
        }
        Command::Train { command: TrainCommand::Cam { config, resume } } => stages::train_cam::run(&load(config)?, world, *resume),
        Command::Train { command: TrainCommand::Seg { config, resume } } => stages::train_seg::run(&load(config)?, world, *resume),
        Command::Train { command: TrainCommand::Irn { config, resume } } => stages::train_irn::run(&load(config)?, world, *resume),
        Command::Cam { args, pseudo_labels: false } => stages::cam::run(&load(&args.config)?, world, args.force),
        Command::Cam { args, pseudo_labels: true } => {
            let (cams, labels) = stages::cam_and_labels::run(&load(&args.config)?, world, args.force)?;
            Ok(Summary { ok: cams.ok && labels.ok, details: serde_json::json!({ "cam": cams.details, "pseudo_label": labels.details }) })
        }
        Command::PseudoLabel(args) => stages::pseudo_label::run(&load(&args.config)?, world, args.force),
        Command::Seg(args) => stages::seg::run(&load(&args.config)?, world, args.force),
        Command::Export { command: ExportCommand::Png { labels, out } } => stages::export::run_png(labels, out),
        Command::Eval { command: EvalCommand::Cam(args) } => stages::eval::run_cam(&load(args)?, world),
        Command::Eval { command: EvalCommand::Pseudo(args) } => stages::eval::run_pseudo(&load(args)?, world),
        Command::Eval { command: EvalCommand::Seg(args) } => stages::eval::run_seg(&load(args)?, world),
        Command::Run { config, resume: _ } => stages::run::run(&load(config)?, world),
        Command::Report { config, out, samples } => stages::report::run(&load(config)?, out.as_deref(), *samples),
        Command::Info => stages::info::run(),
    }
}

fn load(args: &ConfigArgs) -> anyhow::Result<Config> {
    Ok(Config::load(args.config.as_deref(), &args.overrides)?)
}

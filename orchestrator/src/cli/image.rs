//! `ironclaw image build|list`: user-facing output over the library's
//! userland image builder (`ironclaw_orchestrator::userland`).

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use ironclaw_orchestrator::userland::{self, BuildSpec, Progress, Source};

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Build a root file system image (default: Debian bookworm minbase with python3).
    ///
    /// Idempotent: an image whose inputs did not change is not rebuilt.
    /// Example: ironclaw image build --add git --add make
    Build(BuildArgs),
    /// List the images in the cache.
    List,
}

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Name of the image in the cache; `ironclaw run` uses `default`.
    #[arg(long, default_value = userland::DEFAULT_IMAGE)]
    pub name: String,
    /// Extra Debian package to install (repeatable).
    #[arg(long = "add", value_name = "PACKAGE")]
    pub add: Vec<String>,
    /// Build from this local directory tree instead of debootstrap.
    #[arg(long, conflicts_with_all = ["from_tar", "add"])]
    pub from_dir: Option<PathBuf>,
    /// Build from this tar archive (any compression tar knows) instead of debootstrap.
    #[arg(long, conflicts_with_all = ["from_dir", "add"])]
    pub from_tar: Option<PathBuf>,
    /// Rebuild even if an image with the same inputs exists.
    #[arg(long)]
    pub force: bool,
}

/// Runs an `image` subcommand; returns the process exit code.
pub async fn image_command(cmd: ImageCommand, verbose: bool) -> anyhow::Result<i32> {
    match cmd {
        ImageCommand::Build(args) => {
            let spec = BuildSpec {
                name: args.name,
                source: match (args.from_dir, args.from_tar) {
                    (Some(d), _) => Source::Dir(absolute(&d)?),
                    (_, Some(t)) => Source::Tarball(absolute(&t)?),
                    _ => Source::debian(&args.add),
                },
                force: args.force,
            };
            let built = tokio::task::spawn_blocking(move || {
                userland::build(&spec, &mut |p| show_progress(&p, verbose))
            })
            .await??;
            if built.up_to_date {
                // Quiet on success: set-up runs this on every `scripts/ironclaw`.
                if verbose {
                    eprintln!(
                        "image {} is up to date: {}",
                        built.meta.name,
                        built.path.display()
                    );
                }
            } else {
                eprintln!(
                    "built image {} in {:.0} s: {} ({} MiB, sha256 {})",
                    built.meta.name,
                    built.meta.build_secs,
                    built.path.display(),
                    built.meta.size_bytes >> 20,
                    &built.meta.sha256[..16]
                );
            }
            Ok(0)
        }
        ImageCommand::List => {
            let dir = userland::images_dir();
            let mut names: Vec<String> = std::fs::read_dir(&dir)
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| {
                            e.file_name()
                                .to_str()
                                .and_then(|n| n.strip_suffix(".json"))
                                .map(String::from)
                        })
                        .collect()
                })
                .unwrap_or_default();
            names.sort();
            if names.is_empty() {
                eprintln!(
                    "no images in {}; build one with `ironclaw image build`",
                    dir.display()
                );
            }
            for name in names {
                match (userland::load_meta(&name), userland::find(&name)) {
                    (Ok(Some(m)), Ok(path)) => println!(
                        "{:<16} {:>6} MiB  {}",
                        m.name,
                        m.size_bytes >> 20,
                        path.display()
                    ),
                    (Err(e), _) | (_, Err(e)) => println!("{name:<16} (unusable: {e})"),
                    (Ok(None), _) => {}
                }
            }
            Ok(0)
        }
    }
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    Ok(std::path::absolute(p)?)
}

fn show_progress(p: &Progress, verbose: bool) {
    match p {
        Progress::Step { n, total, what } => eprintln!("[{n}/{total}] {what}"),
        Progress::Detail(line) if verbose => eprintln!("      {line}"),
        Progress::Detail(line) if std::io::stderr().is_terminal() => {
            // One live status line instead of debootstrap's hundreds.
            let mut l: String = line.chars().take(100).collect();
            l.push_str("\x1b[K");
            eprint!("      {l}\r");
        }
        Progress::Detail(_) => {}
    }
}

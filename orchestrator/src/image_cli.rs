//! The `ironclaw image …` commands and the `run` options for images and file
//! copies: argument parsing and user-facing output over [`crate::rootfs`] and
//! [`crate::agent::files`].

use std::io::IsTerminal;
use std::path::{Path, PathBuf};

use crate::agent::{AgentClient, FileError};
use crate::rootfs::{self, BuildSpec, Progress, RootfsError, Source};

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
    #[arg(long, default_value = rootfs::DEFAULT_IMAGE)]
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
                rootfs::build(&spec, &mut |p| show_progress(&p, verbose))
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
            let dir = rootfs::images_dir();
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
                match (rootfs::load_meta(&name), rootfs::find(&name)) {
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

/// Which root file system `ironclaw run` boots: `--no-image` → none;
/// `--image NAME|PATH` → that one; else the default image when it was built.
pub fn choose_rootfs(image: Option<&str>, no_image: bool) -> Result<Option<PathBuf>, RootfsError> {
    if no_image {
        return Ok(None);
    }
    match image {
        // A path (has a slash or an extension) is used as is; a bare word names a cached image.
        Some(i) if i.contains('/') || i.contains('.') => Ok(Some(PathBuf::from(i))),
        Some(name) => rootfs::find(name).map(Some),
        None => Ok(rootfs::default_image()),
    }
}

/// `--copy-in LOCAL:GUEST`: split at the last colon (the guest path has none).
pub fn parse_copy_in(spec: &str) -> anyhow::Result<(PathBuf, String)> {
    let (l, g) = spec
        .rsplit_once(':')
        .filter(|(l, g)| !l.is_empty() && !g.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--copy-in {spec:?} is not of the form LOCAL:GUEST"))?;
    Ok((PathBuf::from(l), g.to_string()))
}

/// `--copy-out GUEST:LOCAL`: split at the first colon (the guest path has none).
pub fn parse_copy_out(spec: &str) -> anyhow::Result<(String, PathBuf)> {
    let (g, l) = spec
        .split_once(':')
        .filter(|(g, l)| !l.is_empty() && !g.is_empty())
        .ok_or_else(|| anyhow::anyhow!("--copy-out {spec:?} is not of the form GUEST:LOCAL"))?;
    Ok((g.to_string(), PathBuf::from(l)))
}

/// Copies `local` into the guest at `guest`, creating the guest's parent directories.
pub async fn copy_in(agent: &AgentClient, local: &Path, guest: &str) -> Result<u64, FileError> {
    if let Some(parent) = Path::new(guest).parent().and_then(Path::to_str) {
        if !parent.is_empty() && parent != "/" {
            agent.mkdir(parent, 0o755, true).await?;
        }
    }
    agent.put_file(local, guest).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_specs() {
        assert_eq!(
            parse_copy_in("a:b/c.txt:/root/c.txt").unwrap(),
            (PathBuf::from("a:b/c.txt"), "/root/c.txt".to_string())
        );
        assert_eq!(
            parse_copy_out("/root/out.txt:./x:y").unwrap(),
            ("/root/out.txt".to_string(), PathBuf::from("./x:y"))
        );
        for bad in ["nocolon", ":x", "x:"] {
            assert!(parse_copy_in(bad).is_err(), "{bad}");
            assert!(parse_copy_out(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn no_image_wins() {
        assert_eq!(choose_rootfs(Some("/x/y.ext4"), true).unwrap(), None);
        assert_eq!(
            choose_rootfs(Some("/x/y.ext4"), false).unwrap(),
            Some(PathBuf::from("/x/y.ext4"))
        );
    }
}

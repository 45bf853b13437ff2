//! A build: the root tree from debootstrap, a tarball or a directory, its
//! ext4 image stored beside its metadata, older images of the name removed.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use super::catalog::{find, load_meta, meta_path, validate_name, validate_package, IMAGES_SUBDIR};
use super::ext4::make_ext4;
use super::key::{build_key, sha256_file};
use super::step::run_logged;
use super::workdir::{remove_stale_work_dirs, WorkDir};
use super::{
    io_err, BuildSpec, Built, ImageMeta, Progress, Source, UserlandError, DEFAULT_IMAGE,
    FORMAT_VERSION,
};

/// Builds the image `spec` describes, unless an image with the same inputs
/// exists (and `spec.force` is off). Blocking; takes about a minute for the
/// default image.
pub fn build(spec: &BuildSpec, progress: &mut dyn FnMut(Progress)) -> Result<Built, UserlandError> {
    validate_name(&spec.name)?;
    match &spec.source {
        Source::Debootstrap { packages, .. } => {
            for p in packages {
                validate_package(p)?;
            }
        }
        Source::Dir(d) if !d.is_dir() => return Err(UserlandError::NotADirectory(d.clone())),
        Source::Tarball(t) if !t.is_file() => return Err(UserlandError::NotAFile(t.clone())),
        _ => {}
    }
    let dir = crate::cache::trusted_dir(IMAGES_SUBDIR)?;
    // One build at a time per cache: a second builder waits, then finds the
    // image up to date.
    let _lock = crate::cache::FileLock::acquire(&dir.join(".lock"))?;
    remove_stale_work_dirs(&dir);

    let key = build_key(&spec.source)?;
    if !spec.force {
        if let (Some(meta), Ok(path)) = (load_meta(&spec.name)?, find(&spec.name)) {
            if meta.key == key && meta.format_version == FORMAT_VERSION {
                return Ok(Built {
                    path,
                    meta,
                    up_to_date: true,
                });
            }
        }
    }

    let started = Instant::now();
    let work = WorkDir::create(&dir)?;
    let total = match spec.source {
        Source::Debootstrap { .. } => 4,
        Source::Tarball(_) => 3,
        Source::Dir(_) => 2,
    };

    let (root, mut n) = match &spec.source {
        Source::Debootstrap {
            suite,
            mirror,
            packages,
        } => {
            progress(Progress::Step {
                n: 1,
                total,
                what: format!(
                    "debootstrap {suite} (minbase + {}) from {mirror}",
                    packages.join(", ")
                ),
            });
            let root = work.path.join("root");
            let tool = crate::vm::host::which("debootstrap").ok_or(UserlandError::MissingTool {
                tool: "debootstrap",
                hint: "apt-get install debootstrap (or run scripts/setup.sh)",
            })?;
            let mut cmd = Command::new(tool);
            cmd.arg("--variant=minbase");
            if !packages.is_empty() {
                cmd.arg(format!("--include={}", packages.join(",")));
            }
            cmd.arg(suite).arg(&root).arg(mirror);
            run_logged("debootstrap", cmd, &work.path.join("build.log"), progress)?;
            progress(Progress::Step {
                n: 2,
                total,
                what: "tidying the tree (package caches, hostname)".into(),
            });
            tidy_debian_root(&root)?;
            (root, 3)
        }
        Source::Tarball(tar) => {
            progress(Progress::Step {
                n: 1,
                total,
                what: format!("unpacking {}", tar.display()),
            });
            let root = work.path.join("root");
            fs::create_dir(&root).map_err(io_err(format!("creating {}", root.display())))?;
            let mut cmd = Command::new("tar");
            cmd.args(["--numeric-owner", "-xpf"])
                .arg(tar)
                .arg("-C")
                .arg(&root);
            run_logged("tar", cmd, &work.path.join("build.log"), progress)?;
            (root, 2)
        }
        Source::Dir(d) => (d.clone(), 1),
    };

    let file = format!("{}-{key}.ext4", spec.name);
    let tmp_image = work.path.join("image.ext4");
    progress(Progress::Step {
        n,
        total,
        what: format!("writing the ext4 image of {}", root.display()),
    });
    make_ext4(&root, &tmp_image, &work.path.join("build.log"), progress)?;
    n += 1;
    progress(Progress::Step {
        n,
        total,
        what: "checksumming and storing the image".into(),
    });
    let (sha256, size_bytes) = sha256_file(&tmp_image)?;
    let meta = ImageMeta {
        format_version: FORMAT_VERSION,
        name: spec.name.clone(),
        file: file.clone(),
        key,
        source: spec.source.clone(),
        size_bytes,
        sha256,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
        build_secs: started.elapsed().as_secs_f64(),
    };
    let path = dir.join(&file);
    fs::rename(&tmp_image, &path)
        .map_err(io_err(format!("moving the image to {}", path.display())))?;
    let tmp_meta = work.path.join("meta.json");
    fs::write(
        &tmp_meta,
        serde_json::to_vec_pretty(&meta).expect("metadata serializes"),
    )
    .map_err(io_err(format!("writing {}", tmp_meta.display())))?;
    let final_meta = meta_path(&spec.name);
    fs::rename(&tmp_meta, &final_meta)
        .map_err(io_err(format!("writing {}", final_meta.display())))?;
    remove_old_images(&dir, &spec.name, &file);
    Ok(Built {
        path,
        meta,
        up_to_date: false,
    })
}

/// Builds the default image unless it is up to date; returns its path.
pub fn ensure_default_image(progress: &mut dyn FnMut(Progress)) -> Result<PathBuf, UserlandError> {
    let spec = BuildSpec {
        name: DEFAULT_IMAGE.into(),
        source: Source::debian(&[]),
        force: false,
    };
    build(&spec, progress).map(|b| b.path)
}

/// What a debootstrapped tree needs for a VM and does not need at all.
fn tidy_debian_root(root: &Path) -> Result<(), UserlandError> {
    // Downloaded packages and package lists: dead weight in every VM (which
    // has no network to use apt anyway).
    for dir in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let d = root.join(dir);
        if let Ok(rd) = fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_file() && !p.is_symlink() {
                    let _ = fs::remove_file(&p);
                }
            }
        }
    }
    for f in [
        "var/cache/apt/pkgcache.bin",
        "var/cache/apt/srcpkgcache.bin",
    ] {
        let _ = fs::remove_file(root.join(f));
    }
    let write = |rel: &str, data: &str| {
        let p = root.join(rel);
        fs::write(&p, data).map_err(io_err(format!("writing {}", p.display())))
    };
    write("etc/hostname", "ironclaw\n")?;
    write(
        "etc/hosts",
        "127.0.0.1\tlocalhost ironclaw\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )?;
    // No network: an empty resolver configuration, not the host's.
    write("etc/resolv.conf", "")?;
    Ok(())
}

/// Older image files of `name`, replaced by `keep`. A VM still running from
/// one keeps its open file; the name just goes away.
fn remove_old_images(dir: &Path, name: &str, keep: &str) {
    let prefix = format!("{name}-");
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let f = e.file_name().to_string_lossy().into_owned();
        if f != keep
            && f.ends_with(".ext4")
            && f.strip_prefix(&prefix).is_some_and(|rest| {
                // `<name>-<24 hex>.ext4`, so `a` never removes the images of `a-b`.
                rest.len() == 24 + 5 && rest[..24].chars().all(|c| c.is_ascii_hexdigit())
            })
        {
            let _ = fs::remove_file(e.path());
        }
    }
}

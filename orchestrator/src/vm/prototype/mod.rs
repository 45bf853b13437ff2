//! Prototypes: a VM booted once until its agent answers, paused and saved;
//! clones are restored from the snapshot in a fraction of a cold boot.
//!
//! A prototype is keyed by a hash of everything that shapes the snapshot
//! (backend, kernel, initramfs and rootfs identity, vCPUs, memory,
//! accelerator, VMM binary, snapshot format). It lives in
//! `<cache>/prototypes/<key>/` with a `meta.json`; a build writes into a
//! temporary directory that is renamed into place only when complete, so a
//! failed build is never used. A snapshot file whose size or SHA-256 does
//! not match its metadata is removed and rebuilt.
//!
//! This module never asks which backend it drives: the [`Hypervisor`] a
//! config selects boots the VM for snapshotting, its [`VmInstance`] writes
//! the snapshot, and the same backend restores it
//! (QEMU: virtio-serial transport and migration to a file; Firecracker: its
//! snapshot API). Every clone gets fresh entropy and the current wall clock
//! before it is handed out.
//!
//! Building, restoring and spawning from a prototype are here; its metadata
//! is in `meta`, its key in `key`, and the cache on disk (checked loading,
//! pruning, listing, removing) in `store`.
//!
//! [`VmInstance`]: super::VmInstance

use std::fs;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

use super::accel::Accel;
use super::backend::{Hypervisor, LaunchPurpose};
use super::config::VmConfig;
use super::spawn::{start_vm, Start};
use super::{VmError, VmHandle};

mod key;
mod meta;
mod store;

pub use key::key_for;
pub use meta::{Prototype, PrototypeMeta, SnapshotFileMeta};
pub use store::{list, prototypes_dir, prune, remove};

use key::{key_with, snapshot_backend};
use meta::{FORMAT_VERSION, META_FILE};
use store::{io, key_lock_path, load_checked, PROTOTYPES_SUBDIR};

/// The prototype for `config`, built on first use. `progress` hears about a build.
pub async fn ensure(
    config: &VmConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Prototype, VmError> {
    config.validate()?;
    let backend = snapshot_backend(config)?;
    let kind = backend.kind();
    let (key, accel) = key_with(config, backend.as_ref())?;
    // Snapshots are restored as whole VMs: only a cache of our own will do.
    let root = crate::cache::trusted_dir(PROTOTYPES_SUBDIR)?;
    let dir = root.join(&key);
    let _lock = {
        let path = key_lock_path(&root, &key);
        tokio::task::spawn_blocking(move || crate::cache::FileLock::acquire(&path))
            .await
            .map_err(|e| VmError::TaskFailed(format!("locking the prototype: {e}")))??
    };
    let checked = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || load_checked(&dir, kind))
            .await
            .map_err(|e| VmError::TaskFailed(format!("checking the prototype: {e}")))??
    };
    if let Some(p) = checked {
        return Ok(p);
    }
    if dir.exists() {
        progress("the prototype on disk is incomplete or damaged: rebuilding it");
        fs::remove_dir_all(&dir).map_err(io(format!("removing {}", dir.display())))?;
    }
    progress(&format!(
        "building a {kind} prototype VM (once per kernel/image/size; key {key})"
    ));
    let proto = build(config, &key, accel, backend.as_ref(), &root).await?;
    let pruned = prune(&proto.meta);
    if !pruned.is_empty() {
        progress(&format!(
            "removed {} superseded or stale prototype(s)",
            pruned.len()
        ));
    }
    progress(&format!(
        "prototype ready: boot {} ms, snapshot {} ms, {} MiB",
        proto.meta.boot_ms,
        proto.meta.snapshot_ms,
        proto.disk_bytes() >> 20
    ));
    Ok(proto)
}

async fn build(
    config: &VmConfig,
    key: &str,
    accel: Accel,
    backend: &dyn Hypervisor,
    root: &Path,
) -> Result<Prototype, VmError> {
    let mut rnd = [0u8; 4];
    getrandom::getrandom(&mut rnd).map_err(|e| VmError::Randomness(e.to_string()))?;
    let tmp = root.join(format!(".build-{key}-{}", hex::encode(rnd)));
    let result = build_into(config, key, accel, backend, &tmp).await;
    match result {
        Ok(mut proto) => {
            let dest = root.join(key);
            fs::rename(&tmp, &dest)
                .map_err(io(format!("moving the prototype to {}", dest.display())))?;
            proto.dir = dest;
            Ok(proto)
        }
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// Boots the prototype VM, proves its agent runs commands, snapshots it into
/// `out` and writes the metadata.
async fn build_into(
    config: &VmConfig,
    key: &str,
    accel: Accel,
    backend: &dyn Hypervisor,
    out: &Path,
) -> Result<Prototype, VmError> {
    fs::create_dir_all(out).map_err(io(format!("creating {}", out.display())))?;
    let config = VmConfig {
        id: format!("proto-{}", &key[..12.min(key.len())]),
        ..config.clone()
    };
    let vm = start_vm(backend, &config, Start::Boot(LaunchPurpose::Snapshot)).await?;
    prove_agent_runs(&vm).await?;
    if config.rootfs.is_some() {
        warm_page_cache(&vm).await;
    }
    let boot_ms = vm.timings.total.as_millis() as u64;
    let t1 = std::time::Instant::now();
    let names = vm.into_snapshot(out).await?;
    let snapshot_ms = t1.elapsed().as_millis() as u64;
    let files = {
        let out = out.to_path_buf();
        tokio::task::spawn_blocking(move || super::snapshot_files::describe(&out, &names))
            .await
            .map_err(|e| VmError::TaskFailed(format!("hashing the snapshot: {e}")))??
    };
    let meta = PrototypeMeta {
        key: key.to_string(),
        format: FORMAT_VERSION,
        ironclaw_version: env!("CARGO_PKG_VERSION").into(),
        kernel: config.kernel.clone(),
        initramfs: config.initramfs.clone(),
        rootfs: config.rootfs.clone(),
        vcpus: config.vcpus,
        memory_mib: config.memory_mib,
        accel,
        backend: backend.kind(),
        files,
        created_unix: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs(),
        boot_ms,
        snapshot_ms,
    };
    let text = serde_json::to_string_pretty(&meta).expect("meta serializes");
    fs::write(out.join(META_FILE), text).map_err(io("writing meta.json"))?;
    Ok(Prototype {
        dir: out.to_path_buf(),
        meta,
    })
}

/// Runs `true` in a freshly booted prototype VM: proves the agent can run
/// things before it is frozen.
async fn prove_agent_runs(vm: &VmHandle) -> Result<(), VmError> {
    let out = vm.agent().run(super::exec_request(["true"]), None).await?;
    if out.status.code != Some(0) {
        return Err(VmError::GuestCheckFailed {
            vm: vm.id.clone(),
            command: "true".into(),
            status: format!("{:?}", out.status),
        });
    }
    Ok(())
}

/// What a typical first command in an image touches: its shell, a few
/// tools, and `python3` with the standard library modules most scripts
/// import. Run in the prototype, it leaves those files in the guest's page
/// cache, which every clone inherits, so a clone's first `python3` reads
/// nothing from its disk.
const WARM_UP: &str = "ls / >/dev/null; cat /dev/null; grep -q x /dev/null; sed -n 1p /dev/null; \
     if command -v python3 >/dev/null; then python3 -c 'import os, sys, re, json, subprocess, \
     pathlib, collections, functools, itertools, datetime, typing, shutil, tempfile, io, base64, \
     hashlib, random, math, time, argparse, logging, threading, socket, urllib.parse, csv'; fi; true";

/// Runs [`WARM_UP`] in a freshly booted prototype of an image. A failure
/// costs clones their warm cache, nothing else: it is logged, not fatal.
async fn warm_page_cache(vm: &VmHandle) {
    let run = vm
        .agent()
        .run(super::exec_request(["sh", "-c", WARM_UP]), None);
    match run.await {
        Ok(out) if out.status.code == Some(0) => {}
        Ok(out) => {
            tracing::warn!(vm = %vm.id, status = ?out.status, stderr = %String::from_utf8_lossy(&out.stderr), "warming the prototype's page cache failed")
        }
        Err(e) => tracing::warn!(vm = %vm.id, "warming the prototype's page cache failed: {e}"),
    }
}

/// Restores a clone of `proto` named `task_id`, with fresh entropy and clock.
/// `config` supplies the id-independent settings (timeouts); the machine
/// shape and the backend come from the prototype.
pub async fn restore(
    proto: &Prototype,
    task_id: &str,
    config: &VmConfig,
) -> Result<VmHandle, VmError> {
    let config = clone_config(proto, task_id, config);
    let vm = super::spawn::restore_vm(&config, &proto.files()).await?;
    tracing::info!(vm = %vm.id, prototype = %proto.meta.key, "clone ready");
    Ok(vm)
}

/// The config of `proto`'s clone `task_id`: the machine shape and backend of
/// the prototype, the rest (timeouts, confinement) from `config`.
pub fn clone_config(proto: &Prototype, task_id: &str, config: &VmConfig) -> VmConfig {
    VmConfig {
        id: task_id.to_string(),
        kernel: proto.meta.kernel.clone(),
        initramfs: proto.meta.initramfs.clone(),
        rootfs: proto.meta.rootfs.clone(),
        vcpus: proto.meta.vcpus,
        memory_mib: proto.meta.memory_mib,
        accel: match proto.meta.accel {
            Accel::Kvm => super::config::AccelChoice::Kvm,
            Accel::Tcg => super::config::AccelChoice::Tcg,
        },
        backend: proto.meta.backend.into(),
        ..config.clone()
    }
}

/// Spawns `task_id` from the prototype for `config` (built on first use).
pub async fn spawn_from_prototype(
    task_id: &str,
    config: &VmConfig,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<VmHandle, VmError> {
    let config = VmConfig {
        id: task_id.to_string(),
        ..config.clone()
    };
    let proto = ensure(&config, progress).await?;
    match restore(&proto, task_id, &config).await {
        Ok(vm) => Ok(vm),
        Err(e @ VmError::RestoreFailed { .. }) => {
            // A snapshot the VMM cannot load (or whose guest never answers) is
            // damaged in a way the checksum did not catch, or the VMM changed:
            // rebuild once, never retry blindly. Other failures (a missing
            // tool, the host's files) would not be cured by a rebuild.
            progress(&format!(
                "restoring the prototype failed ({e}); rebuilding it"
            ));
            let _ = fs::remove_dir_all(&proto.dir);
            let proto = ensure(&config, progress).await?;
            restore(&proto, task_id, &config).await
        }
        Err(e) => Err(e),
    }
}

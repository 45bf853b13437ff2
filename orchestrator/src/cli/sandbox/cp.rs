//! `ironclaw sandbox cp`: files in and out streamed (never whole in
//! memory), directories with `-r` as tar streams made and unpacked by the
//! host's `tar`, `-` for stdin or stdout.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{anyhow, bail, Context};
use hyper::body::Incoming;
use hyper::Method;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::client::{self, next_data, query_escape, sandbox_path, status_of, Client};

#[derive(clap::Args)]
pub struct CpArgs {
    /// Copy a directory (packed and unpacked with `tar` on this host).
    #[arg(short, long)]
    pub recursive: bool,
    /// What to copy: a local path, `-` (stdin), or ID:/path in a sandbox.
    pub src: String,
    /// Where to: a local path (an existing directory gets the source's
    /// name in it), `-` (stdout), or ID:/path.
    pub dst: String,
}

#[derive(Debug, PartialEq)]
enum Side {
    /// `-`: stdin as a source, stdout as a destination.
    Std,
    Local(PathBuf),
    Remote {
        id: String,
        path: String,
    },
}

fn side(s: &str) -> Side {
    if s == "-" {
        return Side::Std;
    }
    match s.split_once(':') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') && path.starts_with('/') => {
            Side::Remote {
                id: id.to_string(),
                path: path.to_string(),
            }
        }
        _ => Side::Local(PathBuf::from(s)),
    }
}

pub async fn cp(client: &Client, a: CpArgs) -> anyhow::Result<i32> {
    match (side(&a.src), side(&a.dst)) {
        (Side::Remote { .. }, Side::Remote { .. }) => {
            bail!("cp: both sides are in a sandbox; one must be here (a path or -)")
        }
        (from, Side::Remote { id, path }) => upload(client, from, &id, &path, a.recursive).await?,
        (Side::Remote { id, path }, to) => download(client, &id, &path, to, a.recursive).await?,
        _ => bail!("cp: one side must be in a sandbox, written ID:/path"),
    }
    Ok(0)
}

/// The last component of a sandbox path (None for `/`).
fn remote_name(path: &str) -> Option<&str> {
    path.trim_end_matches('/')
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// Whether `path` is a directory in the sandbox (false when missing).
async fn remote_is_dir(client: &Client, id: &str, path: &str) -> anyhow::Result<bool> {
    let url = sandbox_path(id, &format!("/files/stat?path={}", query_escape(path)));
    match client.json(Method::GET, &url, None).await {
        Ok(info) => Ok(info["kind"] == "dir"),
        Err(e) if status_of(&e).map(|s| s.as_u16()) == Some(404) => {
            // A missing sandbox is an error; a missing path is not.
            client
                .json(Method::GET, &sandbox_path(id, ""), None)
                .await?;
            Ok(false)
        }
        Err(e) => Err(e),
    }
}

async fn upload(
    client: &Client,
    from: Side,
    id: &str,
    path: &str,
    recursive: bool,
) -> anyhow::Result<()> {
    let local = match &from {
        Side::Local(p) => Some(p.as_path()),
        _ => None,
    };
    let meta = local
        .map(|p| std::fs::metadata(p).with_context(|| format!("cp: {}", p.display())))
        .transpose()?;
    if let (Some(p), Some(m)) = (local, &meta) {
        if m.is_dir() != recursive {
            bail!(
                "cp: {} {}",
                p.display(),
                if recursive {
                    "is not a directory (copy a file without -r)"
                } else {
                    "is a directory (copy it with -r)"
                }
            );
        }
    }
    // Into an existing directory: under the source's own name.
    let name = local.and_then(Path::file_name).and_then(|n| n.to_str());
    let dest = match name {
        Some(n) if path.ends_with('/') || remote_is_dir(client, id, path).await? => join(path, n),
        _ => path.to_string(),
    };
    if !recursive {
        let mut url = format!("/files?path={}", query_escape(&dest));
        if let Some(m) = &meta {
            use std::os::unix::fs::PermissionsExt;
            url += &format!("&mode={:o}", m.permissions().mode() & 0o7777);
        }
        let body = match local {
            Some(p) => client::reader_body(
                tokio::fs::File::open(p)
                    .await
                    .with_context(|| format!("cp: {}", p.display()))?,
            ),
            None => client::reader_body(tokio::io::stdin()),
        };
        let url = sandbox_path(id, &url);
        client
            .send(Method::PUT, &url, Some("application/octet-stream"), body)
            .await?;
        return Ok(());
    }
    let url = sandbox_path(id, &format!("/tar?path={}", query_escape(&dest)));
    let Some(dir) = local else {
        let body = client::reader_body(tokio::io::stdin());
        client
            .send(Method::PUT, &url, Some("application/x-tar"), body)
            .await?;
        return Ok(());
    };
    let mut tar = tar_command(dir, "-cf")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cp -r: starting tar")?;
    let out = tar.stdout.take().expect("piped");
    client
        .send(
            Method::PUT,
            &url,
            Some("application/x-tar"),
            client::reader_body(out),
        )
        .await?;
    tar_ended(tar, dir, "-cf").await
}

async fn download(
    client: &Client,
    id: &str,
    path: &str,
    to: Side,
    recursive: bool,
) -> anyhow::Result<()> {
    let url = if recursive {
        format!("/tar?path={}", query_escape(path))
    } else {
        format!("/files?path={}", query_escape(path))
    };
    // The answer's status comes before anything is made here.
    let resp = match client
        .send(Method::GET, &sandbox_path(id, &url), None, client::empty())
        .await
    {
        Err(e) if !recursive && status_of(&e).map(|s| s.as_u16()) == Some(400) => {
            bail!("{e:#}; copy a directory with `cp -r`")
        }
        other => other?,
    };
    let mut body = resp.into_body();
    let local = match to {
        Side::Local(p) => p,
        _ => return write_all(&mut body, &mut tokio::io::stdout()).await,
    };
    let dest = match remote_name(path) {
        Some(n) if local.is_dir() => local.join(n),
        _ => local,
    };
    if !recursive {
        let mut file = tokio::fs::File::create(&dest)
            .await
            .with_context(|| format!("cp: {}", dest.display()))?;
        let copied = write_all(&mut body, &mut file).await;
        if copied.is_err() {
            let _ = std::fs::remove_file(&dest);
        }
        return copied.with_context(|| format!("cp: {}", dest.display()));
    }
    match std::fs::create_dir(&dest) {
        Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
            return Err(e).with_context(|| format!("cp -r: {}", dest.display()));
        }
        _ => {}
    }
    let mut tar = tar_command(&dest, "-xf")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .context("cp -r: starting tar")?;
    let mut input = tar.stdin.take().expect("piped");
    let copied = write_all(&mut body, &mut input).await;
    drop(input);
    // Should tar stop early, its own failure says why.
    tar_ended(tar, &dest, "-xf").await?;
    copied
}

/// `tar -C dir -cf - .` or `tar -C dir -xf -`, killed if dropped.
fn tar_command(dir: &Path, op: &str) -> tokio::process::Command {
    let mut c = tokio::process::Command::new("tar");
    c.arg("-C").arg(dir).arg(op).arg("-");
    if op == "-cf" {
        c.arg(".");
    }
    c.stderr(Stdio::inherit()).kill_on_drop(true);
    c
}

async fn tar_ended(mut tar: tokio::process::Child, dir: &Path, op: &str) -> anyhow::Result<()> {
    let status = tar.wait().await.context("waiting for tar")?;
    if !status.success() {
        return Err(anyhow!(
            "cp -r: `tar -C {} {op} -` failed ({status})",
            dir.display()
        ));
    }
    Ok(())
}

/// Copies a streamed answer to `w` as it arrives.
async fn write_all<W: AsyncWrite + Unpin>(body: &mut Incoming, w: &mut W) -> anyhow::Result<()> {
    while let Some(data) = next_data(body).await? {
        w.write_all(&data).await?;
    }
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sides() {
        assert_eq!(side("-"), Side::Std);
        assert_eq!(
            side("sb-1:/work/x"),
            Side::Remote {
                id: "sb-1".into(),
                path: "/work/x".into()
            }
        );
        assert_eq!(side("./a:/b"), Side::Local("./a:/b".into()));
        assert_eq!(side("a:b"), Side::Local("a:b".into()));
        assert_eq!(side(":/x"), Side::Local(":/x".into()));
    }

    #[test]
    fn names() {
        assert_eq!(remote_name("/work/x"), Some("x"));
        assert_eq!(remote_name("/work/dir/"), Some("dir"));
        assert_eq!(remote_name("/"), None);
        assert_eq!(join("/work/", "x"), "/work/x");
    }
}

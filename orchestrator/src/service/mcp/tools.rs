//! The MCP tools: each a thin call of a [`Service`] method (the same ones
//! the REST API calls), with arguments shaped for models and outputs capped
//! for a model's context.

use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Extensions};
use rmcp::{tool, tool_router};

use super::ops::{self, decode, exec_body, write_file, DEFAULT_EXEC_OUTPUT, MAX_EXEC_OUTPUT};
use super::params::*;
use super::{reply, SandboxMcp};
use crate::service::error::ServiceError;
use crate::service::types::{
    CreateSandbox, CreateSnapshot, Encoding, ForkSandbox, SnapshotList, StdinBody,
};

#[tool_router(vis = "pub(super)")]
impl SandboxMcp {
    /// Create a sandbox: a fresh Linux microVM with its own file system and
    /// no network, or with `from_snapshot` a copy of a snapshot taken by
    /// sandbox_snapshot (its files, memory and background processes).
    /// Returns its `id` (pass it as `sandbox_id` to the other tools) and
    /// `expires_at`. It is destroyed after `timeout_s` (default 300) or by
    /// sandbox_destroy; destroy it when you are done.
    #[tool]
    async fn sandbox_create(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<CreateParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let req = CreateSandbox {
                    image: p.image,
                    vcpus: p.vcpus,
                    memory_mib: p.memory_mib,
                    env: p.env,
                    cwd: p.cwd,
                    labels: p.labels,
                    timeout_s: p.timeout_s,
                    idle_timeout_s: p.idle_timeout_s,
                    from_snapshot: p.from_snapshot,
                };
                self.service.create(&owner, req).await
            }
            .await,
        )
    }

    /// List your sandboxes: id, `state` (running, or paused: resume it with
    /// sandbox_resume), image, labels, expiry, running commands.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_list(&self, extensions: Extensions) -> CallToolResult {
        reply(
            self.owner(&extensions)
                .map(|owner| serde_json::json!({ "sandboxes": self.service.list(&owner) })),
        )
    }

    /// Destroy a sandbox and everything in it (its commands are killed).
    #[tool(annotations(destructive_hint = true))]
    async fn sandbox_destroy(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SandboxParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                self.service.destroy(&owner, &p.sandbox_id).await?;
                Ok(serde_json::json!({ "destroyed": p.sandbox_id }))
            }
            .await,
        )
    }

    /// Run a command in a sandbox and wait for it to end. Give `cmd` (a
    /// shell line, e.g. "pip list | head") or `argv`. Returns `exit_code`
    /// (null if killed by `signal`), `timed_out`, `stdout`, `stderr` (each
    /// capped at max_output_bytes, default 65536, with `*_truncated`) and
    /// `duration_ms`. For commands that run long or need input while they
    /// run, use sandbox_exec_start.
    #[tool]
    async fn sandbox_exec(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ExecParams>,
    ) -> CallToolResult {
        reply(async {
            let owner = self.owner(&extensions)?;
            let cap = p.max_output_bytes.unwrap_or(DEFAULT_EXEC_OUTPUT);
            if cap > MAX_EXEC_OUTPUT {
                return Err(ServiceError::bad_request(format!(
                    "max_output_bytes {cap} is more than {MAX_EXEC_OUTPUT}; redirect big output to a file and read parts of it"
                )));
            }
            let mut body = exec_body(p.cmd, p.argv, p.stdin, p.timeout_s, p.env, p.cwd);
            body.max_output_bytes = Some(cap);
            self.service.exec(&owner, &p.sandbox_id, body).await
        }.await)
    }

    /// Start a command in the background and return its `command_id` at
    /// once. Read its output with sandbox_exec_poll, feed it input with
    /// sandbox_exec_write_stdin (start it with keep_stdin_open), stop it
    /// with sandbox_exec_signal. The last 4 MiB of output are kept.
    #[tool]
    async fn sandbox_exec_start(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ExecStartParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let mut body = exec_body(p.cmd, p.argv, p.stdin, p.timeout_s, p.env, p.cwd);
                body.interactive_stdin = p.keep_stdin_open;
                let command = self
                    .service
                    .start_command(&owner, &p.sandbox_id, body, false)
                    .await?;
                Ok(crate::service::exec::command_info(&command))
            }
            .await,
        )
    }

    /// Read a background command's output from `cursor` (0 at first, then
    /// the previous `next_cursor`), waiting up to `wait_ms` for some.
    /// Returns `stdout`, `stderr` (256 KiB together at most per poll),
    /// `next_cursor` and `running`; once `running` is false, `end` has
    /// `exit_code`, `signal` and `timed_out`.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_exec_poll(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<PollParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                self.poll(&owner, p).await
            }
            .await,
        )
    }

    /// Write text to the standard input of a background command started
    /// with keep_stdin_open; `close` ends its input (EOF).
    #[tool]
    async fn sandbox_exec_write_stdin(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<StdinParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let written = p.data.as_ref().map_or(0, String::len);
                let body = StdinBody {
                    data: p.data,
                    encoding: Encoding::Utf8,
                    close: p.close,
                };
                self.service
                    .command_stdin(&owner, &p.sandbox_id, &p.command_id, body)
                    .await?;
                Ok(serde_json::json!({ "written_bytes": written, "closed": p.close }))
            }
            .await,
        )
    }

    /// Send a signal (default TERM; KILL cannot be ignored) to a background command.
    #[tool]
    async fn sandbox_exec_signal(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SignalParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let signal = p.signal.unwrap_or_else(|| "TERM".into());
                self.service
                    .command_signal(&owner, &p.sandbox_id, &p.command_id, &signal)?;
                Ok(serde_json::json!({ "signaled": signal }))
            }
            .await,
        )
    }

    /// Read a file from a sandbox, as text (default) or base64. At most the
    /// first 256 KiB (262144 bytes) are returned: `truncated` is then true,
    /// `size` is the whole file's and `note` says how to read further.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_fs_read(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ReadParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                self.read_file(&owner, p).await
            }
            .await,
        )
    }

    /// Write a whole file in a sandbox (text, or base64 for binary),
    /// creating missing parent directories and replacing an existing file.
    #[tool]
    async fn sandbox_fs_write(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<WriteParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let path = self.path(&owner, &p.sandbox_id, &p.path)?;
                let data = decode("content", p.content, p.encoding)?;
                write_file(&self.service, &owner, &p.sandbox_id, &path, &data, p.mode).await
            }
            .await,
        )
    }

    /// List a directory in a sandbox: each entry's name, kind (file, dir,
    /// symlink, other), size, mode and mtime.
    #[tool(annotations(read_only_hint = true))]
    async fn sandbox_fs_list(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ListParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let path = self.path(&owner, &p.sandbox_id, p.path.as_deref().unwrap_or("."))?;
                let path = path.strip_suffix("/.").unwrap_or(&path).to_string();
                self.service.list_dir(&owner, &p.sandbox_id, &path).await
            }
            .await,
        )
    }

    /// Remove a file or directory in a sandbox (`recursive` for a
    /// directory that is not empty).
    #[tool(annotations(destructive_hint = true))]
    async fn sandbox_fs_remove(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<RemoveParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let path = self.path(&owner, &p.sandbox_id, &p.path)?;
                self.service
                    .remove(&owner, &p.sandbox_id, &path, p.recursive)
                    .await?;
                Ok(serde_json::json!({ "removed": path }))
            }
            .await,
        )
    }

    /// Snapshot a sandbox: its files, memory and running processes, kept so
    /// that new sandboxes can start from this point (sandbox_create with
    /// `from_snapshot`), e.g. after installing dependencies or before a
    /// risky step. The sandbox keeps running (frozen for a moment while its
    /// state is written). Returns the snapshot's `id` (`snap-…`), `name`
    /// and `bytes`. It is kept for a retention time, or until snapshot_remove.
    #[tool]
    async fn sandbox_snapshot(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SnapshotParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let req = CreateSnapshot { name: p.name };
                self.service.snapshot(&owner, &p.sandbox_id, req).await
            }
            .await,
        )
    }

    /// Copy a running sandbox `count` times (default 1): it is snapshotted
    /// and that many new sandboxes are made from the snapshot, each with
    /// the same files, memory and background processes, independent from
    /// then on; to try several approaches from one state. Returns
    /// `sandboxes` (each with its `id`) and the `snapshot`. Destroy the
    /// copies when done.
    #[tool]
    async fn sandbox_fork(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<ForkParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                let req = ForkSandbox {
                    count: p.count,
                    timeout_s: p.timeout_s,
                    idle_timeout_s: None,
                    labels: p.labels,
                };
                self.service.fork(&owner, &p.sandbox_id, req).await
            }
            .await,
        )
    }

    /// Pause a sandbox you need later: its memory and files go to disk and
    /// its VM stops (no host memory used); its lifetime stops counting.
    /// Calls on it then fail with sandbox_paused until sandbox_resume.
    /// Commands started with sandbox_exec_start end; processes they left in
    /// the background (`server &`) run on after the resume.
    #[tool]
    async fn sandbox_pause(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SandboxParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                self.service.pause(&owner, &p.sandbox_id).await
            }
            .await,
        )
    }

    /// Resume a paused sandbox under the same sandbox_id: its files, memory
    /// and background processes as they were when paused; its lifetime
    /// counts on from where it stopped. Returns the sandbox.
    #[tool]
    async fn sandbox_resume(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SandboxParams>,
    ) -> CallToolResult {
        reply(
            async {
                let owner = self.owner(&extensions)?;
                self.service.resume(&owner, &p.sandbox_id).await
            }
            .await,
        )
    }

    /// List your snapshots: id, name, source_sandbox, bytes on disk,
    /// created_at and expires_at (when they are removed). Paused sandboxes
    /// are listed by sandbox_list.
    #[tool(annotations(read_only_hint = true))]
    async fn snapshot_list(&self, extensions: Extensions) -> CallToolResult {
        reply(self.owner(&extensions).map(|owner| SnapshotList {
            snapshots: self.service.list_snapshots(&owner),
        }))
    }

    /// Remove a snapshot (by id or name) to free its disk space; sandboxes
    /// already created from it are not affected.
    #[tool(annotations(destructive_hint = true))]
    async fn snapshot_remove(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<SnapshotIdParams>,
    ) -> CallToolResult {
        reply(self.owner(&extensions).and_then(|owner| {
            self.service.remove_snapshot(&owner, &p.snapshot_id)?;
            Ok(serde_json::json!({ "removed": p.snapshot_id }))
        }))
    }

    /// Run a program once in a throwaway sandbox (created, used, destroyed
    /// in this call): `language` python or sh, its `code`, optional extra
    /// `files` {path: content} in its working directory /work, optional
    /// `stdin`. Returns `exit_code`, `stdout`, `stderr` (64 KiB each at
    /// most), `timed_out`. Nothing persists between calls; use
    /// sandbox_create for state that must.
    #[tool]
    async fn run_code(
        &self,
        extensions: Extensions,
        Parameters(p): Parameters<RunCodeParams>,
    ) -> CallToolResult {
        let owner = match self.owner(&extensions) {
            Ok(owner) => owner,
            Err(e) => return reply::<()>(Err(e)),
        };
        // In a task of its own: the sandbox is destroyed even when the
        // client cancels the call (which drops this future).
        let run = tokio::spawn(ops::run_code(self.service.clone(), owner, p));
        reply(
            run.await
                .unwrap_or_else(|e| Err(ServiceError::internal(format!("run_code failed: {e}")))),
        )
    }
}

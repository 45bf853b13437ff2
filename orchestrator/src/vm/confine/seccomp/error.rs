//! Errors of compiling filters and of the audit supervisor.

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("compiling the {kind} seccomp filter: {source}")]
    Compile {
        kind: &'static str,
        #[source]
        source: seccompiler::BackendError,
    },
    #[error("the {kind} seccomp filter has {len} instructions, more than BPF allows ({max})")]
    TooLong {
        kind: &'static str,
        len: usize,
        max: usize,
    },
    #[error("seccomp audit supervisor: {0}")]
    Supervisor(#[source] std::io::Error),
}

//! The process group of a running request: what signals and kills reach.

/// A process group the agent started (its leader's pid is its id).
#[derive(Debug, Clone, Copy)]
pub struct ProcessGroup {
    pub pgid: i32,
}

impl ProcessGroup {
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's process group; no memory involved.
        unsafe { libc::kill(-self.pgid, sig) };
    }
    pub fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}

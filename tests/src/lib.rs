//! Helpers for the end-to-end tests.
//!
//! [`MountGuard`] spawns the `claudefs-fuse` binary and unmounts/kills it on
//! drop, with `--transport $CLAUDEFS_TEST_TRANSPORT` when that is set and
//! the test names no transport itself. The binary is `$CLAUDEFS_FUSE_BIN`, else `claudefs-fuse` in the
//! target dir of the running test (`<target>/<profile>/claudefs-fuse`).
//! FUSE tests need root and `/dev/fuse`: [`fuse_unavailable`] says why they
//! cannot run; in CI (`CI=true`) that is a failure, elsewhere a skip.
//!
//! [`testfs`] is a counting FUSE file system mounted in-process, for the
//! probe tests, and [`probes`] loads the probes for them; [`require_privileges`] decides whether a privileged test
//! can run here.

pub mod cpu;
pub mod exporter;
pub mod probes;
pub mod testfs;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Path of the `claudefs-fuse` binary.
pub fn fuse_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("CLAUDEFS_FUSE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap_or_default();
    // <target>/<profile>/deps/test-xxxx or <target>/<profile>/bench
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir.join("claudefs-fuse")
}

/// Why FUSE tests cannot run here, if they cannot. Panics in CI.
pub fn fuse_unavailable() -> Option<String> {
    let reason = if !is_root() {
        Some("not root".to_string())
    } else if !Path::new("/dev/fuse").exists() {
        Some("no /dev/fuse".to_string())
    } else if !fuse_bin().exists() {
        Some(format!(
            "no binary at {} (build it or set CLAUDEFS_FUSE_BIN)",
            fuse_bin().display()
        ))
    } else {
        None
    };
    if let Some(r) = &reason {
        if in_ci() {
            panic!("FUSE e2e tests must run in CI but cannot: {r}");
        }
        eprintln!("skipping FUSE e2e test: {r}");
    }
    reason
}

/// Whether `dir` is a mount point now.
pub fn is_mounted(dir: &Path) -> bool {
    let Ok(abs) = dir.canonicalize() else {
        return false;
    };
    let target = abs.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// Lazily unmounts `dir` (ignores errors).
pub fn umount_lazy(dir: &Path) {
    let _ = Command::new("umount")
        .arg("-l")
        .arg(dir)
        .stderr(Stdio::null())
        .status();
}

/// A running `claudefs-fuse mount`.
pub struct MountGuard {
    pub mnt: PathBuf,
    pub state: PathBuf,
    child: Option<Child>,
    log: PathBuf,
}

impl MountGuard {
    /// Mounts `<dir>/mnt` over one storage path `<dir>/src` (created here),
    /// with state dir `<dir>/state` and the `extra` flags. Returns the
    /// storage dir and the guard.
    pub fn single_path(dir: &Path, extra: &[String]) -> anyhow::Result<(PathBuf, Self)> {
        let src = dir.join("src");
        std::fs::create_dir_all(&src)?;
        let mut args = vec!["--path".to_string(), src.display().to_string()];
        args.extend_from_slice(extra);
        let guard = Self::start(&dir.join("mnt"), &dir.join("state"), &args)?;
        Ok((src, guard))
    }

    /// Mounts `mnt` with `args` (paths and options) and state dir `state`.
    pub fn start(mnt: &Path, state: &Path, args: &[String]) -> anyhow::Result<Self> {
        Self::start_with_env(mnt, state, args, &[])
    }

    /// [`Self::start`] with extra environment variables for the daemon.
    pub fn start_with_env(
        mnt: &Path,
        state: &Path,
        args: &[String],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        // A dead mount there says EEXIST: the daemon deals with it.
        if let Err(e) = std::fs::create_dir_all(mnt) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                return Err(e.into());
            }
        }
        let log = state.with_extension("log");
        let logf = std::fs::File::create(&log)?;
        // CLAUDEFS_TEST_TRANSPORT (dev, uring, auto) picks the transport of
        // every daemon a test starts.
        let transport = std::env::var("CLAUDEFS_TEST_TRANSPORT")
            .ok()
            .filter(|t| !t.is_empty() && !args.iter().any(|a| a == "--transport"))
            .map(|t| vec!["--transport".to_string(), t])
            .unwrap_or_default();
        let child = Command::new(fuse_bin())
            .arg("mount")
            .args(args)
            .args(&transport)
            .arg("--state-dir")
            .arg(state)
            .arg(mnt)
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(logf)
            .spawn()?;
        let mut g = Self {
            mnt: mnt.to_path_buf(),
            state: state.to_path_buf(),
            child: Some(child),
            log,
        };
        let t0 = Instant::now();
        // Up once its status socket answers (a file left by a killed
        // daemon does not).
        while !(is_mounted(mnt)
            && std::os::unix::net::UnixStream::connect(state.join("status.sock")).is_ok())
        {
            if let Some(c) = g.child.as_mut() {
                if let Some(st) = c.try_wait()? {
                    g.child = None;
                    anyhow::bail!("daemon exited ({st}): {}", g.log_text());
                }
            }
            if t0.elapsed() > Duration::from_secs(10) {
                anyhow::bail!("mount did not appear: {}", g.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(g)
    }

    /// The daemon's stderr so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Pid of the process serving the mount: the server (as its status
    /// says), which is the process started here with `--no-keeper`.
    pub fn pid(&self) -> u32 {
        self.status()
            .ok()
            .and_then(|s| s["pid"].as_u64())
            .map(|p| p as u32)
            .unwrap_or_else(|| self.keeper_pid())
    }

    /// Pid of the process started here (the keeper, by default).
    pub fn keeper_pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// kill -9 of the server only (the keeper starts the next one);
    /// returns the pid killed.
    pub fn kill9_server(&self) -> u32 {
        let pid = self.pid();
        if pid != 0 && pid != self.keeper_pid() {
            // SAFETY: signals a process of the mount under test.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        pid
    }

    /// Waits until a server of generation `generation` or later serves
    /// (its status answers); returns its status.
    pub fn wait_generation(
        &self,
        generation: u64,
        timeout: Duration,
    ) -> anyhow::Result<serde_json::Value> {
        let t0 = Instant::now();
        loop {
            if let Ok(st) = self.status() {
                if st["keeper"]["generation"].as_u64().unwrap_or(0) >= generation {
                    return Ok(st);
                }
            }
            if t0.elapsed() > timeout {
                anyhow::bail!(
                    "no server of generation {generation} after {timeout:?}: {}",
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// `claudefs-fuse status --json` of this daemon.
    pub fn status(&self) -> anyhow::Result<serde_json::Value> {
        status_json(&self.state)
    }

    /// kill -9 the daemon, keeper and server (leaves a dead mount, which
    /// is lazily unmounted).
    pub fn kill9(mut self) {
        let server = self.pid();
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if server != 0 {
            // SAFETY: signals the server of the mount under test.
            unsafe { libc::kill(server as i32, libc::SIGKILL) };
            wait_until(Duration::from_secs(5), || {
                !Path::new(&format!("/proc/{server}")).exists()
                    || std::fs::read_to_string(format!("/proc/{server}/stat"))
                        .is_ok_and(|s| s.contains(") Z "))
            });
        }
        umount_lazy(&self.mnt);
    }

    /// SIGTERM and wait for a clean exit; returns the exit status.
    pub fn stop(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let mut c = self
            .child
            .take()
            .ok_or_else(|| anyhow::anyhow!("no daemon"))?;
        // SAFETY: signalling our own child.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        let t0 = Instant::now();
        loop {
            if let Some(st) = c.try_wait()? {
                return Ok(st);
            }
            if t0.elapsed() > Duration::from_secs(10) {
                let _ = c.kill();
                umount_lazy(&self.mnt);
                anyhow::bail!("daemon did not stop on SIGTERM: {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends SIGTERM to `child`, waits up to `grace` for it to exit, then
/// kills it. For guards that stop a daemon they started.
pub fn terminate(child: &mut Child, grace: Duration) {
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for MountGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            terminate(&mut c, Duration::from_secs(3));
        }
        if is_mounted(&self.mnt) {
            umount_lazy(&self.mnt);
        }
    }
}

/// `claudefs-fuse status --state-dir DIR --json`.
pub fn status_json(state: &Path) -> anyhow::Result<serde_json::Value> {
    let out = Command::new(fuse_bin())
        .arg("status")
        .arg("--state-dir")
        .arg(state)
        .arg("--json")
        .output()?;
    if !out.status.success() {
        anyhow::bail!("status failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(serde_json::from_slice(&out.stdout)?)
}

/// Polls `f` until it is true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// bpftrace running a script as our child, the independent tracer the
/// probes are checked and measured against. The script must print
/// `READY` from `BEGIN` (which runs once every probe is attached).
pub struct Bpftrace {
    child: Option<Child>,
    output: std::sync::mpsc::Receiver<String>,
}

impl Bpftrace {
    /// Starts `script` and waits until it is attached (at most 60 s). A
    /// bpftrace that exits before it attaches is started once more (seen
    /// once in CI, under load); why it exited is printed.
    pub fn start(script: &str) -> anyhow::Result<Bpftrace> {
        match Self::start_once(script)? {
            Ok(b) => Ok(b),
            Err(exited) => {
                eprintln!("{exited}; starting bpftrace again");
                std::thread::sleep(Duration::from_secs(1));
                Self::start_once(script)?.map_err(anyhow::Error::msg)
            }
        }
    }

    /// One start: the attached bpftrace, or (inner `Err`) how it exited
    /// before it attached.
    fn start_once(script: &str) -> anyhow::Result<Result<Bpftrace, String>> {
        use std::io::BufRead;
        let mut child = Command::new("bpftrace")
            .args(["-e", script])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| anyhow::anyhow!("cannot run bpftrace: {e}"))?;
        // Its stderr, kept to say why if it exits before it attaches.
        let stderr = child.stderr.take();
        let errors = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut e) = stderr {
                let _ = std::io::Read::read_to_string(&mut e, &mut text);
            }
            text
        });
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no bpftrace stdout"))?;
        // Read on a thread (draining all along, so bpftrace never blocks
        // on a full pipe).
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut b = Bpftrace {
            child: Some(child),
            output,
        };
        // bpftrace parses the kernel BTF first: seconds on a loaded 2-vCPU VM.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match b.output.recv_timeout(left) {
                Ok(l) if l.trim() == "READY" => return Ok(Ok(b)),
                Ok(_) => {}
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                    anyhow::bail!("bpftrace did not attach within 60 s")
                }
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    let status = b.child.take().map(|mut c| c.wait());
                    let errors = errors.join().unwrap_or_default();
                    return Ok(Err(format!(
                        "bpftrace exited before it attached ({status:?}): {errors}"
                    )));
                }
            }
        }
    }

    pub fn id(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Stops bpftrace (SIGINT makes it print its maps) and returns what it
    /// printed after `READY`.
    pub fn stop(mut self) -> String {
        self.end();
        let mut out = String::new();
        while let Ok(l) = self.output.recv_timeout(Duration::from_secs(2)) {
            out.push_str(&l);
            out.push('\n');
        }
        out
    }

    fn end(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // A bpftrace that missed SIGINT (seen when it arrives right after
        // BEGIN) is terminated, then killed.
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGKILL] {
            // SAFETY: kill(2) on the pid of our own, not yet reaped child.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        let _ = child.wait();
    }
}

impl Drop for Bpftrace {
    fn drop(&mut self) {
        self.end();
    }
}

/// A bindfs mount of `src` at `dst`, run in the foreground as our child.
pub struct Bindfs {
    pub dst: PathBuf,
    child: Option<Child>,
}

impl Bindfs {
    /// The pid of the bindfs process.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn start(src: &Path, dst: &Path) -> anyhow::Result<Self> {
        Self::start_with(src, dst, &[])
    }

    /// With extra bindfs arguments (e.g. `-o attr_timeout=0`).
    pub fn start_with(src: &Path, dst: &Path, args: &[&str]) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dst)?;
        let child = Command::new("bindfs")
            .arg("-f")
            .args(args)
            .arg(src)
            .arg(dst)
            .stderr(Stdio::null())
            .spawn()?;
        let b = Self {
            dst: dst.to_path_buf(),
            child: Some(child),
        };
        if !wait_until(Duration::from_secs(5), || is_mounted(dst)) {
            anyhow::bail!("bindfs did not mount {}", dst.display());
        }
        Ok(b)
    }

    /// Kills bindfs (-9) and lazily unmounts what is left.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = Command::new("fusermount3")
            .arg("-u")
            .arg("-z")
            .arg(&self.dst)
            .stderr(Stdio::null())
            .status();
        umount_lazy(&self.dst);
    }
}

impl Drop for Bindfs {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether this environment can mount FUSE and load eBPF probes. Outside
/// CI a test that cannot run prints why and returns early; in CI
/// (`CI=true`) it must run, so a missing prerequisite fails it.
pub fn require_privileges(test: &str) -> bool {
    let reason = if !is_root() {
        Some("not running as root")
    } else if !std::path::Path::new("/dev/fuse").exists() {
        Some("/dev/fuse is missing")
    } else {
        None
    };
    match reason {
        None => true,
        Some(why) if in_ci() => panic!("{test}: cannot run in CI: {why}"),
        Some(why) => {
            eprintln!("skipping {test}: {why} (root and /dev/fuse are needed)");
            false
        }
    }
}

/// Whether a test that mounts on FUSE over io_uring can run: FUSE and a
/// kernel with `enable_uring` (Linux 6.14, CONFIG_FUSE_IO_URING). CI's
/// kernel has it, so there a missing one fails the test; elsewhere the
/// test prints why and returns.
pub fn uring_mounts() -> bool {
    if fuse_unavailable().is_some() {
        return false;
    }
    if !std::path::Path::new("/sys/module/fuse/parameters/enable_uring").exists() {
        assert!(!in_ci(), "CI's kernel has FUSE over io_uring");
        eprintln!("skipping: no FUSE over io_uring in this kernel");
        return false;
    }
    true
}

/// `CI` is set to `true` (GitHub Actions, GitLab and most CI systems).
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `stat(2)` through libc (not `std::fs::metadata`, which uses statx and
/// may send FUSE_STATX); the errno on failure.
pub fn stat(path: &std::path::Path) -> Result<(), i32> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| libc::EINVAL)?;
    // SAFETY: `st` is plain data the call fills; `c` is a valid C string.
    let rc = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        libc::stat(c.as_ptr(), &mut st)
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    }
}

/// `statx(path, AT_STATX_FORCE_SYNC)`: on FUSE every call asks the file
/// system (GETATTR), where `stat` may be answered from the kernel's cache.
pub fn statx_sync(c: &std::ffi::CStr) -> std::io::Result<()> {
    // SAFETY: `c` is a valid C string; `st` is plain data the call fills.
    let rc = unsafe {
        let mut st: libc::statx = std::mem::zeroed();
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_FORCE_SYNC,
            libc::STATX_BASIC_STATS,
            &mut st,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

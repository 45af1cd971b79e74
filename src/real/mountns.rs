//! A private mount namespace holding a small tmpfs, for tests of what a program does when its disk
//! fills up or turns read-only under it.
//!
//! [`MountNs::tmpfs`] starts a holder process under `unshare --mount --propagation private` that
//! mounts a tmpfs of the given size over an (empty) folder and then sleeps; the mount exists only
//! in that namespace, so nothing outside changes and it vanishes with the holder (killed when the
//! [`MountNs`] is dropped). Commands run inside with `nsenter --target PID --mount`
//! ([`MountNs::run`], [`MountNs::spawn`]); the test itself sees the tmpfs's files through
//! `/proc/PID/root` ([`MountNs::outside`]).
//!
//! Mounting needs root (CI runs as root). Where `unshare` or `nsenter` is missing or mounting is
//! refused, [`MountNs::tmpfs`] returns `None` after printing why the test is skipped, and panics
//! instead when `KP_REQUIRE_TOOLS=1`.
//!
//! Linux refuses `mount -o remount,ro` (EBUSY) while a process holds a file open for writing on
//! that mount, so "the disk turns read-only" is done by [`MountNs::bind_read_only`]: a read-only
//! bind of a folder mounted over itself. Every open and every file created through the folder's
//! path from then on fails with EROFS; a descriptor opened before keeps writing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use super::{RealProcess, wait_for};
use crate::{require_tool, tools_required};

/// How long the holder may take to mount the tmpfs.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// The holder's life at most: longer than any test that uses it.
const HOLDER_SECONDS: u32 = 600;

/// A mount namespace with a tmpfs mounted at a folder, alive until dropped.
pub struct MountNs {
    holder: RealProcess,
    nsenter: PathBuf,
    mount_point: PathBuf,
}

impl MountNs {
    /// Mounts a tmpfs of `size` (`mount -o size=` syntax: `16m`) over the folder `mount_point`
    /// (created if missing) in a new mount namespace. The holder's log goes to `log_dir`.
    ///
    /// Returns `None` (skip) when the tools are missing or mounting is not permitted, outside CI.
    ///
    /// # Panics
    /// In CI (`KP_REQUIRE_TOOLS=1`) whenever it cannot set up the namespace.
    pub fn tmpfs(mount_point: &Path, size: &str, log_dir: &Path) -> Option<MountNs> {
        let unshare = require_tool("unshare")?;
        let nsenter = require_tool("nsenter")?;
        std::fs::create_dir_all(mount_point).expect("create the mount point");
        let mnt = mount_point.to_str().expect("test paths are UTF-8");
        let script = format!(
            "mount -t tmpfs -o size={size} kp-test-tmpfs '{mnt}' || exit 1; \
             echo mounted; exec sleep {HOLDER_SECONDS}"
        );
        let args: Vec<String> = ["--mount", "--propagation", "private", "sh", "-c", &script]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut holder = RealProcess::spawn("mountns", &unshare, &args, log_dir);
        let up = wait_for(START_TIMEOUT, || {
            if holder.log().contains("mounted") {
                return Some(true);
            }
            holder.exit_status().map(|_| false)
        });
        if up != Some(true) {
            let why = format!(
                "cannot mount a tmpfs in a private mount namespace (needs root): {}",
                holder.log_tail().trim()
            );
            if tools_required() {
                holder.fail(&why);
            }
            eprintln!("skipping: {why}");
            return None;
        }
        Some(MountNs {
            holder,
            nsenter,
            mount_point: mount_point.to_path_buf(),
        })
    }

    /// Where the tmpfs is mounted (a path valid inside the namespace).
    pub fn mount_point(&self) -> &Path {
        &self.mount_point
    }

    /// The path through which this process sees `inside` (a path in the namespace) as the
    /// namespace sees it: `/proc/PID/root/inside`.
    pub fn outside(&self, inside: &Path) -> PathBuf {
        let relative = inside.strip_prefix("/").unwrap_or(inside);
        PathBuf::from(format!("/proc/{}/root", self.holder.pid())).join(relative)
    }

    fn enter_args(&self) -> Vec<String> {
        ["--target", &self.holder.pid().to_string(), "--mount", "--"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// Runs `program args` inside the namespace to its end and returns its output (whatever its
    /// status: a test filling the disk expects a failure).
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new(&self.nsenter)
            .args(self.enter_args())
            .arg(program)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("run nsenter {program}: {e}"))
    }

    /// Runs `program args` inside the namespace and panics unless it succeeds.
    pub fn run_ok(&self, program: &str, args: &[&str]) {
        let out = self.run(program, args);
        assert!(
            out.status.success(),
            "{program} {args:?} in the mount namespace: {}\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Starts `program args` inside the namespace as a [`RealProcess`] (log in `log_dir`, killed
    /// when dropped). `nsenter` replaces itself with the program, so the pid is the program's.
    pub fn spawn(
        &self,
        name: &str,
        program: &Path,
        args: &[String],
        log_dir: &Path,
    ) -> RealProcess {
        let mut all = self.enter_args();
        all.push(program.to_str().expect("test paths are UTF-8").to_string());
        all.extend(args.iter().cloned());
        RealProcess::spawn(name, &self.nsenter, &all, log_dir)
    }

    /// Fills the tmpfs to the last byte with the file `name` at its root, so the next write of
    /// anyone else fails with ENOSPC. Returns the bytes written.
    pub fn fill(&self, name: &str) -> u64 {
        let filler = self.mount_point.join(name);
        let of = format!("of={}", filler.display());
        // dd ends with "No space left on device" by design: its status says nothing here.
        self.run("dd", &["if=/dev/zero", &of, "bs=64k"]);
        let written = std::fs::metadata(self.outside(&filler))
            .map(|m| m.len())
            .unwrap_or(0);
        let out = self.run("df", &["--output=avail", "-B1", self.mnt()]);
        let avail = String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse::<u64>().ok());
        assert_eq!(avail, Some(0), "the tmpfs is not full after dd");
        written
    }

    /// Mounts a read-only bind of `folder` (inside the tmpfs) over itself: from now on nothing
    /// can be opened for writing or created through its path. Undo with [`MountNs::unmount`].
    pub fn bind_read_only(&self, folder: &Path) {
        let f = folder.to_str().expect("test paths are UTF-8");
        self.run_ok("mount", &["--bind", "-o", "ro", f, f]);
    }

    /// Unmounts the topmost mount at `folder` (the read-only bind).
    pub fn unmount(&self, folder: &Path) {
        self.run_ok("umount", &[folder.to_str().expect("test paths are UTF-8")]);
    }

    fn mnt(&self) -> &str {
        self.mount_point.to_str().expect("test paths are UTF-8")
    }
}

//! Test support: a real S3 endpoint (Garage started for the test, or the one
//! named by S3MOUNT_TEST_ENDPOINT), fixture upload with aws-sdk-s3, and the
//! built `s3mount` binary mounted with real FUSE. Everything started here is
//! stopped on drop, also when a test panics.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

pub mod drop_folder;
pub mod http_proxy;
pub mod proxy;

use aws_sdk_s3::config::{
    Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};
use aws_sdk_s3::primitives::ByteStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_s3mount");

/// Runs a future to completion on a private runtime.
pub fn block_on<F: std::future::Future>(f: F) -> F::Output {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("test runtime")
    })
    .block_on(f)
}

/// How often [`eventually`] and [`eventually_ok`] look again.
const POLL: Duration = Duration::from_millis(50);

/// Calls `f` every 50 ms until it returns `Ok`, for at most `within`;
/// returns the last `Err` if it never did.
fn poll<T, E>(within: Duration, mut f: impl FnMut() -> Result<T, E>) -> Result<T, E> {
    let deadline = Instant::now() + within;
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => std::thread::sleep(POLL),
        }
    }
}

/// Waits until `cond` holds, checking every 50 ms; panics with "timed out
/// after Ns waiting for {what}" if it does not within `within`.
pub fn eventually(what: impl std::fmt::Display, within: Duration, mut cond: impl FnMut() -> bool) {
    if poll(within, || if cond() { Ok(()) } else { Err(()) }).is_err() {
        panic!(
            "timed out after {}s waiting for {what}",
            within.as_secs_f64()
        );
    }
}

/// Like [`eventually`] for a check that has a value to give back (`Ok`)
/// or a reason why not yet (`Err`): returns the value, or panics with the
/// last reason.
pub fn eventually_ok<T, E: std::fmt::Display>(
    what: impl std::fmt::Display,
    within: Duration,
    f: impl FnMut() -> Result<T, E>,
) -> T {
    poll(within, f).unwrap_or_else(|last| {
        panic!(
            "timed out after {}s waiting for {what}: {last}",
            within.as_secs_f64()
        )
    })
}

/// The errno a call failed with; 0 when it succeeded, -1 for an error
/// without one.
pub fn errno_of<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

/// rename(2) with RENAME_NOREPLACE (what `mv -n` asks for); the errno it
/// failed with, 0 when it renamed.
pub fn rename_noreplace(from: &Path, to: &Path) -> i32 {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let (from, to) = (c(from), c(to));
    // SAFETY: both are valid NUL-terminated paths that outlive the call.
    let r = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    errno_of(if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    })
}

/// A directory removed on drop.
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "s3mount-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir(path)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How to reach the S3 server under test.
#[derive(Clone, Debug)]
pub struct Endpoint {
    pub url: String,
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// A local S3 server owned by this test process: started by one of the
/// scripts (`garage-local.sh`, `seaweedfs-local.sh`), stopped on drop.
struct LocalServer {
    script: &'static str,
    dir: TempDir,
}

impl LocalServer {
    /// Starts it; returns it and the `export K=V` lines it printed.
    fn start(script_name: &'static str, what: &str) -> (LocalServer, String) {
        let dir = TempDir::new("server");
        let out = Command::new(script(script_name))
            .arg("start")
            .arg(dir.path())
            .output()
            .unwrap_or_else(|e| panic!("run scripts/{script_name}: {e}"));
        let server = LocalServer {
            script: script_name,
            dir,
        };
        assert!(
            out.status.success(),
            "cannot start a local {what} (install it with scripts/install-deps.sh, or name a running one in the environment): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        (server, String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = Command::new(script(self.script))
            .arg("stop")
            .arg(self.dir.path())
            .status();
    }
}

/// The value of `export K=V` in a server script's output.
fn exported(env: &str, k: &str) -> String {
    env.lines()
        .find_map(|l| l.strip_prefix(&format!("export {k}=")))
        .unwrap_or_else(|| panic!("the server script printed no {k}"))
        .trim_matches(|c| c == '\'' || c == '"')
        .to_owned()
}

pub fn script(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scripts")
        .join(name)
}

/// The endpoint under test plus whatever must stay alive for it.
pub struct TestS3 {
    pub endpoint: Endpoint,
    pub client: aws_sdk_s3::Client,
    _server: Option<LocalServer>,
}

impl TestS3 {
    /// Uses S3MOUNT_TEST_ENDPOINT (with AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)
    /// when set; otherwise starts a private Garage for this test.
    pub fn start() -> TestS3 {
        let need = |k: &str| {
            std::env::var(k).unwrap_or_else(|_| {
                panic!("S3MOUNT_TEST_ENDPOINT is set but {k} is not; export the credentials for that endpoint")
            })
        };
        match std::env::var("S3MOUNT_TEST_ENDPOINT") {
            Ok(url) if !url.is_empty() => TestS3::at(
                Endpoint {
                    url,
                    access_key: need("AWS_ACCESS_KEY_ID"),
                    secret_key: need("AWS_SECRET_ACCESS_KEY"),
                    region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
                },
                None,
            ),
            _ => {
                let (garage, env) = LocalServer::start("garage-local.sh", "Garage S3 server");
                let endpoint = Endpoint {
                    url: exported(&env, "S3MOUNT_TEST_ENDPOINT"),
                    access_key: exported(&env, "AWS_ACCESS_KEY_ID"),
                    secret_key: exported(&env, "AWS_SECRET_ACCESS_KEY"),
                    region: exported(&env, "AWS_REGION"),
                };
                TestS3::at(endpoint, Some(garage))
            }
        }
    }

    /// A server that enforces S3's write conditions (If-None-Match,
    /// If-Match on writes, copies and deletes): the one named by
    /// S3MOUNT_TEST_CONDITIONAL_ENDPOINT (and its _ACCESS_KEY_ID,
    /// _SECRET_ACCESS_KEY), else a private SeaweedFS for this test.
    pub fn conditional() -> TestS3 {
        let var = |k: &str| std::env::var(format!("S3MOUNT_TEST_CONDITIONAL_{k}"));
        match var("ENDPOINT") {
            Ok(url) if !url.is_empty() => {
                let need = |k: &str| {
                    var(k).unwrap_or_else(|_| {
                        panic!("S3MOUNT_TEST_CONDITIONAL_ENDPOINT is set but S3MOUNT_TEST_CONDITIONAL_{k} is not")
                    })
                };
                TestS3::at(
                    Endpoint {
                        url,
                        access_key: need("ACCESS_KEY_ID"),
                        secret_key: need("SECRET_ACCESS_KEY"),
                        region: "us-east-1".into(),
                    },
                    None,
                )
            }
            _ => {
                let (weed, env) = LocalServer::start("seaweedfs-local.sh", "SeaweedFS S3 server");
                let endpoint = Endpoint {
                    url: exported(&env, "S3MOUNT_TEST_CONDITIONAL_ENDPOINT"),
                    access_key: exported(&env, "S3MOUNT_TEST_CONDITIONAL_ACCESS_KEY_ID"),
                    secret_key: exported(&env, "S3MOUNT_TEST_CONDITIONAL_SECRET_ACCESS_KEY"),
                    region: "us-east-1".into(),
                };
                TestS3::at(endpoint, Some(weed))
            }
        }
    }

    fn at(endpoint: Endpoint, server: Option<LocalServer>) -> TestS3 {
        let client = client_for(&endpoint);
        TestS3 {
            endpoint,
            client,
            _server: server,
        }
    }

    /// A fault-injecting proxy in front of this server, and the endpoint
    /// that goes through it.
    pub fn proxied(&self) -> (proxy::FaultProxy, Endpoint) {
        let proxy = proxy::FaultProxy::start(self.upstream());
        let endpoint = self.endpoint_at(proxy.url());
        (proxy, endpoint)
    }

    /// An HTTP-aware fault proxy (503s, cut bodies, outages) in front of
    /// this server, and the endpoint that goes through it.
    pub fn http_proxied(&self) -> (http_proxy::HttpFaultProxy, Endpoint) {
        let proxy = http_proxy::HttpFaultProxy::start(self.upstream());
        let endpoint = self.endpoint_at(proxy.url());
        (proxy, endpoint)
    }

    /// The server's host:port, for a proxy to forward to.
    fn upstream(&self) -> &str {
        self.endpoint
            .url
            .trim_start_matches("http://")
            .trim_end_matches('/')
    }

    /// This server's endpoint (credentials, region) at another URL.
    fn endpoint_at(&self, url: String) -> Endpoint {
        Endpoint {
            url,
            ..self.endpoint.clone()
        }
    }

    /// Creates a fresh, uniquely named bucket (retrying while a new server settles).
    pub fn bucket(&self, tag: &str) -> TestBucket {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "s3mt-{tag}-{}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed),
            Instant::now().elapsed().subsec_nanos() % 1000
        );
        eventually_ok(
            format_args!("bucket {name} to be created"),
            Duration::from_secs(30),
            || {
                block_on(self.client.create_bucket().bucket(&name).send())
                    .map_err(|e| aws_sdk_s3::error::DisplayErrorContext(e).to_string())
            },
        );
        TestBucket {
            name,
            client: self.client.clone(),
        }
    }
}

/// Starts a proxy to `upstream` (host:port) on a free loopback port: runs
/// `accept(listener, its address, upstream, state)` on a thread of its own
/// and returns the proxy's address and the state it shares with the test.
fn start_proxy<S: Default + Send + Sync + 'static>(
    upstream: &str,
    accept: fn(std::net::TcpListener, SocketAddr, SocketAddr, Arc<S>),
) -> (SocketAddr, Arc<S>) {
    let upstream = upstream.parse().expect("upstream host:port");
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind proxy");
    let addr = listener.local_addr().unwrap();
    let shared = Arc::new(S::default());
    let s = shared.clone();
    std::thread::spawn(move || accept(listener, addr, upstream, s));
    (addr, shared)
}

/// `http://ADDR`, for --endpoint-url.
fn http_url(addr: SocketAddr) -> String {
    format!("http://{addr}")
}

pub fn client_for(e: &Endpoint) -> aws_sdk_s3::Client {
    let config = aws_sdk_s3::Config::builder()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .endpoint_url(&e.url)
        .region(Region::new(e.region.clone()))
        .credentials_provider(Credentials::new(
            &e.access_key,
            &e.secret_key,
            None,
            None,
            "test",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(config)
}

/// A bucket that is emptied and deleted on drop.
pub struct TestBucket {
    pub name: String,
    pub client: aws_sdk_s3::Client,
}

impl TestBucket {
    pub fn put(&self, key: &str, body: impl Into<Vec<u8>>) {
        let body: Vec<u8> = body.into();
        block_on(
            self.client
                .put_object()
                .bucket(&self.name)
                .key(key)
                .body(ByteStream::from(body))
                .send(),
        )
        .unwrap_or_else(|e| panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e)));
    }

    pub fn delete(&self, key: &str) {
        block_on(
            self.client
                .delete_object()
                .bucket(&self.name)
                .key(key)
                .send(),
        )
        .unwrap_or_else(|e| {
            panic!(
                "delete {key}: {}",
                aws_sdk_s3::error::DisplayErrorContext(&e)
            )
        });
    }

    pub fn head(&self, key: &str) -> aws_sdk_s3::operation::head_object::HeadObjectOutput {
        block_on(self.client.head_object().bucket(&self.name).key(key).send()).unwrap_or_else(|e| {
            panic!("head {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
        })
    }

    pub fn get(&self, key: &str) -> Vec<u8> {
        block_on(async {
            let out = self
                .client
                .get_object()
                .bucket(&self.name)
                .key(key)
                .send()
                .await
                .unwrap_or_else(|e| {
                    panic!("get {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
                });
            out.body.collect().await.expect("read body").to_vec()
        })
    }

    /// Multipart uploads started and neither completed nor aborted.
    pub fn open_multipart_uploads(&self) -> Vec<String> {
        let out = block_on(
            self.client
                .list_multipart_uploads()
                .bucket(&self.name)
                .send(),
        )
        .expect("list multipart uploads");
        out.uploads()
            .iter()
            .filter_map(|u| u.key().map(str::to_owned))
            .collect()
    }

    /// Names of the objects directly or deeper under `dir/` (without the
    /// prefix), leaving out the directory's own marker object.
    pub fn names_under(&self, dir: &str) -> std::collections::BTreeSet<String> {
        let prefix = format!("{dir}/");
        self.keys()
            .iter()
            .filter_map(|k| k.strip_prefix(&prefix))
            .filter(|k| !k.is_empty())
            .map(str::to_owned)
            .collect()
    }

    pub fn keys(&self) -> Vec<String> {
        let mut keys = Vec::new();
        let mut token = None;
        loop {
            let out = block_on(
                self.client
                    .list_objects_v2()
                    .bucket(&self.name)
                    .set_continuation_token(token)
                    .send(),
            )
            .expect("list bucket");
            keys.extend(
                out.contents()
                    .iter()
                    .filter_map(|o| o.key().map(str::to_owned)),
            );
            token = out.next_continuation_token().map(str::to_owned);
            if token.is_none() {
                break;
            }
        }
        keys
    }
}

impl Drop for TestBucket {
    fn drop(&mut self) {
        for key in self.keys() {
            let _ = block_on(
                self.client
                    .delete_object()
                    .bucket(&self.name)
                    .key(&key)
                    .send(),
            );
        }
        let _ = block_on(self.client.delete_bucket().bucket(&self.name).send());
    }
}

/// Deterministic pseudo-random bytes (xorshift64*): incompressible, so the
/// server cannot shortcut them, and reproducible from the seed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Arguments that point s3mount at the test endpoint.
pub fn endpoint_args(e: &Endpoint) -> Vec<String> {
    vec![
        "--endpoint-url".into(),
        e.url.clone(),
        "--region".into(),
        e.region.clone(),
        "--force-path-style".into(),
    ]
}

/// An s3mount command with the test credentials in its environment and none
/// of the developer's AWS configuration.
pub fn s3mount_command(e: &Endpoint) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", std::env::temp_dir())
        .env("AWS_ACCESS_KEY_ID", &e.access_key)
        .env("AWS_SECRET_ACCESS_KEY", &e.secret_key)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env(
            "RUST_LOG",
            std::env::var("S3MOUNT_TEST_LOG").unwrap_or_else(|_| "warn,s3mount=debug".into()),
        );
    cmd
}

/// Whether `path` is currently a mount point (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let canonical = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let target = canonical.to_string_lossy().replace(' ', "\\040");
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(target.as_str()))
}

/// Processes whose command line mentions `needle` (to prove none was left behind).
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let me = std::process::id();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if pid == me {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && text.contains("s3mount") {
                found.push(pid);
            }
        }
    }
    found
}

/// A running `s3mount --foreground` on a temporary mountpoint; unmounted on drop.
pub struct Mounted {
    pub dir: TempDir,
    child: Option<Child>,
    log: PathBuf,
}

impl Mounted {
    /// Mounts `target` (BUCKET[/PREFIX]) with extra arguments and waits until live.
    pub fn start(s3: &TestS3, target: &str, extra: &[&str]) -> Mounted {
        Mounted::start_at(&s3.endpoint, target, extra)
    }

    /// Like [`Mounted::start`], through another endpoint (e.g. a [`proxy::FaultProxy`]).
    pub fn start_at(endpoint: &Endpoint, target: &str, extra: &[&str]) -> Mounted {
        Mounted::start_with_env(endpoint, target, extra, &[])
    }

    /// Like [`Mounted::start_at`], with extra environment for the daemon
    /// (fault injection).
    pub fn start_with_env(
        endpoint: &Endpoint,
        target: &str,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> Mounted {
        let dir = TempDir::new("mnt");
        let mountpoint = dir.path().join("m");
        std::fs::create_dir(&mountpoint).unwrap();
        let log = dir.path().join("s3mount.log");
        let mut cmd = s3mount_command(endpoint);
        cmd.envs(env.iter().copied());
        if !extra.iter().any(|a| a.starts_with("--cache-dir")) {
            // Each mount gets its own catalog unless a test shares one on purpose.
            cmd.arg("--cache-dir").arg(dir.path().join("cache"));
        }
        cmd.arg(target)
            .arg(&mountpoint)
            .arg("--foreground")
            .args(endpoint_args(endpoint))
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap());
        let child = cmd.spawn().expect("start s3mount");
        let mut mounted = Mounted {
            dir,
            child: Some(child),
            log,
        };
        let log = LogFile(&mounted.log);
        eventually_ok("s3mount to mount", Duration::from_secs(30), || {
            if let Some(status) = mounted.child.as_mut().unwrap().try_wait().unwrap() {
                mounted.child = None;
                panic!("s3mount exited with {status} before mounting; {log}");
            }
            if is_mounted(&mountpoint) {
                Ok(())
            } else {
                Err(&log)
            }
        });
        mounted
    }

    pub fn path(&self) -> PathBuf {
        self.dir.path().join("m")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The daemon's log, read when it is shown (for failure messages
    /// formatted before the failure, as [`eventually_ok`]'s).
    pub fn log(&self) -> impl std::fmt::Display + '_ {
        LogFile(&self.log)
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Kills the daemon with SIGKILL, as a crash would, and detaches the
    /// dead mount.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = Command::new("umount").arg("-l").arg(self.path()).status();
    }

    /// Waits for the daemon to exit and returns its exit code.
    pub fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = poll(within, || child.try_wait().unwrap().ok_or(())).ok()?;
        self.child = None;
        status.code()
    }
}

/// The daemon's log file, read when it is shown.
struct LogFile<'a>(&'a Path);

impl std::fmt::Display for LogFile<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let text = std::fs::read_to_string(self.0).unwrap_or_default();
        write!(f, "the daemon's log:\n{text}")
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let mp = self.path();
        if is_mounted(&mp) {
            let ok = Command::new("umount")
                .arg(&mp)
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = Command::new("umount").arg("-l").arg(&mp).status();
            }
        }
        if let Some(mut child) = self.child.take() {
            let _ = poll(Duration::from_secs(10), || {
                child.try_wait().ok().flatten().ok_or(())
            });
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Unmounts on drop (lazily, if still mounted), for mounts made by hand
/// rather than by [`Mounted`].
pub struct UnmountOnDrop(pub PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// `s3mount refresh PATH`: refreshes the listing of PATH's directory.
pub fn refresh(path: &Path) -> Output {
    Command::new(BIN)
        .arg("refresh")
        .arg(path)
        .output()
        .expect("run s3mount refresh")
}

/// Runs a command with a time limit; returns its output.
pub fn run_with_timeout(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    if poll(limit, || child.try_wait().unwrap().ok_or(())).is_err() {
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        panic!(
            "command did not finish within {limit:?}; stderr so far: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    child.wait_with_output().unwrap()
}

/// Runs a shell command line, returning (exit code, stdout, stderr).
pub fn sh(script: &str) -> (i32, String, String) {
    let out = Command::new("bash")
        .arg("-c")
        .arg(script)
        .output()
        .expect("run bash");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Sorted names in a directory, through std::fs.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("read_dir {}: {e}", dir.display()))
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Peak resident memory of process `pid`, in KiB.
pub fn peak_rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmHWM:")
}

/// Resident memory of process `pid` now, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time (user + system) process `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // SAFETY: sysconf only reads a configuration value.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (ticks(11) + ticks(12)) / hz
}

/// An environment variable as a number, or `default`.
pub fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The median of some measurements.
pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

impl TestBucket {
    /// Uploads many small objects, 64 at a time; `body(i)` gives object i's bytes.
    pub fn put_many(&self, keys: Vec<String>, body: impl Fn(usize) -> Vec<u8>) {
        block_on(async {
            let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(64));
            let mut tasks = Vec::with_capacity(keys.len());
            for (i, key) in keys.into_iter().enumerate() {
                let (c, bucket, sem, data) =
                    (self.client.clone(), self.name.clone(), sem.clone(), body(i));
                tasks.push(tokio::spawn(async move {
                    let _permit = sem.acquire().await.unwrap();
                    c.put_object()
                        .bucket(bucket)
                        .key(&key)
                        .body(ByteStream::from(data))
                        .send()
                        .await
                        .unwrap_or_else(|e| {
                            panic!("put {key}: {}", aws_sdk_s3::error::DisplayErrorContext(&e))
                        });
                }));
            }
            for t in tasks {
                t.await.unwrap();
            }
        });
    }
}

/// The sha256 of a file, by the ordinary `sha256sum` tool.
pub fn sha256_of(path: &Path) -> String {
    let (code, out, err) = sh(&format!("sha256sum '{}'", path.display()));
    assert_eq!(code, 0, "sha256sum {} failed: {err}", path.display());
    out.split_whitespace().next().unwrap().to_owned()
}

/// Fetches http://addr/metrics.
pub fn scrape(addr: &str) -> String {
    use std::io::{Read as _, Write as _};
    let mut conn =
        std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        conn,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    assert!(
        response.starts_with("HTTP/1.1 200"),
        "{}",
        &response[..response.len().min(200)]
    );
    response
}

/// The value of the sample named exactly `series` (with its labels).
pub fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| {
        l.strip_prefix(series)
            .and_then(|rest| rest.strip_prefix(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

//! The router binary as a process: started with arguments and environment, its output kept,
//! signalled and waited for.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The `vllm-router` binary on a free port (metrics off and quiet logs, unless `args` name
/// `--prometheus-port` or `--log-level`) with `args` and `env` added to a clean environment,
/// and the address it serves. Killed when the child is dropped only if the test kills it;
/// tests end it with [`signal`] or `kill`.
pub async fn spawn_router(args: &[String], env: &[(&str, &str)]) -> (Child, SocketAddr) {
    let (child, addr, _, _) = launch_in(None, args, env, false).await;
    let addr = addr.expect("the router never said where it listens");
    (child, addr)
}

/// What a router process wrote to stdout and stderr.
pub struct Captured {
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Captured {
    /// Both streams whole: call once the process has exited.
    pub fn collect(self) -> (String, String) {
        (self.stdout.join().unwrap(), self.stderr.join().unwrap())
    }
}

/// [`spawn_router`], with everything the router writes to stdout and stderr kept.
pub async fn spawn_router_captured(
    args: &[String],
    env: &[(&str, &str)],
) -> (Child, SocketAddr, Captured) {
    try_spawn_router_captured(args, env)
        .await
        .unwrap_or_else(|stderr| panic!("the router never said where it listens: {stderr}"))
}

/// [`spawn_router_captured`], where a router that exits before it listens (a port taken,
/// say) is no failure: what it wrote to stderr comes back instead.
pub async fn try_spawn_router_captured(
    args: &[String],
    env: &[(&str, &str)],
) -> Result<(Child, SocketAddr, Captured), String> {
    let (mut child, addr, stdout, stderr) = launch_in(None, args, env, true).await;
    let stderr = stderr.expect("stderr is captured");
    match addr {
        Some(addr) => Ok((child, addr, Captured { stdout, stderr })),
        None => {
            let _ = child.kill();
            let _ = child.wait();
            Err(stderr.join().unwrap())
        }
    }
}

/// Start the router binary; its address once it says where it listens (`None` if it ends
/// first), and the threads reading its stdout and, when `capture_stderr`, its stderr (read
/// from the start, so that the pipe never fills).
/// A subcommand (`run`) in `args[0]` stays first; `cwd` is the working directory, when given.
async fn launch_in(
    cwd: Option<&std::path::Path>,
    args: &[String],
    env: &[(&str, &str)],
    capture_stderr: bool,
) -> (
    Child,
    Option<SocketAddr>,
    std::thread::JoinHandle<String>,
    Option<std::thread::JoinHandle<String>>,
) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_vllm-router"));
    let args = match args.first().map(String::as_str) {
        Some("run") => {
            command.arg("run");
            &args[1..]
        }
        _ => args,
    };
    if let Some(dir) = cwd {
        command.current_dir(dir);
    }
    if !args.iter().any(|a| a == "--port") {
        command.args(["--port", "0"]);
    }
    for (flag, value) in [("--prometheus-port", "0"), ("--log-level", "warn")] {
        if !args.iter().any(|a| a == flag) {
            command.args([flag, value]);
        }
    }
    let mut child = command
        .args(args)
        .env_clear()
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(if capture_stderr {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .spawn()
        .expect("the router binary starts");
    let stderr = child.stderr.take().map(|mut stderr| {
        std::thread::spawn(move || {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut stderr, &mut text).expect("readable stderr");
            text
        })
    });
    let stdout = child.stdout.take().expect("stdout is piped");
    let (found, address) = std::sync::mpsc::channel();
    let stdout = std::thread::spawn(move || {
        let mut text = String::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.expect("readable stdout");
            if let Some(addr) = line.strip_prefix("vllm-router listening on http://") {
                let _ = found.send(addr.parse::<SocketAddr>().expect("an address"));
            }
            text.push_str(&line);
            text.push('\n');
        }
        text
    });
    let addr = tokio::task::spawn_blocking(move || address.recv().ok())
        .await
        .expect("the reader ends");
    (child, addr, stdout, stderr)
}

/// [`spawn_router_captured`] in the working directory `dir`.
pub async fn spawn_router_in(
    dir: &std::path::Path,
    args: &[String],
    env: &[(&str, &str)],
) -> (Child, SocketAddr, Captured) {
    let (child, addr, stdout, stderr) = launch_in(Some(dir), args, env, true).await;
    let stderr = stderr.expect("stderr is captured");
    match addr {
        Some(addr) => (child, addr, Captured { stdout, stderr }),
        None => panic!(
            "the router never said where it listens: {}",
            stderr.join().unwrap()
        ),
    }
}

/// Send a signal (`TERM`, `HUP`, ...) to a child process.
pub fn signal(child: &Child, name: &str) {
    let sent = Command::new("kill")
        .args([format!("-{name}"), child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(sent.success());
}

/// The exit code of `child`, waiting up to `within` (killed and failing past it).
pub async fn exit_code(child: &mut Child, within: Duration) -> Option<i32> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("waitable") {
            return status.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the router did not exit within {within:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

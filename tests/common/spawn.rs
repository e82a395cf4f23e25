//! Processes a test starts in the background and waits for: a server (the broker,
//! Prometheus, ChromeDriver) ready once its port takes connections, and `storepulse`
//! itself with its stderr collected as it comes, ready once its port answers or a line of
//! its log says so. Each is killed (by its id) and reaped when dropped, so a failing test
//! leaves nothing running.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::wait::wait_until_ok;

/// `storepulse` with `args`, with an empty environment but for `PATH`.
pub fn storepulse_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_storepulse"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    cmd
}

/// Whether something listens on `addr`.
pub fn listening(addr: &str) -> bool {
    super::http::connect(addr).is_ok()
}

/// A free loopback port (bound, then released) for a server to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A free loopback address (see [`free_port`]).
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

/// A server process, killed and reaped when dropped.
pub struct Server {
    child: Child,
}

impl Server {
    /// Starts `cmd` (`name` in messages) and waits, at most `limit`, until `addr` takes
    /// connections; fails at once should it exit before.
    pub fn start(name: &str, cmd: &mut Command, addr: &str, limit: Duration) -> Server {
        let child = cmd.spawn().unwrap_or_else(|e| panic!("start {name}: {e}"));
        let mut server = Server { child };
        let what = format!("{name} to listen on {addr}");
        wait_until_ok(limit, what, || {
            if let Some(status) = server.child.try_wait().unwrap() {
                panic!("{name} exited ({status}) before it listened on {addr}");
            }
            if listening(addr) {
                Ok(())
            } else {
                Err("")
            }
        });
        server
    }

    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process and reaps it.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A `storepulse` process (or a shell that execs one) in the background, killed when
/// dropped. Its stderr is collected as it comes; stdout is read once it exits.
pub struct Proc {
    pub child: Child,
    pub name: String,
    stderr: Arc<Mutex<String>>,
}

impl Proc {
    /// `storepulse` with `args` (see [`storepulse_command`]).
    pub fn spawn(name: &str, args: &[&str]) -> Proc {
        Proc::start(name, &mut storepulse_command(args))
    }

    /// `storepulse` with `args`, once `addr` (its `--http-addr` or `--metrics-addr`) takes
    /// connections.
    pub fn serving(name: &str, args: &[&str], addr: &str, limit: Duration) -> Proc {
        let mut p = Proc::spawn(name, args);
        p.wait_listening(addr, limit);
        p
    }

    /// Starts `cmd` with stdout and stderr piped.
    pub fn start(name: &str, cmd: &mut Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {name}: {e}"));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (pipe, sink) = (child.stderr.take().unwrap(), stderr.clone());
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                s.push_str(&line);
                s.push('\n');
            }
        });
        Proc {
            child,
            name: name.into(),
            stderr,
        }
    }

    /// Waits (boundedly) until `addr` takes connections; fails at once should the
    /// process exit before.
    pub fn wait_listening(&mut self, addr: &str, limit: Duration) {
        let what = format!("{} to listen on {addr}", self.name);
        wait_until_ok(limit, what, || {
            if !self.running() {
                panic!(
                    "{} exited before it listened on {addr}:\n{}",
                    self.name,
                    self.stderr()
                );
            }
            if listening(addr) {
                Ok(())
            } else {
                Err("")
            }
        });
    }

    /// The metrics address the process logs (`metrics on http://ADDR/metrics`), once it
    /// has (for `--metrics-addr 127.0.0.1:0`).
    pub fn metrics_addr(&self, limit: Duration) -> String {
        let what = format!("{} to say where its metrics are", self.name);
        wait_until_ok(limit, what, || {
            let log = self.stderr();
            log.lines().find_map(super::metrics_address_in).ok_or(log)
        })
    }

    pub fn running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The stderr collected so far and from now on, readable after the process is gone.
    pub fn stderr_log(&self) -> Arc<Mutex<String>> {
        self.stderr.clone()
    }

    /// Waits for the process to exit by itself, boundedly; returns stdout, insisting on
    /// success.
    pub fn wait_ok(self, limit: Duration) -> String {
        let name = self.name.clone();
        let (status, out, err) = self.wait_exit(limit);
        assert!(status.success(), "{name} failed ({status}):\n{err}\n{out}");
        out
    }

    /// Waits for the process to exit by itself, boundedly; returns its status, stdout and
    /// stderr, whatever the status.
    pub fn wait_exit(mut self, limit: Duration) -> (ExitStatus, String, String) {
        let what = format!("{} to finish", self.name);
        let status = wait_until_ok(limit, what, || {
            self.child.try_wait().unwrap().ok_or_else(|| self.stderr())
        });
        let out = read(self.child.stdout.take());
        // The reader thread collects stderr until the pipe closes.
        std::thread::sleep(Duration::from_millis(100));
        (status, out, self.stderr())
    }

    /// Waits (boundedly) until one line of the stderr collected so far contains every one
    /// of `parts`.
    pub fn wait_said(&self, parts: &[&str], limit: Duration) {
        let what = format!("{} to say {parts:?} in one line", self.name);
        wait_until_ok(limit, what, || {
            let log = self.stderr();
            if super::said(&log, parts) {
                Ok(())
            } else {
                Err(log)
            }
        });
    }

    /// Waits (boundedly) until the stderr collected so far contains `text`.
    pub fn wait_stderr(&self, text: &str, limit: Duration) {
        let what = format!("{} to say `{text}`", self.name);
        wait_until_ok(limit, what, || {
            let log = self.stderr();
            if log.contains(text) {
                Ok(())
            } else {
                Err(log)
            }
        });
    }

    /// SIGKILL: no final snapshot, no goodbye to the group.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then waits for a clean exit.
    pub fn terminate(self, limit: Duration) -> String {
        self.signal(libc::SIGTERM);
        self.wait_ok(limit)
    }

    /// Sends `signal` to the process.
    pub fn signal(&self, signal: i32) {
        // SAFETY: signalling the process this test started, by its id.
        unsafe {
            libc::kill(self.child.id() as i32, signal);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn read(pipe: Option<impl std::io::Read>) -> String {
    let mut s = String::new();
    if let Some(p) = pipe {
        for line in BufReader::new(p).lines() {
            s.push_str(&line.unwrap_or_default());
            s.push('\n');
        }
    }
    s
}

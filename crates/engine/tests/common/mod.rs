//! What the crash tests share: each runs its own test binary again as a child that crashes at a
//! failpoint (`std::process::exit(crash_code)`), then checks what a restart finds.

use std::process::Command;

/// Runs this test binary's `child` test with `child_env=spec` and answers its exit code; the
/// child's output is printed when it did not crash as planned.
pub fn run_child(child_env: &str, crash_code: i32, spec: String) -> i32 {
    let exe = std::env::current_exe().expect("the test binary's path");
    let out = Command::new(exe)
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(child_env, spec)
        .output()
        .expect("the child test runs");
    let code = out.status.code().unwrap_or(-1);
    if code != crash_code {
        eprintln!("child stdout: {}", String::from_utf8_lossy(&out.stdout));
        eprintln!("child stderr: {}", String::from_utf8_lossy(&out.stderr));
    }
    code
}

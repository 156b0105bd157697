//! The stdin/stdout request loop every worker runs on its main thread.

use std::io::{BufRead, Write};

/// Prints one line and flushes, so the driver sees it at once.
pub fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Answers each stdin line with `handle`'s reply; exits the process when
/// stdin closes (the driver is gone or done).
pub fn serve(mut handle: impl FnMut(&str) -> String) -> ! {
    let stdin = std::io::stdin();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let reply = handle(line.trim());
        say(&reply);
    }
    std::process::exit(0)
}

/// Exits the process when stdin closes, for workers whose main thread is busy.
pub fn exit_on_stdin_eof() {
    std::thread::spawn(|| {
        let mut sink = String::new();
        while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {
            sink.clear();
        }
        std::process::exit(0);
    });
}

//! Keys from the terminal, waited for with a timeout.
//!
//! crossterm 0.29 spins forever inside `event::poll` once its terminal is
//! gone (the tty stays readable while `read` gives 0 or EIO; see
//! crossterm-rs/crossterm#793), so a `top` whose tmux pane or ssh session was
//! killed would never return to notice SIGHUP. So the terminal is polled here
//! first, where a hang-up is visible, and crossterm only parses bytes that
//! are known to be there.

use std::{
    fs::File,
    io,
    os::fd::{AsRawFd, RawFd},
    time::Duration,
};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEvent, KeyEventKind, KeyModifiers};

/// What the terminal asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Input {
    Quit,
    Redraw,
    Nothing,
    /// The terminal hung up: nobody is watching any more.
    Gone,
}

pub fn input(ev: &Event) -> Input {
    match ev {
        Event::Key(KeyEvent { code, modifiers, kind: KeyEventKind::Press, .. }) => match code {
            KeyCode::Char('q' | 'Q') | KeyCode::Esc => Input::Quit,
            KeyCode::Char('c') if modifiers.contains(KeyModifiers::CONTROL) => Input::Quit,
            _ => Input::Nothing,
        },
        Event::Resize(..) => Input::Redraw,
        _ => Input::Nothing,
    }
}

/// The descriptor crossterm reads keys from: stdin when it is a terminal,
/// else the controlling terminal.
pub struct Keys {
    fd: RawFd,
    _dev_tty: Option<File>,
}

impl Keys {
    pub fn open() -> io::Result<Keys> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } == 1 {
            return Ok(Keys { fd: libc::STDIN_FILENO, _dev_tty: None });
        }
        let tty = File::open("/dev/tty")?;
        Ok(Keys { fd: tty.as_raw_fd(), _dev_tty: Some(tty) })
    }

    /// Waits at most `timeout` for input. A signal cuts the wait short
    /// (with `Nothing`), so the caller can look at its stop flag.
    pub fn wait(&self, timeout: Duration) -> io::Result<Input> {
        let ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        match self.poll(ms) {
            Ok(false) => return Ok(Input::Nothing),
            Ok(true) => {}
            // SIGWINCH lands here; crossterm turns it into a resize below.
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
        if self.hung_up()? {
            return Ok(Input::Gone);
        }
        // Drain everything crossterm has parsed, so no key waits for the next timeout.
        let mut wanted = Input::Nothing;
        while event::poll(Duration::ZERO)? {
            match input(&event::read()?) {
                Input::Quit => return Ok(Input::Quit),
                Input::Redraw => wanted = Input::Redraw,
                Input::Nothing | Input::Gone => {}
            }
        }
        Ok(wanted)
    }

    /// poll(2) on the terminal: true if it has something (input or a hang-up).
    fn poll(&self, ms: i32) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(rc > 0)
    }

    fn hung_up(&self) -> io::Result<bool> {
        let mut pfd = libc::pollfd { fd: self.fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: as above; a zero timeout only reads the current state.
        let rc = unsafe { libc::poll(&mut pfd, 1, 0) };
        if rc < 0 {
            let e = io::Error::last_os_error();
            return if e.kind() == io::ErrorKind::Interrupted { Ok(false) } else { Err(e) };
        }
        Ok(pfd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::FromRawFd;

    use super::*;

    fn key(code: KeyCode, modifiers: KeyModifiers) -> Event {
        Event::Key(KeyEvent::new(code, modifiers))
    }

    #[test]
    fn keys_that_quit_and_keys_that_do_not() {
        for quit in [
            key(KeyCode::Char('q'), KeyModifiers::NONE),
            key(KeyCode::Esc, KeyModifiers::NONE),
            key(KeyCode::Char('c'), KeyModifiers::CONTROL),
        ] {
            assert_eq!(input(&quit), Input::Quit, "{quit:?}");
        }
        assert_eq!(input(&key(KeyCode::Char('c'), KeyModifiers::NONE)), Input::Nothing);
        assert_eq!(input(&key(KeyCode::Char('x'), KeyModifiers::NONE)), Input::Nothing);
        assert_eq!(input(&Event::Resize(80, 24)), Input::Redraw);
        let release = Event::Key(KeyEvent {
            kind: KeyEventKind::Release,
            ..KeyEvent::new(KeyCode::Char('q'), KeyModifiers::NONE)
        });
        assert_eq!(input(&release), Input::Nothing);
    }

    /// A real pseudo-terminal whose other end closes: the wait must come
    /// back with `Gone` at once, not spin or sleep out its timeout.
    #[test]
    fn a_hung_up_terminal_is_gone() {
        // SAFETY: plain libc calls on descriptors this test owns.
        let (master, slave) = unsafe {
            let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY);
            assert!(master >= 0, "posix_openpt: {}", io::Error::last_os_error());
            assert_eq!(libc::grantpt(master), 0);
            assert_eq!(libc::unlockpt(master), 0);
            let name = std::ffi::CStr::from_ptr(libc::ptsname(master)).to_owned();
            let slave = libc::open(name.as_ptr(), libc::O_RDWR | libc::O_NOCTTY);
            assert!(slave >= 0, "open {name:?}: {}", io::Error::last_os_error());
            (File::from_raw_fd(master), File::from_raw_fd(slave))
        };
        let keys = Keys { fd: slave.as_raw_fd(), _dev_tty: Some(slave) };
        assert_eq!(keys.wait(Duration::from_millis(50)).expect("idle wait"), Input::Nothing);
        drop(master);
        let started = std::time::Instant::now();
        assert_eq!(keys.wait(Duration::from_secs(5)).expect("wait after hang-up"), Input::Gone);
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}

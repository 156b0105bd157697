//! The terminal while `top` owns it: raw mode and the alternate screen, given
//! back on every way out. The guard's `Drop` covers returns and errors; the
//! panic hook covers panics, and runs first so the panic message lands on
//! the normal screen instead of vanishing with the alternate one.

use std::{
    io::{self, Stdout},
    sync::Once,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor, execute,
        terminal::{EnterAlternateScreen, LeaveAlternateScreen, disable_raw_mode, enable_raw_mode},
    },
};

pub type Term = Terminal<CrosstermBackend<Stdout>>;

/// Owns the terminal; restores it when dropped.
pub struct Screen {
    pub term: Term,
}

impl Screen {
    pub fn enter() -> io::Result<Screen> {
        install_panic_hook();
        enable_raw_mode()?;
        // From here on a failure must still undo raw mode.
        let setup = || -> io::Result<Term> {
            execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
            let mut term = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            term.clear()?;
            Ok(term)
        };
        match setup() {
            Ok(term) => Ok(Screen { term }),
            Err(e) => {
                restore();
                Err(e)
            }
        }
    }
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen and raw mode; harmless when already done.
pub fn restore() {
    let _ = disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

fn install_panic_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            previous(info);
        }));
    });
}

//! Draws a `Model` into a ratatui frame: a header with the target's memory
//! and socket counts, then its sockets worst first. Pure: no I/O, so a test
//! backend can check exactly what an operator would see.

use ratatui::{
    Frame,
    layout::{Constraint, Layout, Rect},
    style::{Color, Modifier, Style},
    text::{Line, Span},
    widgets::{Cell, Paragraph, Row as TableRow, Table},
};

use observer_common::tcp_state;

use super::{
    format,
    model::{Model, Row},
};
use crate::classify::{Class, StallReason, ZombieReason};

const HEADER_LINES: u16 = 6;

pub fn render(frame: &mut Frame, model: &Model) {
    let [header, table, status] =
        Layout::vertical([Constraint::Length(HEADER_LINES), Constraint::Min(0), Constraint::Length(1)])
            .areas(frame.area());
    frame.render_widget(Paragraph::new(header_lines(model)), header);
    render_table(frame, table, model);
    frame.render_widget(Paragraph::new(status_line(model, table)), status);
}

fn bold() -> Style {
    Style::new().add_modifier(Modifier::BOLD)
}

fn class_style(class: Class) -> Style {
    match class {
        Class::Healthy => Style::new(),
        Class::Zombie(_) => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
        Class::Stalled(_) => Style::new().fg(Color::Yellow),
    }
}

/// `label n` pairs, the count highlighted when it is not zero.
fn counts<'a>(label: &'a str, items: impl IntoIterator<Item = (&'a str, u64)>, alarm: Style) -> Vec<Span<'a>> {
    let mut spans = vec![Span::styled(label, bold())];
    for (name, n) in items {
        spans.push(Span::raw(format!("  {name} ")));
        spans.push(Span::styled(n.to_string(), if n > 0 { alarm } else { Style::new() }));
    }
    spans
}

fn header_lines(m: &Model) -> Vec<Line<'_>> {
    let s = &m.summary;
    // With `--pid` the target already names the one process.
    let pids = match m.pids.as_slice() {
        [] => "  no process matches".to_string(),
        [one] if m.target == format!("pid {one}") => String::new(),
        many => format!("  pids {}", many.iter().map(u32::to_string).collect::<Vec<_>>().join(",")),
    };
    let title = Line::from(vec![
        Span::styled("observer top", bold()),
        Span::raw(format!("  {}{pids}  every {}  q quits", m.target, format::age(m.interval))),
    ]);

    let red = class_style(Class::Zombie(ZombieReason::DeadPeer));
    let yellow = class_style(Class::Stalled(StallReason::ZeroWindow));
    let stuck: u64 = s.zombie_bytes.values().chain(s.stalled_bytes.values()).sum();
    let mut memory = vec![Span::styled("memory ", bold())];
    memory.push(Span::raw(match m.rss {
        Some((rss, anon)) => format!("  rss {}  anon {}", format::bytes(rss), format::bytes(anon)),
        None => "  rss unknown".to_string(),
    }));
    memory.push(Span::raw("   stuck in zombies+stalled "));
    memory.push(Span::styled(format::bytes(stuck), if stuck > 0 { red } else { Style::new() }));

    let queues = Line::from(vec![
        Span::styled("queues ", bold()),
        Span::raw(format!(
            "  send queue {} = unsent {} + unacked {}",
            format::bytes(s.unsent + s.unacked),
            format::bytes(s.unsent),
            format::bytes(s.unacked)
        )),
    ]);

    let states = counts("sockets", s.by_state.iter().map(|(st, n)| (tcp_state::name(*st), *n)), Style::new());

    let zombies =
        counts("zombies", ZombieReason::ALL.iter().map(|r| (r.label(), s.zombies.get(r).copied().unwrap_or(0))), red);
    let stalled =
        counts("stalled", StallReason::ALL.iter().map(|r| (r.label(), s.stalled.get(r).copied().unwrap_or(0))), yellow);

    vec![title, Line::from(memory), queues, Line::from(states), Line::from(zombies), Line::from(stalled)]
}

fn render_table(frame: &mut Frame, area: Rect, m: &Model) {
    let several_owners = m.pids.len() > 1;
    let mut titles = vec![
        Cell::from("PEER"),
        Cell::from("STATE"),
        right("UNSENT".into()),
        right("UNACKED".into()),
        right("BACKOFF".into()),
        right("NO ACK".into()),
        Cell::from("CLASS"),
    ];
    // The peer takes what the other columns leave, up to the longest IPv6
    // `[addr]:port`; beyond that the table keeps to the left.
    let mut widths = vec![
        Constraint::Max(47),
        Constraint::Length(11),
        Constraint::Length(10),
        Constraint::Length(10),
        Constraint::Length(7),
        Constraint::Length(7),
        Constraint::Length(11),
    ];
    if several_owners {
        titles.insert(0, Cell::from("PID"));
        widths.insert(0, Constraint::Length(7));
    }
    let header = TableRow::new(titles).style(bold().add_modifier(Modifier::REVERSED));
    let rows = m.rows.iter().map(|r| table_row(r, several_owners));
    frame.render_widget(Table::new(rows, widths).header(header).column_spacing(1), area);
}

fn right(text: String) -> Cell<'static> {
    Cell::from(Line::from(text).right_aligned())
}

fn table_row(r: &Row, with_owner: bool) -> TableRow<'static> {
    let mut cells = Vec::with_capacity(8);
    if with_owner {
        cells.push(Cell::from(r.owner.to_string()));
    }
    cells.extend([
        Cell::from(r.peer.clone()),
        Cell::from(r.state),
        right(r.unsent.to_string()),
        right(r.unacked.to_string()),
        right(r.backoff.to_string()),
        right(r.no_ack_for.map_or_else(|| "-".to_string(), format::age)),
        Cell::from(Span::styled(r.class.label(), class_style(r.class))),
    ]);
    TableRow::new(cells)
}

fn status_line<'a>(m: &'a Model, table: Rect) -> Line<'a> {
    if let Some(e) = &m.error {
        return Line::from(Span::styled(format!("sweep failed: {e}"), Style::new().fg(Color::Red)));
    }
    // One line of the table area is its header.
    let shown = m.rows.len().min(usize::from(table.height.saturating_sub(1)));
    Line::from(format!("{shown} of {} sockets shown, most queued bytes first (listeners left out)", m.rows.len()))
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, time::Duration};

    use observer_common::tcp_state;
    use ratatui::{Terminal, backend::TestBackend};

    use super::*;
    use crate::{sockets::table::Summary, top::model};

    const MIB: u64 = 1024 * 1024;

    fn row(port: u16, state: u8, unsent: u64, unacked: u64, class: Class) -> Row {
        Row {
            owner: 4242,
            peer: format!("198.18.0.2:{port}"),
            state: tcp_state::name(state),
            unsent,
            unacked,
            backoff: if unacked > 0 { 4 } else { 0 },
            no_ack_for: (unacked > 0).then(|| Duration::from_millis(12_300)),
            class,
        }
    }

    fn sample() -> Model {
        let mut rows = vec![
            row(40001, tcp_state::ESTABLISHED, 0, 0, Class::Healthy),
            row(40002, tcp_state::CLOSE_WAIT, 300, 0, Class::Zombie(ZombieReason::CloseWait)),
            row(40003, tcp_state::ESTABLISHED, 2_000_000, 150_000, Class::Zombie(ZombieReason::DeadPeer)),
            row(40004, tcp_state::ESTABLISHED, 900_000, 0, Class::Stalled(StallReason::ZeroWindow)),
            row(40005, tcp_state::FIN_WAIT1, 0, 7_000, Class::Zombie(ZombieReason::Orphaned)),
        ];
        model::sort(&mut rows);
        let summary = Summary {
            by_state: BTreeMap::from([
                (tcp_state::ESTABLISHED, 3),
                (tcp_state::CLOSE_WAIT, 1),
                (tcp_state::FIN_WAIT1, 1),
                (tcp_state::LISTEN, 1),
            ]),
            zombies: BTreeMap::from([
                (ZombieReason::DeadPeer, 1),
                (ZombieReason::CloseWait, 1),
                (ZombieReason::Orphaned, 1),
            ]),
            zombie_bytes: BTreeMap::from([
                (ZombieReason::DeadPeer, 2_150_000),
                (ZombieReason::CloseWait, 300),
                (ZombieReason::Orphaned, 7_000),
            ]),
            stalled: BTreeMap::from([(StallReason::ZeroWindow, 1)]),
            stalled_bytes: BTreeMap::from([(StallReason::ZeroWindow, 900_000)]),
            unsent: 2_900_300,
            unacked: 157_000,
            tracked: 6,
        };
        Model {
            target: "pid 4242".into(),
            pids: vec![4242],
            interval: Duration::from_secs(1),
            rss: Some((50 * MIB, 30 * MIB)),
            summary,
            rows,
            error: None,
        }
    }

    fn draw(model: &Model, w: u16, h: u16) -> Vec<String> {
        let mut term = Terminal::new(TestBackend::new(w, h)).expect("test terminal");
        term.draw(|f| render(f, model)).expect("draw");
        let buf = term.backend().buffer();
        (0..h).map(|y| (0..w).map(|x| buf[(x, y)].symbol()).collect::<String>()).collect()
    }

    fn line_with<'a>(screen: &'a [String], needle: &str) -> (usize, &'a str) {
        screen
            .iter()
            .enumerate()
            .find(|(_, l)| l.contains(needle))
            .map(|(i, l)| (i, l.as_str()))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{}", screen.join("\n")))
    }

    #[test]
    fn header_shows_memory_states_zombies_and_stalls() {
        let screen = draw(&sample(), 80, 24);
        let text = screen.join("\n");
        assert!(screen[0].contains("pid 4242  every 1.0s"), "{text}");
        assert!(text.contains("rss 50.0 MiB  anon 30.0 MiB"), "{text}");
        // 2_150_000 + 300 + 7_000 + 900_000 bytes on zombie and stalled sockets.
        assert!(text.contains(&format!("stuck in zombies+stalled {}", format::bytes(3_057_300))), "{text}");
        let queues = format!(
            "send queue {} = unsent {} + unacked {}",
            format::bytes(3_057_300),
            format::bytes(2_900_300),
            format::bytes(157_000)
        );
        assert!(text.contains(&queues), "{text}");
        assert!(text.contains("established 3  fin_wait1 1  close_wait 1  listen 1"), "{text}");
        assert!(text.contains("dead_peer 1  close_wait 1  orphaned 1"), "{text}");
        assert!(text.contains("zero_window 1"), "{text}");
        assert!(text.contains("5 of 5 sockets shown"), "{text}");
        // Nothing in the header is cut off at 80 columns: it reads the same as on a wide screen.
        let wide = draw(&sample(), 200, 24);
        for (narrow, wide) in screen.iter().zip(&wide).take(usize::from(HEADER_LINES)) {
            assert_eq!(narrow.trim_end(), wide.trim_end());
        }
    }

    #[test]
    fn rows_come_in_queued_bytes_order_with_their_class() {
        let screen = draw(&sample(), 80, 24);
        let order: Vec<usize> =
            ["40003", "40004", "40005", "40002", "40001"].iter().map(|p| line_with(&screen, p).0).collect();
        assert!(order.windows(2).all(|w| w[0] < w[1]), "rows out of order: {order:?}\n{}", screen.join("\n"));
        let (_, dead) = line_with(&screen, "198.18.0.2:40003");
        for cell in ["established", "2000000", "150000", "4", "12.3s", "dead_peer"] {
            assert!(dead.contains(cell), "{cell:?} missing from {dead:?}");
        }
        assert!(line_with(&screen, "40004").1.contains("zero_window"));
        assert!(line_with(&screen, "40005").1.contains("orphaned"));
        let (_, cw) = line_with(&screen, "40002");
        assert!(cw.contains("close_wait") && cw.contains(" - "), "{cw:?}");
        assert!(line_with(&screen, "40001").1.contains("healthy"));
        // Fits: every column, the class last, is whole at 80 columns.
        for (narrow, wide) in screen.iter().zip(&draw(&sample(), 200, 24)).skip(usize::from(HEADER_LINES)) {
            let words = |l: &str| l.split_whitespace().map(str::to_string).collect::<Vec<_>>();
            assert_eq!(words(narrow), words(wide));
        }
    }

    #[test]
    fn several_processes_get_a_pid_column() {
        let mut m = sample();
        m.pids = vec![4242, 4243];
        let screen = draw(&m, 100, 24);
        assert!(line_with(&screen, "PEER").1.contains("PID"));
        assert_eq!(line_with(&screen, "pids 4242,4243").0, 0);
    }

    #[test]
    fn errors_and_missing_targets_are_said_not_hidden() {
        let m = Model {
            error: Some("opening network namespace of pid 9: gone".into()),
            pids: vec![],
            rss: None,
            ..sample()
        };
        let text = draw(&m, 80, 24).join("\n");
        assert!(text.contains("no process matches"), "{text}");
        assert!(text.contains("rss unknown"), "{text}");
        assert!(text.contains("sweep failed: opening network namespace"), "{text}");
    }

    #[test]
    fn tiny_and_empty_screens_do_not_panic() {
        for (w, h) in [(20, 5), (1, 1), (80, 3), (0, 0)] {
            draw(&sample(), w, h);
        }
        let text = draw(&Model::default(), 80, 24).join("\n");
        assert!(text.contains("0 of 0 sockets shown"), "{text}");
    }
}

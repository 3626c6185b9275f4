//! Colour, only for people: on a terminal, and never with `NO_COLOR` set.

use std::io::IsTerminal;

/// What a cell means, so a terminal can colour it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Tone {
    #[default]
    Plain,
    Good,
    Warn,
    Bad,
}

/// Whether to colour what goes to stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Style {
    pub colour: bool,
}

impl Style {
    pub const PLAIN: Style = Style { colour: false };

    /// Colour when stdout is a terminal and `NO_COLOR` is unset (any value, even empty, turns it off).
    pub fn detect(no_color: Option<std::ffi::OsString>) -> Style {
        Style { colour: no_color.is_none() && std::io::stdout().is_terminal() }
    }

    pub fn paint(self, text: &str, tone: Tone) -> String {
        let code = match tone {
            Tone::Plain => return text.to_string(),
            Tone::Good => "32",
            Tone::Warn => "33",
            Tone::Bad => "31",
        };
        if self.colour { format!("\x1b[{code}m{text}\x1b[0m") } else { text.to_string() }
    }
}

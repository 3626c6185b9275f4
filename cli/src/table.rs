//! kubectl-style column tables: upper-case headers, columns left-aligned and
//! three spaces apart, no trailing blanks. Widths are computed on the plain
//! text, so colour never shifts a column.

use crate::style::{Style, Tone};

#[derive(Debug, Clone, Default)]
pub struct Table {
    headers: Vec<String>,
    rows: Vec<Vec<(String, Tone)>>,
    /// Describe pages underline their headers with dashes, as kubectl does.
    underline: bool,
}

impl Table {
    pub fn new<S: Into<String>>(headers: impl IntoIterator<Item = S>) -> Self {
        Table { headers: headers.into_iter().map(Into::into).collect(), rows: Vec::new(), underline: false }
    }

    pub fn underlined(mut self) -> Self {
        self.underline = true;
        self
    }

    pub fn push<S: Into<String>>(&mut self, cells: impl IntoIterator<Item = S>) {
        self.rows.push(cells.into_iter().map(|c| (c.into(), Tone::Plain)).collect());
    }

    pub fn push_toned(&mut self, cells: Vec<(String, Tone)>) {
        self.rows.push(cells);
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    fn widths(&self) -> Vec<usize> {
        let mut widths: Vec<usize> = self.headers.iter().map(|h| h.chars().count()).collect();
        for row in &self.rows {
            for (i, (cell, _)) in row.iter().enumerate() {
                if i < widths.len() {
                    widths[i] = widths[i].max(cell.chars().count());
                }
            }
        }
        widths
    }

    /// The whole table, each line prefixed by `indent` and ending in `\n`.
    pub fn render(&self, style: Style, indent: &str) -> String {
        let widths = self.widths();
        let mut out = String::new();
        let plain: Vec<(String, Tone)> = self.headers.iter().map(|h| (h.clone(), Tone::Plain)).collect();
        line(&mut out, indent, &widths, &plain, style);
        if self.underline {
            let dashes: Vec<(String, Tone)> = self.headers.iter().map(|h| ("-".repeat(h.chars().count()), Tone::Plain)).collect();
            line(&mut out, indent, &widths, &dashes, style);
        }
        for row in &self.rows {
            line(&mut out, indent, &widths, row, style);
        }
        out
    }

    /// Only the rows, for watches that print the header once.
    pub fn render_rows(&self, style: Style, widths_from: &Table) -> String {
        let widths = widths_from.widths();
        let mut out = String::new();
        for row in &self.rows {
            line(&mut out, "", &widths, row, style);
        }
        out
    }
}

fn line(out: &mut String, indent: &str, widths: &[usize], cells: &[(String, Tone)], style: Style) {
    let mut text = String::from(indent);
    for (i, (cell, tone)) in cells.iter().enumerate() {
        let last = i + 1 == cells.len();
        text.push_str(&style.paint(cell, *tone));
        if !last {
            let width = widths.get(i).copied().unwrap_or(0);
            let pad = width.saturating_sub(cell.chars().count()) + 3;
            text.push_str(&" ".repeat(pad));
        }
    }
    out.push_str(text.trim_end());
    out.push('\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn columns_align_without_trailing_blanks() {
        let mut t = Table::new(["NAME", "STATUS"]);
        t.push(["node-a", "Ready"]);
        t.push(["b", ""]);
        assert_eq!(t.render(Style::PLAIN, ""), "NAME     STATUS\nnode-a   Ready\nb\n");
        assert_eq!(t.clone().underlined().render(Style::PLAIN, "  "), "  NAME     STATUS\n  ----     ------\n  node-a   Ready\n  b\n");
    }
}

//! HTML for the console: escaping, the page layout, tables and server-rendered SVG charts.
//!
//! Owns: turning values into markup. Must never: write a value into markup without
//! [`esc`] (text and attributes alike), load anything from another origin, or need JavaScript
//! to show information.

use std::fmt::Write as _;

/// Escape text for HTML text and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// Percent-encode a query or path component.
pub fn url_enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// The stylesheet (served at `/console/assets/console.css`).
pub const CSS: &str = include_str!("console.css");

/// One navigation entry: (path, label).
const NAV: &[(&str, &str)] = &[
    ("/console/controllers", "Controllers"),
    ("/console/executions", "Executions"),
    ("/console/audit", "Audit"),
    ("/console/approvals", "Approvals"),
    ("/console/health", "Health"),
];

/// What the layout needs besides the body.
pub struct Chrome<'a> {
    /// Page title (also the `<h1>`).
    pub title: &'a str,
    /// Which nav entry is current (its path).
    pub section: &'a str,
    /// Who is logged in (`None` on the login page).
    pub who: Option<&'a str>,
    /// The session's CSRF token, for the logout form (`None`: no logout button).
    pub csrf: Option<&'a str>,
    /// Seconds between automatic reloads (`<meta http-equiv="refresh">`), if any.
    pub refresh: Option<u32>,
}

/// A whole page around `body`.
pub fn page(chrome: &Chrome<'_>, body: &str) -> String {
    let mut h = String::with_capacity(body.len() + 2048);
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">");
    h.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">");
    if let Some(s) = chrome.refresh {
        let _ = write!(h, "<meta http-equiv=\"refresh\" content=\"{s}\">");
    }
    let _ = write!(
        h,
        "<title>{} · Magic Runtime</title><link rel=\"stylesheet\" href=\"/console/assets/console.css\"></head><body>",
        esc(chrome.title)
    );
    h.push_str("<a class=\"skip\" href=\"#main\">Skip to content</a><header><nav aria-label=\"Console\"><span class=\"brand\">Magic Runtime</span><ul>");
    if chrome.who.is_some() {
        for (path, label) in NAV {
            let current = if *path == chrome.section {
                " aria-current=\"page\""
            } else {
                ""
            };
            let _ = write!(h, "<li><a href=\"{path}\"{current}>{label}</a></li>");
        }
    }
    h.push_str("</ul>");
    if let Some(who) = chrome.who {
        let _ = write!(
            h,
            "<span class=\"who\">Signed in as <b>{}</b></span>",
            esc(who)
        );
        if let Some(csrf) = chrome.csrf {
            let _ = write!(
                h,
                "<form method=\"post\" action=\"/console/logout\" class=\"inline\">{}<button type=\"submit\">Sign out</button></form>",
                csrf_field(csrf)
            );
        }
    }
    let _ = write!(
        h,
        "</nav></header><main id=\"main\" tabindex=\"-1\"><h1>{}</h1>{body}</main></body></html>",
        esc(chrome.title)
    );
    h
}

/// The hidden CSRF field of a state-changing form.
pub fn csrf_field(token: &str) -> String {
    format!(
        "<input type=\"hidden\" name=\"csrf\" value=\"{}\">",
        esc(token)
    )
}

/// A table: caption, column headers, rows of already-escaped cell markup.
pub fn table(caption: &str, headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut h = String::new();
    let _ = write!(h, "<table><caption>{}</caption><thead><tr>", esc(caption));
    for c in headers {
        let _ = write!(h, "<th scope=\"col\">{}</th>", esc(c));
    }
    h.push_str("</tr></thead><tbody>");
    if rows.is_empty() {
        let _ = write!(
            h,
            "<tr><td colspan=\"{}\" class=\"empty\">None.</td></tr>",
            headers.len().max(1)
        );
    }
    for row in rows {
        h.push_str("<tr>");
        for cell in row {
            let _ = write!(h, "<td>{cell}</td>");
        }
        h.push_str("</tr>");
    }
    h.push_str("</tbody></table>");
    h
}

/// A message box (`kind`: `ok`, `warn`, `error`), with `role="status"` or `alert`.
pub fn notice(kind: &str, text_html: &str) -> String {
    let role = if kind == "error" { "alert" } else { "status" };
    format!("<p class=\"notice {kind}\" role=\"{role}\">{text_html}</p>")
}

/// One line of a chart.
pub struct Line<'a> {
    /// Legend label.
    pub label: &'a str,
    /// CSS class giving its colour (`s1` … `s5`).
    pub class: &'a str,
    /// One value per x position (`None`: no data there).
    pub values: Vec<Option<f64>>,
}

/// A line chart as inline SVG with a text summary (`role="img"`, labelled), no script.
/// `x_label_left`/`x_label_right` label the ends of the time axis.
pub fn line_chart(
    id: &str,
    title: &str,
    unit: &str,
    lines: &[Line<'_>],
    x_label_left: &str,
    x_label_right: &str,
) -> String {
    const W: f64 = 720.0;
    const H: f64 = 150.0;
    const LEFT: f64 = 48.0;
    const TOP: f64 = 8.0;
    const BOTTOM: f64 = 20.0;
    let plot_w = W - LEFT - 8.0;
    let plot_h = H - TOP - BOTTOM;
    let max = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .fold(0.0f64, |a, b| a.max(*b));
    let top = nice_ceiling(max);
    let n = lines.iter().map(|l| l.values.len()).max().unwrap_or(0);
    let mut summary = Vec::new();
    for l in lines {
        let vals: Vec<f64> = l.values.iter().flatten().copied().collect();
        let last = l.values.iter().rev().flatten().next();
        let peak = vals.iter().fold(0.0f64, |a, b| a.max(*b));
        summary.push(match last {
            Some(v) => format!(
                "{}: latest {} {unit}, peak {} {unit}",
                l.label,
                fmt_num(*v),
                fmt_num(peak)
            ),
            None => format!("{}: no data", l.label),
        });
    }
    let mut h = String::new();
    let _ = write!(
        h,
        "<figure class=\"chart\"><figcaption id=\"{id}-t\">{}</figcaption>",
        esc(title)
    );
    let _ = write!(
        h,
        "<svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-labelledby=\"{id}-t {id}-d\" preserveAspectRatio=\"none\">"
    );
    // Grid: 0, half, top.
    for (i, frac) in [0.0, 0.5, 1.0].iter().enumerate() {
        let y = TOP + plot_h * (1.0 - frac);
        let _ = write!(
            h,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{}\" y1=\"{y:.0}\" y2=\"{y:.0}\"/><text class=\"ax\" x=\"{}\" y=\"{:.0}\" text-anchor=\"end\">{}</text>",
            W - 8.0,
            LEFT - 4.0,
            y + 4.0,
            if i == 0 { "0".to_string() } else { fmt_num(top * frac) }
        );
    }
    let _ = write!(
        h,
        "<text class=\"ax\" x=\"{LEFT}\" y=\"{}\">{}</text><text class=\"ax\" x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
        H - 4.0,
        esc(x_label_left),
        W - 8.0,
        H - 4.0,
        esc(x_label_right)
    );
    let step = if n > 1 { plot_w / (n - 1) as f64 } else { 0.0 };
    for l in lines {
        let mut d = String::new();
        let mut pen_down = false;
        for (i, v) in l.values.iter().enumerate() {
            match v {
                Some(v) => {
                    let x = LEFT + step * i as f64;
                    let y = TOP + plot_h * (1.0 - (v / top).clamp(0.0, 1.0));
                    let _ = write!(d, "{}{x:.0} {y:.0}", if pen_down { "L" } else { "M" });
                    pen_down = true;
                }
                None => pen_down = false,
            }
        }
        if !d.is_empty() {
            let _ = write!(h, "<path class=\"{}\" d=\"{d}\"/>", l.class);
        }
    }
    h.push_str("</svg>");
    let _ = write!(h, "<p class=\"legend\" id=\"{id}-d\">");
    for (l, s) in lines.iter().zip(&summary) {
        let _ = write!(
            h,
            "<span><i class=\"key {}\" aria-hidden=\"true\"></i>{}</span> ",
            l.class,
            esc(s)
        );
    }
    h.push_str("</p></figure>");
    h
}

/// The smallest 1/2/5×10^k at or above `v` (1 for 0).
pub fn nice_ceiling(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * mag {
            return m * mag;
        }
    }
    10.0 * mag
}

/// A number for people: up to 3 significant decimals, no trailing zeros.
pub fn fmt_num(v: f64) -> String {
    let s = if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    };
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

/// Bytes for people (`512 B`, `1.5 MiB`).
pub fn fmt_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    format!("{} {}", fmt_num(v), UNITS[u])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping() {
        for (raw, want) in [
            ("plain", "plain"),
            ("<script>", "&lt;script&gt;"),
            ("a\"b'c&d", "a&quot;b&#39;c&amp;d"),
            ("é", "é"),
        ] {
            assert_eq!(esc(raw), want);
        }
        assert_eq!(url_enc("a b/c?d=é"), "a%20b%2Fc%3Fd%3D%C3%A9");
    }

    #[test]
    fn numbers() {
        for (v, want) in [
            (0.0, 1.0),
            (0.3, 0.5),
            (7.0, 10.0),
            (120.0, 200.0),
            (1.0, 1.0),
        ] {
            assert_eq!(nice_ceiling(v), want, "{v}");
        }
        assert_eq!(fmt_num(1.5), "1.5");
        assert_eq!(fmt_num(2.0), "2");
        assert_eq!(fmt_num(123.4), "123");
        assert_eq!(fmt_bytes(1536), "1.5 KiB");
        assert_eq!(fmt_bytes(10), "10 B");
    }

    #[test]
    fn chart_is_labelled_and_breaks_at_gaps() {
        let svg = line_chart(
            "c",
            "Rate <x>",
            "/s",
            &[Line {
                label: "rate",
                class: "s1",
                values: vec![Some(1.0), None, Some(2.0), Some(3.0)],
            }],
            "-1h",
            "now",
        );
        assert!(svg.contains("Rate &lt;x&gt;"));
        assert!(svg.contains("role=\"img\""));
        assert_eq!(svg.matches('M').count(), 2, "{svg}");
        assert!(svg.contains("latest 3 /s, peak 3 /s"));
    }

    #[test]
    fn page_has_lang_skip_link_and_nav() {
        let p = page(
            &Chrome {
                title: "T",
                section: "/console/audit",
                who: Some("<admin>"),
                csrf: Some("tok"),
                refresh: None,
            },
            "<p>x</p>",
        );
        assert!(p.contains("<html lang=\"en\">"));
        assert!(p.contains("href=\"#main\""));
        assert!(p.contains("href=\"/console/audit\" aria-current=\"page\""));
        assert!(p.contains("&lt;admin&gt;"));
        assert!(p.contains("name=\"csrf\" value=\"tok\""));
    }
}

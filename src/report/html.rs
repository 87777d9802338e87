//! The report page: sections of figures, tables and notes in one self-contained HTML file
//! (styles inline, images as data URIs, no script, nothing fetched).

use std::fmt::Write;

use serde::Serialize;

use super::svg::esc;

/// One section of a report: present with its content, or absent with the reason in one line.
pub struct Section {
    pub id: &'static str,
    pub title: &'static str,
    pub content: Content,
}

pub enum Content {
    Absent(String),
    Present { html: String, figures: usize },
}

impl Section {
    pub fn absent(id: &'static str, title: &'static str, why: impl Into<String>) -> Section {
        Section {
            id,
            title,
            content: Content::Absent(why.into()),
        }
    }

    pub fn present(id: &'static str, title: &'static str, body: Body) -> Section {
        Section {
            id,
            title,
            content: Content::Present {
                html: body.html,
                figures: body.figures,
            },
        }
    }

    pub fn summary(&self) -> SectionSummary {
        match &self.content {
            Content::Absent(why) => SectionSummary {
                id: self.id,
                title: self.title,
                present: false,
                figures: 0,
                absent_because: Some(why.clone()),
            },
            Content::Present { figures, .. } => SectionSummary {
                id: self.id,
                title: self.title,
                present: true,
                figures: *figures,
                absent_because: None,
            },
        }
    }
}

/// What `--json` says about a section.
#[derive(Debug, Clone, Serialize)]
pub struct SectionSummary {
    pub id: &'static str,
    pub title: &'static str,
    pub present: bool,
    pub figures: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub absent_because: Option<String>,
}

/// A section's content as it is built: HTML and the number of figures in it.
#[derive(Default)]
pub struct Body {
    pub html: String,
    pub figures: usize,
}

impl Body {
    /// A figure: one SVG or image block with a caption; `key` names it in the page
    /// (`data-figure`), for tests and for anyone reading the DOM.
    pub fn figure(&mut self, key: &str, inner: &str, caption: &str) {
        let _ = write!(
            self.html,
            r#"<figure data-figure="{}">{inner}<figcaption>{}</figcaption></figure>"#,
            esc(key),
            esc(caption)
        );
        self.figures += 1;
    }

    /// A paragraph of (escaped) text.
    pub fn note(&mut self, text: &str) {
        let _ = write!(self.html, "<p>{}</p>", esc(text));
    }

    /// A table: header and rows of (escaped) cells; a cell starting with `<img` is kept as is.
    pub fn table(&mut self, header: &[&str], rows: &[Vec<String>]) {
        self.html.push_str("<table><thead><tr>");
        for h in header {
            let _ = write!(self.html, "<th>{}</th>", esc(h));
        }
        self.html.push_str("</tr></thead><tbody>");
        for r in rows {
            self.html.push_str("<tr>");
            for c in r {
                if c.starts_with("<img") {
                    let _ = write!(self.html, "<td class=\"frames\">{c}</td>");
                } else {
                    let _ = write!(self.html, "<td>{}</td>", esc(c));
                }
            }
            self.html.push_str("</tr>");
        }
        self.html.push_str("</tbody></table>");
    }

    /// Key-value rows.
    pub fn facts(&mut self, rows: &[(&str, String)]) {
        self.html.push_str(r#"<table class="facts"><tbody>"#);
        for (k, v) in rows {
            let _ = write!(self.html, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
        }
        self.html.push_str("</tbody></table>");
    }

    /// Raw HTML the caller built (already escaped), e.g. a row of small figures.
    pub fn raw(&mut self, html: &str) {
        self.html.push_str(html);
    }
}

const STYLE: &str = "
body{font-family:sans-serif;margin:24px auto;max-width:1320px;color:#222;background:#fff}
h1{font-size:22px;margin-bottom:2px}
h2{font-size:17px;border-bottom:1px solid #ccc;padding-bottom:3px;margin-top:28px}
.sub{color:#666;margin-top:0}
.absent{color:#777;font-style:italic}
figure{display:inline-block;margin:6px 10px 10px 0;vertical-align:top}
figcaption{font-size:12px;color:#555;max-width:640px}
table{border-collapse:collapse;font-size:12.5px;margin:6px 0}
th,td{border:1px solid #ddd;padding:3px 7px;text-align:left;vertical-align:middle}
table.facts th{background:#f4f4f4;font-weight:normal;color:#444}
td.frames{white-space:nowrap}
td{max-width:420px;overflow-wrap:anywhere}
img.frame{image-rendering:pixelated;border:1px solid #ccc;margin-right:3px}
nav a{margin-right:12px;font-size:13px}
";

/// The whole page.
pub fn page(title: &str, subtitle: &str, sections: &[Section]) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>",
        esc(title)
    );
    let _ = write!(
        s,
        "<h1>{}</h1><p class=\"sub\">{}</p><nav>",
        esc(title),
        esc(subtitle)
    );
    for sec in sections {
        let _ = write!(s, "<a href=\"#{}\">{}</a>", sec.id, esc(sec.title));
    }
    s.push_str("</nav>");
    for sec in sections {
        let _ = write!(s, "<section id=\"{}\"><h2>{}</h2>", sec.id, esc(sec.title));
        match &sec.content {
            Content::Absent(why) => {
                let _ = write!(s, "<p class=\"absent\">{}</p>", esc(why));
            }
            Content::Present { html, .. } => s.push_str(html),
        }
        s.push_str("</section>");
    }
    s.push_str("</body></html>\n");
    s
}

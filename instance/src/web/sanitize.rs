//! HTML mail made safe to show: an allow-list sanitiser (ammonia, on
//! html5ever) that keeps text formatting, tables, links and images, and
//! drops everything that runs, submits, navigates or fetches — scripts,
//! event handlers, forms, frames, `<base>`, `<meta>`, `<link>`, `<style>`,
//! `<object>`, SVG and MathML, `javascript:`/`data:`/`vbscript:` URLs,
//! `srcset`, CSS `url()`, `@import` and `expression()`. Remote images are
//! removed unless the user allowed them, and counted: that number is shown
//! on the message ("3 trackers blocked") and in its privacy explanation.
//!
//! The result is served under a Content-Security-Policy that forbids
//! scripts and (unless remote content was allowed) every remote load, in a
//! sandboxed frame: the sanitiser is the first wall, not the only one.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// The largest HTML body sanitised (a larger one is cut there first).
pub const MAX_HTML: usize = 4 * 1024 * 1024;

/// The version of what [`clean_with`] produces: bump it with any change to
/// the allow lists or the rewriting, so that bodies prepared by an older
/// version (`prepared.rs`) are not served again.
pub const VERSION: u32 = 1;

/// A sanitised body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Clean {
    /// HTML safe to put in the message frame.
    pub html: String,
    /// Remote resources removed (images, backgrounds, style URLs).
    pub blocked: usize,
}

const TAGS: &[&str] = &[
    "a",
    "abbr",
    "address",
    "b",
    "bdi",
    "bdo",
    "blockquote",
    "br",
    "caption",
    "center",
    "cite",
    "code",
    "col",
    "colgroup",
    "dd",
    "del",
    "details",
    "dfn",
    "div",
    "dl",
    "dt",
    "em",
    "figcaption",
    "figure",
    "font",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "hr",
    "i",
    "img",
    "ins",
    "kbd",
    "li",
    "mark",
    "ol",
    "p",
    "pre",
    "q",
    "s",
    "samp",
    "small",
    "span",
    "strike",
    "strong",
    "sub",
    "summary",
    "sup",
    "table",
    "tbody",
    "td",
    "tfoot",
    "th",
    "thead",
    "time",
    "tr",
    "tt",
    "u",
    "ul",
    "var",
    "wbr",
];

const GENERIC_ATTRS: &[&str] = &[
    "align",
    "valign",
    "dir",
    "lang",
    "title",
    "width",
    "height",
    "style",
    "bgcolor",
    "color",
    "border",
    "cellpadding",
    "cellspacing",
    "colspan",
    "rowspan",
    "face",
    "size",
];

/// CSS properties kept in `style` attributes (none of them loads anything).
const STYLE_PROPERTIES: &[&str] = &[
    "color",
    "background-color",
    "font-weight",
    "font-style",
    "font-size",
    "font-family",
    "text-align",
    "text-decoration",
    "line-height",
    "margin",
    "margin-left",
    "margin-right",
    "margin-top",
    "margin-bottom",
    "padding",
    "padding-left",
    "padding-right",
    "padding-top",
    "padding-bottom",
    "border",
    "border-collapse",
    "width",
    "max-width",
    "height",
    "vertical-align",
    "white-space",
    "display",
];

fn is_remote(url: &str) -> bool {
    let u = url.trim_start().to_ascii_lowercase();
    u.starts_with("http:") || u.starts_with("https:") || u.starts_with("//")
}

/// Sanitises an HTML body; remote images stay only when `allow_remote`.
pub fn clean(html: &str, allow_remote: bool) -> Clean {
    clean_with(html, allow_remote, HashMap::new())
}

/// [`clean`], with the message's inline images: `<img src="cid:X">`
/// becomes the `data:` URL `inline` gives for X (made by us from the
/// message's own PNG, JPEG, GIF or WebP parts; a `data:` URL written in
/// the mail itself never passes the scheme check, which runs first).
pub fn clean_with(html: &str, allow_remote: bool, inline: HashMap<String, String>) -> Clean {
    let html = match html.char_indices().nth(MAX_HTML) {
        Some((i, _)) => &html[..i],
        None => html,
    };
    let blocked = Arc::new(AtomicUsize::new(0));
    let counter = blocked.clone();
    let mut tag_attrs: HashMap<&str, HashSet<&str>> = HashMap::new();
    tag_attrs.insert("a", ["href", "name"].into_iter().collect());
    tag_attrs.insert("img", ["src", "alt"].into_iter().collect());
    tag_attrs.insert("td", ["background"].into_iter().collect());
    tag_attrs.insert("table", ["background"].into_iter().collect());
    tag_attrs.insert("ol", ["start", "type"].into_iter().collect());
    tag_attrs.insert("time", ["datetime"].into_iter().collect());
    let mut b = ammonia::Builder::empty();
    b.tags(TAGS.iter().copied().collect())
        .clean_content_tags(
            [
                "script", "style", "title", "noscript", "template", "svg", "math", "textarea",
                "xmp",
            ]
            .into_iter()
            .collect(),
        )
        .generic_attributes(GENERIC_ATTRS.iter().copied().collect())
        .tag_attributes(tag_attrs)
        .url_schemes(["http", "https", "mailto", "cid"].into_iter().collect())
        .url_relative(ammonia::UrlRelative::Deny)
        .link_rel(Some("noopener noreferrer nofollow"))
        .set_tag_attribute_value("a", "target", "_blank")
        .filter_style_properties(STYLE_PROPERTIES.iter().copied().collect())
        .strip_comments(true)
        .attribute_filter(move |element, attribute, value| {
            let is_cid = value.trim_start().to_ascii_lowercase().starts_with("cid:");
            match (element, attribute) {
                ("img", "src") if is_cid => {
                    let cid = value.trim_start()[4..].trim();
                    inline.get(cid).map(|d| Cow::Owned(d.clone()))
                }
                // cid: is only for inline images.
                _ if is_cid => None,
                // Backgrounds are remote loads too; never kept.
                (_, "background") => {
                    counter.fetch_add(1, Ordering::Relaxed);
                    None
                }
                ("img", "src") => {
                    if is_remote(value) && allow_remote {
                        Some(Cow::Borrowed(value))
                    } else {
                        // Remote (a tracker until the user says otherwise),
                        // or relative: dropped.
                        if is_remote(value) {
                            counter.fetch_add(1, Ordering::Relaxed);
                        }
                        None
                    }
                }
                (_, "style") => {
                    let v = value.to_ascii_lowercase();
                    if v.contains("url(")
                        || v.contains("expression")
                        || v.contains('\\')
                        || v.contains("@import")
                        || v.contains("image-set")
                    {
                        counter.fetch_add(1, Ordering::Relaxed);
                        None
                    } else {
                        Some(Cow::Borrowed(value))
                    }
                }
                _ => Some(Cow::Borrowed(value)),
            }
        });
    let html = b.clean(html).to_string();
    Clean {
        html,
        blocked: blocked.load(Ordering::Relaxed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dangerous(out: &str) -> Option<&'static str> {
        let l = out.to_ascii_lowercase();
        [
            "<script",
            "onerror",
            "onload",
            "onclick",
            "javascript:",
            "data:",
            "<iframe",
            "<form",
            "<meta",
            "<base",
            "<link",
            "<object",
            "<embed",
            "<svg",
            "<math",
            "url(",
            "@import",
            "srcset",
            "<style",
            "vbscript",
            "formaction",
            "<input",
            "<button",
        ]
        .into_iter()
        .find(|p| l.contains(p))
    }

    #[test]
    fn hostile_markup_is_removed() {
        let cases = [
            "<script>alert(1)</script>hi",
            "<img src=x onerror=alert(1)>",
            "<a href=\"javascript:alert(1)\">x</a>",
            "<a href=\"JaVaScRiPt&#58;alert(1)\">x</a>",
            "<a href=\"&#106;avascript:alert(1)\">x</a>",
            "<a href=\"data:text/html,<script>alert(1)</script>\">x</a>",
            "<meta http-equiv=refresh content=\"0;url=http://127.0.0.1:9/\">",
            "<base href=\"http://127.0.0.1:9/\"><a href=\"x\">x</a>",
            "<form action=\"http://127.0.0.1:9/\"><input name=a><button>go</button></form>",
            "<svg><script>alert(1)</script><image href=\"http://127.0.0.1:9/\"/></svg>",
            "<math><mtext><table><mglyph><style><img src=x onerror=alert(1)>",
            "<div style=\"background:url(http://127.0.0.1:9/t.png)\">x</div>",
            "<div style=\"background:u\\rl(http://127.0.0.1:9/t.png)\">x</div>",
            "<style>@import 'http://127.0.0.1:9/a.css';</style>",
            "<img srcset=\"http://127.0.0.1:9/a.png 1x\">",
            "<link rel=stylesheet href=\"http://127.0.0.1:9/a.css\">",
            "<object data=\"http://127.0.0.1:9/a.swf\"></object><embed src=x>",
            "<iframe src=\"http://127.0.0.1:9/\"></iframe>",
            "<table background=\"http://127.0.0.1:9/bg.png\"><tr><td>x</td></tr></table>",
            "<a href=\"vbscript:msgbox(1)\">x</a>",
            "<<script>script>alert(1)<</script>/script>",
            "<img src=\"http://127.0.0.1:9/p.gif\" width=1 height=1>",
            "<p style=\"width: expression(alert(1))\">x</p>",
            "<button formaction=\"javascript:alert(1)\">x</button>",
        ];
        for c in cases {
            let out = clean(c, false);
            assert_eq!(dangerous(&out.html), None, "{c:?} gave {:?}", out.html);
        }
    }

    #[test]
    fn remote_images_are_counted_and_kept_only_when_allowed() {
        let html = "<p>Hello</p><img src=\"https://t.example/p.gif\" alt=\"pixel\">\
                    <img src=\"cid:logo\"><table><tr><td background=\"https://t.example/b.png\">x</td></tr></table>";
        let blocked = clean(html, false);
        assert_eq!(blocked.blocked, 2);
        assert!(!blocked.html.contains("t.example"));
        assert!(blocked.html.contains("Hello"));
        let allowed = clean(html, true);
        assert!(allowed.html.contains("https://t.example/p.gif"));
        assert!(!allowed.html.contains("cid:"));
    }

    #[test]
    fn inline_images_become_our_data_urls_and_the_mails_own_do_not_pass() {
        let inline: HashMap<String, String> = [(
            "logo@x.test".to_owned(),
            "data:image/png;base64,iVBORw0KGgo=".to_owned(),
        )]
        .into();
        let out = clean_with(
            "<img src=\"cid:logo@x.test\"><img src=\"cid:other\">\
             <img src=\"data:image/png;base64,AAAA\"><a href=\"cid:logo@x.test\">a</a>\
             <img src=\"/messages/2a/parts/0\">",
            false,
            inline,
        );
        assert!(
            out.html
                .contains("src=\"data:image/png;base64,iVBORw0KGgo=\""),
            "{}",
            out.html
        );
        assert_eq!(out.html.matches("src=").count(), 1, "{}", out.html);
        assert!(
            !out.html.contains("cid:") && !out.html.contains("AAAA"),
            "{}",
            out.html
        );
        let none = clean("<img src=\"cid:logo\">", false);
        assert!(!none.html.contains("src"));
    }

    #[test]
    fn formatting_and_links_survive() {
        let out = clean(
            "<p style=\"color: red; position: fixed\"><b>bold</b> <a href=\"https://x.test/\">l</a></p>",
            false,
        );
        assert!(out.html.contains("<b>bold</b>"));
        assert!(out.html.contains("color:red") || out.html.contains("color: red"));
        assert!(!out.html.contains("position"));
        assert!(out.html.contains("rel=\"noopener noreferrer nofollow\""));
        assert!(out.html.contains("target=\"_blank\""));
        assert_eq!(out.blocked, 0);
    }
}

//! Small HTML pages shown to the person logging in. Every dynamic value is escaped;
//! nothing internal (errors' sources, paths, backtraces) is ever put on a page.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};

/// Escapes text for HTML element content and attribute values.
pub fn escape(s: &str) -> String {
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

/// A complete page: `title` and `paragraphs` are plain text (escaped here); `pre`, when
/// given, is shown as a preformatted block (escaped too).
pub fn render(title: &str, paragraphs: &[&str], pre: Option<&str>) -> String {
    let mut body = String::new();
    for p in paragraphs {
        body.push_str("<p>");
        body.push_str(&escape(p));
        body.push_str("</p>\n");
    }
    if let Some(pre) = pre {
        body.push_str("<pre>");
        body.push_str(&escape(pre));
        body.push_str("</pre>\n");
    }
    format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>weft: {t}</title>\
         <style>body{{font-family:system-ui,sans-serif;max-width:40em;margin:3em auto;padding:0 1em;line-height:1.5}}\
         pre{{background:#f4f4f4;padding:.75em;overflow-x:auto}}</style></head>\n\
         <body><h1>{t}</h1>\n{body}</body></html>\n",
        t = escape(title),
    )
}

/// An HTML response with no caching.
pub fn response(status: StatusCode, html: String) -> Response {
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        html,
    )
        .into_response()
}

/// The error page: a title and one plain-text explanation.
pub fn error(status: StatusCode, title: &str, message: &str) -> Response {
    response(status, render(title, &[message], None))
}

/// The error page for a login error.
pub fn login_error(e: &crate::OidcError) -> Response {
    error(e.status(), "Login failed", &e.user_message())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_escaped() {
        let html = render("<x>", &["a & \"b\" 'c'"], Some("<script>"));
        assert!(html.contains("<title>weft: &lt;x&gt;</title>"));
        assert!(html.contains("a &amp; &quot;b&quot; &#39;c&#39;"));
        assert!(html.contains("<pre>&lt;script&gt;</pre>"));
        assert!(!html.contains("<script>"));
    }

    #[test]
    fn login_error_page_has_status_and_plain_message() {
        let e = crate::OidcError::UnknownState;
        let r = login_error(&e);
        assert_eq!(r.status(), StatusCode::BAD_REQUEST);
        assert_eq!(
            r.headers()[header::CONTENT_TYPE],
            "text/html; charset=utf-8"
        );
    }
}

//! What maskflow's static HTML pages (report.html, review.html, runs.html) share.

/// Text escaped for HTML element content and double-quoted attribute values.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A script that marks on `<body>`, once the page has loaded, how many images it has and how many
/// did not load (`data-images`, `data-broken-images`): `bench/report_check.sh` reads them in headless
/// Chromium, and their absence means the page's script did not run.
pub const IMAGES_LOADED_SCRIPT: &str = "<script>window.addEventListener('load',function(){var n=0,b=0;\
document.querySelectorAll('img').forEach(function(i){n++;if(!i.complete||i.naturalWidth===0)b++;});\
document.body.setAttribute('data-images',n);document.body.setAttribute('data-broken-images',b);});</script>";

#[cfg(test)]
mod tests {
    #[test]
    fn escapes_markup_and_quotes() {
        assert_eq!(super::esc(r#"<a href="x">&</a>"#), "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;");
    }
}

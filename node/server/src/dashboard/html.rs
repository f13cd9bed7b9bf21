//! The dashboard's markup: one page layout, escaping, and the few drawings it needs (stacked
//! bars, a rate chart, a seat map) as server-rendered SVG, so no script or chart library is
//! fetched from anywhere and every figure is text the server escaped.

use std::fmt::Write as _;

/// Text for HTML: what an operator typed (event names) is never markup.
pub fn escape(s: &str) -> String {
    s.chars().fold(String::with_capacity(s.len()), |mut o, c| {
        match c {
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '&' => o.push_str("&amp;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
        o
    })
}

/// Region colours, in cluster order (colour-blind-safe Okabe–Ito hues).
const REGION_COLOURS: [&str; 7] = [
    "#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
];

pub fn region_colour(r: usize) -> &'static str {
    REGION_COLOURS[r % REGION_COLOURS.len()]
}

pub const SOLD: &str = "#2f4858";
pub const HELD: &str = "#e69f00";
pub const SELLABLE: &str = "#7ccba2";
pub const IN_FLIGHT: &str = "#b39ddb";

/// `GET /dashboard/live.js`, the dashboard's only script (pages allow no other, see
/// [`respond`]): replaces the element `#view` with each `view` event of the page's stream.
/// The server renders the same fragment for the first load and for every update, so the two
/// never disagree. `EventSource` reconnects by itself and the status line says so; a stream
/// the server closed for good (the session ended) sends the browser to the login form.
pub const LIVE_JS: &str = "(function(){var live=document.getElementById('live');\
var view=document.getElementById('view');var es=new EventSource(document.body.dataset.stream);\
es.onopen=function(){live.textContent='live';live.className='ok';};\
es.onerror=function(){if(es.readyState===2){window.location='/dashboard';return;}\
live.textContent='reconnecting…';live.className='err';};\
es.addEventListener('view',function(m){view.innerHTML=m.data;});})();\n";

/// A page with its status and the headers every dashboard page carries: scripts only from
/// this node (`live.js`), no framing by another page (the buttons change state), forms only
/// to this node.
pub fn respond(status: axum::http::StatusCode, html: String) -> axum::response::Response {
    use axum::http::header;
    use axum::response::IntoResponse;
    (
        status,
        [
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'self'; connect-src 'self'; style-src 'unsafe-inline'; \
                 img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::response::Html(html),
    )
        .into_response()
}

const STYLE: &str = "\
body{font:15px system-ui,sans-serif;margin:0 auto;max-width:64rem;padding:.8rem;color:#222}\
h1{font-size:1.3rem;margin:.2rem 0}h2{font-size:1.1rem;margin:1.2rem 0 .4rem}\
table{border-collapse:collapse;width:100%}td,th{padding:.35rem;border-bottom:1px solid #ddd;text-align:left;vertical-align:top}\
td.n,th.n{text-align:right;font-variant-numeric:tabular-nums}\
.bar{background:#eee;height:.6rem;border-radius:.3rem;min-width:4rem}.bar i{display:block;height:100%;background:#3a7;border-radius:.3rem}\
header{display:flex;flex-wrap:wrap;gap:.6rem;justify-content:space-between;align-items:center;border-bottom:2px solid #222;padding-bottom:.3rem}\
nav a{margin-right:.8rem}.err{color:#b00}.ok{color:#070}.muted{color:#666}\
.stale{background:#fff3cd;border:1px solid #e0c060;padding:.4rem;border-radius:.3rem}\
.key i{display:inline-block;width:.8rem;height:.8rem;margin:0 .2rem 0 .6rem;vertical-align:middle;border-radius:.15rem}\
svg{max-width:100%;height:auto}form.inline{display:inline}button{font:inherit;padding:.3rem .7rem}\
.scroll{overflow-x:auto}\
@media(max-width:40rem){body{font-size:14px}td,th{padding:.25rem}}";

/// A whole page. `stream`, when given, is the URL whose `view` events replace `#view`.
pub fn page(region: &str, title: &str, stream: Option<&str>, body: &str) -> String {
    let region = escape(region);
    let (data, script) = match stream {
        Some(url) => (
            format!(" data-stream=\"{}\"", escape(url)),
            "<script src=/dashboard/live.js defer></script>",
        ),
        None => (String::new(), ""),
    };
    format!(
        "<!doctype html><html lang=en><head><meta charset=utf-8>\
         <meta name=viewport content=\"width=device-width, initial-scale=1\">\
         <title>{title} · allot {region}</title><style>{STYLE}</style></head>\
         <body{data}><header><h1>allot · {region}</h1>\
         <nav><a href=/dashboard>Events</a><a href=/dashboard/cluster>Cluster</a></nav></header>\
         {body}{script}</body></html>",
        title = escape(title),
    )
}

/// One coloured part of a stacked bar.
pub struct Segment<'a> {
    pub label: &'a str,
    pub value: u64,
    pub colour: &'a str,
}

/// A horizontal bar whose parts are drawn to the scale of `scale` (the pool's capacity), so
/// bars of different regions compare; each part says its figure on hover.
pub fn stacked_bar(segments: &[Segment], scale: u64) -> String {
    let scale = scale.max(1) as f64;
    let mut svg = String::from(
        "<svg viewBox=\"0 0 100 6\" preserveAspectRatio=none width=100% height=14 role=img>",
    );
    let mut x = 0.0;
    for s in segments.iter().filter(|s| s.value > 0) {
        let w = 100.0 * s.value as f64 / scale;
        let _ = write!(
            svg,
            "<rect x=\"{x:.3}\" y=0 width=\"{w:.3}\" height=6 fill=\"{}\"><title>{}: {}</title></rect>",
            s.colour, s.label, s.value
        );
        x += w;
    }
    svg.push_str("</svg>");
    svg
}

/// The legend of the colours a page uses.
pub fn key(items: &[(&str, &str)]) -> String {
    items
        .iter()
        .fold(String::from("<p class=key>"), |mut o, (colour, label)| {
            let _ = write!(o, "<i style=\"background:{colour}\"></i>{}", escape(label));
            o
        })
        + "</p>"
}

/// One line of the rate chart.
pub struct Series<'a> {
    pub name: &'a str,
    pub colour: &'a str,
    /// Oldest first, one point per step.
    pub points: &'a [u64],
}

/// A small line chart of rates over the last minutes (`span_s` seconds across), scaled to its
/// highest point, with that figure on the axis.
pub fn rate_chart(series: &[Series], span_s: u64) -> String {
    const W: f64 = 300.0;
    const H: f64 = 80.0;
    let top = series
        .iter()
        .flat_map(|s| s.points.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let mut svg = format!(
        "<svg viewBox=\"0 0 {W} {h}\" width=\"{W}\" height=\"{h}\" role=img aria-label=\"sales per minute\">\
         <line x1=0 y1=\"{H}\" x2=\"{W}\" y2=\"{H}\" stroke=\"#999\" stroke-width=.5/>\
         <text x=2 y=9 font-size=8 fill=\"#666\">{top}/min</text>\
         <text x=2 y=\"{ty}\" font-size=8 fill=\"#666\">−{m} min</text>\
         <text x=\"{W}\" y=\"{ty}\" font-size=8 fill=\"#666\" text-anchor=end>now</text>",
        h = H + 12.0,
        ty = H + 10.0,
        m = span_s / 60,
    );
    for s in series {
        let n = s.points.len();
        if n == 0 {
            continue;
        }
        let step = if n > 1 { W / (n - 1) as f64 } else { 0.0 };
        let points = s
            .points
            .iter()
            .enumerate()
            .fold(String::new(), |mut o, (i, v)| {
                let y = H - H * (*v as f64) / top as f64;
                let _ = write!(o, "{:.1},{:.1} ", i as f64 * step, y.max(0.5));
                o
            });
        let _ = write!(
            svg,
            "<polyline fill=none stroke=\"{}\" stroke-width=1.5 points=\"{}\"><title>{}</title></polyline>",
            s.colour,
            points.trim_end(),
            escape(s.name)
        );
    }
    svg.push_str("</svg>");
    svg
}

/// A seat as the seat map draws it.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum SeatLook {
    /// Another region's seat: its colour only (its state is that region's to say).
    Owner(usize),
    /// This region's, by state.
    Free(usize),
    Held,
    /// Moved here, its record not durable yet: in flight.
    Arriving,
    Sold,
}

impl SeatLook {
    fn fill(self) -> (&'static str, f32) {
        match self {
            SeatLook::Owner(r) => (region_colour(r), 0.45),
            SeatLook::Free(r) => (region_colour(r), 1.0),
            SeatLook::Held => (HELD, 1.0),
            SeatLook::Arriving => (IN_FLIGHT, 1.0),
            SeatLook::Sold => (SOLD, 1.0),
        }
    }
}

/// The seat map: one row per seat row, one cell per seat, neighbours that look alike drawn as
/// one rectangle (a block of seats moved together is one shape, and a large hall stays small).
pub fn seat_map(rows: &[Vec<SeatLook>]) -> String {
    const CELL: usize = 8;
    // A hall whose seats alternate in every row would be a shape per seat: megabytes per
    // update for every open page. Past this many shapes the map is not drawn.
    const MAX_SHAPES: usize = 20_000;
    let shapes: usize = rows.iter().map(|r| r.chunk_by(|a, b| a == b).count()).sum();
    if shapes > MAX_SHAPES {
        return format!(
            "<p class=muted>The seat map has {shapes} separate blocks of seats, too many to draw \
             here; the figures above still add up.</p>"
        );
    }
    let width = rows.iter().map(Vec::len).max().unwrap_or(0) * CELL;
    let height = rows.len() * CELL;
    let mut svg = format!(
        "<svg viewBox=\"0 0 {width} {height}\" width=\"{w}\" role=img aria-label=\"seat map\">",
        w = (2 * width).clamp(160, 900),
    );
    for (y, row) in rows.iter().enumerate() {
        let mut x = 0;
        for run in row.chunk_by(|a, b| a == b) {
            let (fill, opacity) = run[0].fill();
            let _ = write!(
                svg,
                "<rect x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\" fill=\"{fill}\" fill-opacity=\"{opacity}\" stroke=\"#fff\" stroke-width=\"1\"/>",
                x * CELL,
                y * CELL,
                run.len() * CELL,
                CELL
            );
            x += run.len();
        }
    }
    svg.push_str("</svg>");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn operators_text_is_never_markup() {
        assert_eq!(
            escape("<script>\"x\"&'"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;"
        );
    }

    #[test]
    fn a_bar_draws_each_part_to_the_pools_scale() {
        let svg = stacked_bar(
            &[
                Segment {
                    label: "sold",
                    value: 25,
                    colour: SOLD,
                },
                Segment {
                    label: "held",
                    value: 0,
                    colour: HELD,
                },
                Segment {
                    label: "sellable",
                    value: 50,
                    colour: SELLABLE,
                },
            ],
            200,
        );
        assert!(svg.contains("x=\"0.000\" y=0 width=\"12.500\""), "{svg}");
        assert!(svg.contains("x=\"12.500\" y=0 width=\"25.000\""), "{svg}");
        assert!(!svg.contains("held:"), "an empty part is not drawn: {svg}");
    }

    #[test]
    fn a_seat_map_draws_alike_neighbours_as_one_shape() {
        let row = vec![
            SeatLook::Sold,
            SeatLook::Sold,
            SeatLook::Owner(1),
            SeatLook::Owner(1),
            SeatLook::Owner(1),
        ];
        let svg = seat_map(&[row]);
        assert_eq!(svg.matches("<rect").count(), 2, "{svg}");
        assert!(svg.contains("x=\"16\" y=\"0\" width=\"24\""), "{svg}");
    }

    #[test]
    fn a_seat_map_of_too_many_shapes_is_not_drawn() {
        let row: Vec<SeatLook> = (0..30_000)
            .map(|i| {
                if i % 2 == 0 {
                    SeatLook::Sold
                } else {
                    SeatLook::Held
                }
            })
            .collect();
        let html = seat_map(&[row]);
        assert!(
            !html.contains("<rect") && html.contains("30000 separate blocks"),
            "{}",
            &html[..200.min(html.len())]
        );
    }
}

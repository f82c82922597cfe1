//! Line charts as PNG files, for the training examples' loss and accuracy curves: one panel
//! per chart, stacked vertically, with axes, min/max labels and a legend drawn in a tiny
//! built-in bitmap font (no font files, no plotting dependency).

use std::path::Path;

/// One curve: a label, an RGB colour and `(x, y)` points.
pub struct Series {
    pub label: String,
    pub color: [u8; 3],
    pub points: Vec<(f64, f64)>,
}

/// One panel: a title and its curves.
pub struct Chart {
    pub title: String,
    pub series: Vec<Series>,
}

const W: usize = 640;
const H: usize = 260;
const MARGIN_L: usize = 70;
const MARGIN_R: usize = 20;
const MARGIN_T: usize = 30;
const MARGIN_B: usize = 30;

struct Canvas {
    w: usize,
    h: usize,
    px: Vec<u8>,
}

impl Canvas {
    fn set(&mut self, x: i64, y: i64, c: [u8; 3]) {
        if x >= 0 && y >= 0 && (x as usize) < self.w && (y as usize) < self.h {
            let i = (y as usize * self.w + x as usize) * 3;
            self.px[i..i + 3].copy_from_slice(&c);
        }
    }

    fn line(&mut self, (x0, y0): (i64, i64), (x1, y1): (i64, i64), c: [u8; 3]) {
        let (dx, dy) = ((x1 - x0).abs(), -(y1 - y0).abs());
        let (sx, sy) = (if x0 < x1 { 1 } else { -1 }, if y0 < y1 { 1 } else { -1 });
        let (mut x, mut y, mut err) = (x0, y0, dx + dy);
        loop {
            self.set(x, y, c);
            self.set(x, y + 1, c);
            if x == x1 && y == y1 {
                break;
            }
            let e2 = 2 * err;
            if e2 >= dy {
                err += dy;
                x += sx;
            }
            if e2 <= dx {
                err += dx;
                y += sy;
            }
        }
    }

    /// Text in a 3×5 font scaled ×2; unknown characters draw as blanks.
    fn text(&mut self, x: i64, y: i64, s: &str, c: [u8; 3]) {
        for (k, ch) in s.chars().enumerate() {
            let g = glyph(ch.to_ascii_uppercase());
            for (row, bits) in g.iter().enumerate() {
                for col in 0..3 {
                    if bits & (4 >> col) != 0 {
                        for (ox, oy) in [(0, 0), (1, 0), (0, 1), (1, 1)] {
                            self.set(x + k as i64 * 8 + col * 2 + ox, y + row as i64 * 2 + oy, c);
                        }
                    }
                }
            }
        }
    }
}

/// 3×5 glyphs, one row per entry, bit 2 = left column.
fn glyph(c: char) -> [u8; 5] {
    match c {
        '0' => [7, 5, 5, 5, 7],
        '1' => [2, 6, 2, 2, 7],
        '2' => [7, 1, 7, 4, 7],
        '3' => [7, 1, 7, 1, 7],
        '4' => [5, 5, 7, 1, 1],
        '5' => [7, 4, 7, 1, 7],
        '6' => [7, 4, 7, 5, 7],
        '7' => [7, 1, 1, 1, 1],
        '8' => [7, 5, 7, 5, 7],
        '9' => [7, 5, 7, 1, 7],
        '.' => [0, 0, 0, 0, 2],
        '-' => [0, 0, 7, 0, 0],
        '%' => [5, 1, 2, 4, 5],
        '(' => [1, 2, 2, 2, 1],
        ')' => [4, 2, 2, 2, 4],
        ':' => [0, 2, 0, 2, 0],
        'A' => [2, 5, 7, 5, 5],
        'B' => [6, 5, 6, 5, 6],
        'C' => [7, 4, 4, 4, 7],
        'D' => [6, 5, 5, 5, 6],
        'E' => [7, 4, 6, 4, 7],
        'F' => [7, 4, 6, 4, 4],
        'G' => [7, 4, 5, 5, 7],
        'H' => [5, 5, 7, 5, 5],
        'I' => [7, 2, 2, 2, 7],
        'K' => [5, 5, 6, 5, 5],
        'L' => [4, 4, 4, 4, 7],
        'M' => [5, 7, 7, 5, 5],
        'N' => [6, 5, 5, 5, 5],
        'O' => [7, 5, 5, 5, 7],
        'P' => [7, 5, 7, 4, 4],
        'R' => [6, 5, 6, 5, 5],
        'S' => [7, 4, 7, 1, 7],
        'T' => [7, 2, 2, 2, 2],
        'U' => [5, 5, 5, 5, 7],
        'V' => [5, 5, 5, 5, 2],
        'W' => [5, 5, 7, 7, 5],
        'X' => [5, 5, 2, 5, 5],
        'Y' => [5, 5, 2, 2, 2],
        _ => [0; 5],
    }
}

fn fmt_num(v: f64) -> String {
    if v != 0.0 && (v.abs() >= 1e4 || v.abs() < 1e-2) {
        format!("{v:.1e}")
    } else {
        format!("{v:.3}")
    }
}

/// Render `charts` one above the other into a PNG at `path` (written atomically).
pub fn save_png(path: impl AsRef<Path>, charts: &[Chart]) -> Result<(), String> {
    let h = H * charts.len().max(1);
    let mut cv = Canvas {
        w: W,
        h,
        px: vec![255; W * h * 3],
    };
    let axis = [60, 60, 60];
    for (ci, chart) in charts.iter().enumerate() {
        let top = (ci * H) as i64;
        let (x0, x1) = (MARGIN_L as i64, (W - MARGIN_R) as i64);
        let (y0, y1) = (top + MARGIN_T as i64, top + (H - MARGIN_B) as i64);
        cv.text(x0, top + 8, &chart.title, [0, 0, 0]);
        let pts = chart
            .series
            .iter()
            .flat_map(|s| s.points.iter())
            .filter(|p| p.0.is_finite() && p.1.is_finite());
        let (mut xmin, mut xmax, mut ymin, mut ymax) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
        for &(x, y) in pts {
            xmin = xmin.min(x);
            xmax = xmax.max(x);
            ymin = ymin.min(y);
            ymax = ymax.max(y);
        }
        if xmin > xmax {
            continue;
        }
        if xmax - xmin < 1e-12 {
            xmax = xmin + 1.0;
        }
        if ymax - ymin < 1e-12 {
            ymax = ymin + 1.0;
        }
        cv.line((x0, y0), (x0, y1), axis);
        cv.line((x0, y1), (x1, y1), axis);
        cv.text(4, y0, &fmt_num(ymax), axis);
        cv.text(4, y1 - 10, &fmt_num(ymin), axis);
        cv.text(x0, y1 + 8, &fmt_num(xmin), axis);
        let xl = fmt_num(xmax);
        cv.text(x1 - 8 * xl.len() as i64, y1 + 8, &xl, axis);
        let map = |(x, y): (f64, f64)| {
            let px = x0 as f64 + (x - xmin) / (xmax - xmin) * (x1 - x0) as f64;
            let py = y1 as f64 - (y - ymin) / (ymax - ymin) * (y1 - y0) as f64;
            (px.round() as i64, py.round() as i64)
        };
        for (si, s) in chart.series.iter().enumerate() {
            let mut prev = None;
            for &p in s
                .points
                .iter()
                .filter(|p| p.0.is_finite() && p.1.is_finite())
            {
                let q = map(p);
                if let Some(pp) = prev {
                    cv.line(pp, q, s.color);
                } else {
                    cv.set(q.0, q.1, s.color);
                }
                prev = Some(q);
            }
            let lx = x1 - 170;
            let ly = top + 8 + si as i64 * 12;
            cv.line((lx, ly + 4), (lx + 16, ly + 4), s.color);
            cv.text(lx + 22, ly, &s.label, s.color);
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, W as u32, h as u32);
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut wr = enc.write_header().map_err(|e| e.to_string())?;
        wr.write_image_data(&cv.px).map_err(|e| e.to_string())?;
    }
    let path = path.as_ref();
    let tmp = path.with_extension("png.tmp");
    std::fs::write(&tmp, &bytes)
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write '{}': {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_a_decodable_png() {
        let p = std::env::temp_dir().join(format!("plot-test-{}.png", std::process::id()));
        let charts = [Chart {
            title: "loss".into(),
            series: vec![Series {
                label: "train".into(),
                color: [200, 0, 0],
                points: (0..50)
                    .map(|i| (i as f64, 1.0 / (1.0 + i as f64)))
                    .collect(),
            }],
        }];
        save_png(&p, &charts).unwrap();
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&p).unwrap()));
        let reader = dec.read_info().unwrap();
        assert_eq!(reader.info().width as usize, W);
        assert_eq!(reader.info().height as usize, H);
        std::fs::remove_file(p).ok();
    }
}

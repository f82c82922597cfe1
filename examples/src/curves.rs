//! Named loss curves kept in a checkpoint's metadata, so a resumed run plots its whole
//! history: `name=x,y;x,y|name=…`.

use std::collections::BTreeMap;

/// Curve name → (step, value) points.
pub type Curves = BTreeMap<String, Vec<(f64, f64)>>;

pub fn format_curves(c: &Curves) -> String {
    c.iter()
        .map(|(k, v)| {
            let pts: Vec<String> = v.iter().map(|(x, y)| format!("{x},{y}")).collect();
            format!("{k}={}", pts.join(";"))
        })
        .collect::<Vec<_>>()
        .join("|")
}

/// The curves of [`format_curves`]'s text, or `None` when it is malformed.
pub fn parse_curves(s: &str) -> Option<Curves> {
    let mut out = Curves::new();
    for part in s.split('|').filter(|p| !p.is_empty()) {
        let (k, pts) = part.split_once('=')?;
        let mut v = Vec::new();
        for pt in pts.split(';').filter(|t| !t.is_empty()) {
            let (x, y) = pt.split_once(',')?;
            v.push((x.parse().ok()?, y.parse().ok()?));
        }
        out.insert(k.to_string(), v);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn curves_round_trip_and_reject_garbage() {
        let mut c = Curves::new();
        c.insert("total".into(), vec![(1.0, 2.5), (2.0, 1.25)]);
        c.insert("mel".into(), vec![]);
        assert_eq!(parse_curves(&format_curves(&c)), Some(c));
        assert_eq!(parse_curves("total=1,x"), None);
        assert_eq!(parse_curves("no-equals-sign"), None);
    }
}

#!/usr/bin/env bash
# Fetch scikit-learn's handwritten digits (1,797 real 8×8 images, UCI optdigits test set) and
# print the path of the extracted CSV. The data ships inside the scikit-learn wheel, so this
# downloads that wheel with pip (no install, no dependencies), extracts
# sklearn/datasets/data/digits.csv.gz and decompresses it. Cached under
# ${XDG_CACHE_HOME:-~/.cache}/tensor-engine/data; a second run prints the cached path.
#
# Each CSV row: 64 pixel intensities (0..16, row-major 8×8), then the label (0..9).
set -euo pipefail

CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tensor-engine/data"
OUT="$CACHE/digits.csv"
if [[ -s "$OUT" ]]; then
    echo "$OUT"
    exit 0
fi
command -v python3 >/dev/null || { echo "fetch_digits: python3 is needed" >&2; exit 1; }
mkdir -p "$CACHE"
WHEELS=$(mktemp -d)
trap 'rm -rf "$WHEELS"' EXIT
# Any recent wheel for this platform has the file; pin a major version for stability.
python3 -m pip download --quiet --disable-pip-version-check --no-deps \
    --only-binary=:all: --dest "$WHEELS" "scikit-learn>=1.3,<2" >&2 ||
    { echo "fetch_digits: pip download of scikit-learn failed (network?)" >&2; exit 1; }
python3 - "$WHEELS" "$OUT" <<'PY'
import glob, gzip, os, sys, zipfile
wheels, out = sys.argv[1], sys.argv[2]
paths = glob.glob(os.path.join(wheels, "scikit_learn-*.whl"))
if not paths:
    sys.exit("fetch_digits: no scikit-learn wheel was downloaded")
with zipfile.ZipFile(paths[0]) as z:
    data = gzip.decompress(z.read("sklearn/datasets/data/digits.csv.gz"))
rows = data.decode().strip().splitlines()
if len(rows) != 1797 or any(len(r.split(",")) != 65 for r in rows):
    sys.exit(f"fetch_digits: unexpected content ({len(rows)} rows)")
tmp = out + ".tmp"
with open(tmp, "wb") as f:
    f.write(data)
os.replace(tmp, out)
PY
echo "$OUT"

#!/usr/bin/env bash
# Make the text corpus of the train_lm example available and print its folder: the fortune
# cookie files of the Debian `fortunes` package (about 2.5 MB of real English text: quotes,
# jokes, poems), installed with apt-get when missing.
set -euo pipefail

DIR=/usr/share/games/fortunes
if ! ls "$DIR"/computers >/dev/null 2>&1; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || { echo "fetch_fortunes: need root or sudo to apt-get install fortunes" >&2; exit 1; }
        SUDO=sudo
    fi
    echo "fetch_fortunes: installing the Debian package 'fortunes'" >&2
    $SUDO apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq fortunes fortunes-min >&2 ||
        { echo "fetch_fortunes: apt-get install fortunes failed" >&2; exit 1; }
fi
echo "$DIR"

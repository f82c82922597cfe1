#!/usr/bin/env bash
# Build the speech corpus of the audio examples offline and print its folder: the English
# sentences of scripts/speech_sentences.txt spoken by espeak-ng in several voices, as 16 kHz
# mono 16-bit WAV. Every 10th sentence (10, 20, ...) is held out, in all its voices:
#
#   <root>/train/*.wav     <root>/train/metadata.tsv     file<TAB>voice<TAB>text per clip
#   <root>/heldout/*.wav   <root>/heldout/metadata.tsv
#
# <root> is ${XDG_CACHE_HOME:-~/.cache}/tensor-engine/data/speech-v1, or speech-v1-small with
# --small (8 training and 2 held-out sentences: 40 + 10 clips, the same files as in the full
# corpus). Built once into a temporary folder and renamed into place at the end, so an
# interrupted run leaves nothing half built; a second run only prints the root. espeak-ng and
# sox (which converts espeak-ng's 22.05 kHz output) are installed with apt-get when missing.
set -euo pipefail

usage() { echo "usage: fetch_speech.sh [--small]" >&2; }
SMALL=0
for arg in "$@"; do
    case "$arg" in
        --small) SMALL=1 ;;
        -h | --help) usage; exit 0 ;;
        *) echo "fetch_speech: unknown argument '$arg'" >&2; usage; exit 2 ;;
    esac
done

NAME=speech-v1
[[ $SMALL -eq 1 ]] && NAME=speech-v1-small
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/tensor-engine/data"
ROOT="$CACHE/$NAME"
if [[ -s "$ROOT/train/metadata.tsv" && -s "$ROOT/heldout/metadata.tsv" ]]; then
    echo "$ROOT"
    exit 0
fi

SENTENCES="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/speech_sentences.txt"
[[ -s "$SENTENCES" ]] || { echo "fetch_speech: missing $SENTENCES" >&2; exit 1; }

# Install the Debian packages that provide the missing commands: root runs apt-get itself,
# others need sudo; if an install fails on a stale package list, update it and retry once.
need=()
command -v espeak-ng >/dev/null || need+=(espeak-ng)
command -v sox >/dev/null || need+=(sox)
if [[ ${#need[@]} -gt 0 ]]; then
    SUDO=""
    if [[ $(id -u) -ne 0 ]]; then
        command -v sudo >/dev/null || {
            echo "fetch_speech: needs ${need[*]}; install them (e.g. 'apt-get install ${need[*]}') or run as root" >&2
            exit 1
        }
        SUDO=sudo
    fi
    echo "fetch_speech: installing the Debian packages: ${need[*]}" >&2
    if ! DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2; then
        $SUDO apt-get update -qq >&2 || true
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >&2 || {
            echo "fetch_speech: apt-get install ${need[*]} failed; install them by hand" >&2
            exit 1
        }
    fi
fi

# voice  words-per-minute  pitch (0-99): two accents, male and female variants, and a spread of
# speeds and pitches so a model cannot key on one speaker.
VOICES=(
    "en-us 165 50"
    "en-gb 150 45"
    "en-us+f3 175 62"
    "en-gb-x-rp+m3 140 38"
    "en-gb-scotland+f2 158 55"
)
for v in "${VOICES[@]}"; do
    read -r voice _ _ <<<"$v"
    espeak-ng -v "$voice" -q "test" 2>/dev/null || {
        echo "fetch_speech: espeak-ng has no voice '$voice' (see 'espeak-ng --voices=en')" >&2
        exit 1
    }
done

mkdir -p "$CACHE"
TMP=$(mktemp -d "$CACHE/.$NAME.tmp.XXXXXX")
trap 'rm -rf "$TMP"' EXIT
mkdir -p "$TMP/train" "$TMP/heldout" "$TMP/raw"
: >"$TMP/train/metadata.tsv"
: >"$TMP/heldout/metadata.tsv"

start=$SECONDS
n=0
train_sentences=0
while IFS= read -r text || [[ -n "$text" ]]; do
    n=$((n + 1))
    [[ -z "${text// /}" ]] && { echo "fetch_speech: blank line $n in $SENTENCES" >&2; exit 1; }
    if ((n % 10 == 0)); then
        split=heldout
        ((SMALL == 1 && n > 20)) && continue
    else
        split=train
        train_sentences=$((train_sentences + 1))
        ((SMALL == 1 && train_sentences > 8)) && continue
    fi
    for v in "${VOICES[@]}"; do
        read -r voice speed pitch <<<"$v"
        file=$(printf 's%04d_%s.wav' "$n" "${voice//+/_}")
        # Text on stdin, so no sentence is ever taken for an option.
        printf '%s\n' "$text" |
            espeak-ng -v "$voice" -s "$speed" -p "$pitch" -w "$TMP/raw/$file"
        # Mono 16 kHz 16-bit, peak-normalised to -1 dBFS so voices have comparable levels;
        # no dither (-D), which is random and would make every build differ.
        sox -q -D "$TMP/raw/$file" -r 16000 -c 1 -b 16 "$TMP/$split/$file" norm -1
        rm "$TMP/raw/$file"
        printf '%s\t%s\t%s\n' "$file" "$voice" "$text" >>"$TMP/$split/metadata.tsv"
    done
    if ((n % 50 == 0)); then echo "fetch_speech: $n sentences done ($((SECONDS - start)) s)" >&2; fi
done <"$SENTENCES"
rmdir "$TMP/raw"

for split in train heldout; do
    clips=$(wc -l <"$TMP/$split/metadata.tsv")
    wavs=$(find "$TMP/$split" -name '*.wav' | wc -l)
    [[ $clips -gt 0 && $clips -eq $wavs ]] || {
        echo "fetch_speech: $split has $wavs WAV files but $clips metadata lines" >&2
        exit 1
    }
    secs=$(soxi -T -D "$TMP/$split"/*.wav)
    printf 'fetch_speech: %s: %d clips, %.1f s of audio\n' "$split" "$clips" "$secs" >&2
done
# A folder left by hand (its metadata gone) is replaced, never merged into.
[[ -e "$ROOT" ]] && rm -rf "$ROOT"
mv -T "$TMP" "$ROOT"
trap - EXIT
echo "fetch_speech: built $ROOT in $((SECONDS - start)) s" >&2
echo "$ROOT"

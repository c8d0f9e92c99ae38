#!/bin/sh
# Chromium for the studio's browser tests (tests/studio/test_studio_browser.py): Debian's `chromium` package,
# installed with apt-get when missing (as root, or with password-less sudo). Where that is impossible it warns loudly
# and exits 0: `make test` then FAILS those tests with what to install (they never skip silently);
# TUNEFORGE_SKIP_BROWSER=1 skips them, on request only. Playwright drives it (no `playwright install` download).
set -u
CHROMIUM="${TUNEFORGE_CHROMIUM:-/usr/bin/chromium}"
[ -x "$CHROMIUM" ] && exit 0
warn() { echo "WARNING: $1; tests/studio/test_studio_browser.py will FAIL. Install Debian's chromium" \
  "(or set TUNEFORGE_CHROMIUM=PATH), or set TUNEFORGE_SKIP_BROWSER=1 to skip them." >&2; }
if ! command -v apt-get >/dev/null 2>&1; then warn "no Chromium at $CHROMIUM and no apt-get"; exit 0; fi
if [ "$(id -u)" = 0 ]; then AS=""; elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then AS="sudo -n"
else warn "no Chromium at $CHROMIUM and apt-get needs root"; exit 0; fi
install() { $AS env DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium >/dev/null; }
echo "installing chromium (apt-get) for the studio's browser tests" >&2
install || { $AS apt-get update -q >/dev/null && install; } || warn "apt-get could not install chromium"
exit 0

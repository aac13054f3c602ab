#!/bin/sh
# Headless Chromium for the HTML-report browser test (Debian's package; playwright drives it).
# Never fatal: setup succeeds without a browser, says so, and that one test then skips, or
# fails under CI (the CI environment variable set) with the same advice.
found() {
    command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1
}
found && exit 0
if [ "$(id -u)" = "0" ]; then
    as_root=""
elif command -v sudo >/dev/null 2>&1 && sudo -n true >/dev/null 2>&1; then
    as_root="sudo -n"
else
    as_root="none"
fi
if [ "$as_root" != "none" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing chromium with apt-get (for the HTML-report browser test)"
    $as_root apt-get update -qq >/dev/null 2>&1
    $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1
fi
if found; then
    echo "chromium: $(command -v chromium || command -v chromium-browser)"
else
    echo "note: chromium is not installed (needs apt-get as root or passwordless sudo);" \
        "the browser test will skip, or fail when CI is set." \
        "Install Debian's chromium package, then rerun: sh scripts/ensure-chromium.sh"
fi
exit 0

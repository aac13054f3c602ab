#!/bin/sh
# Headless Chromium for the HTML-report browser test (Debian packages; playwright drives it).
# Never fatal: without a browser that one test is skipped with the reason.
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium) \
        >/dev/null 2>&1 || echo "note: could not install chromium; the browser test will skip"
else
    echo "note: chromium not found (install Debian's chromium); the browser test will skip"
fi
exit 0

#!/usr/bin/env bash
# Install Debian's chromium for the browser test (tests/test_browser.py). Idempotent.
# Never fails the test run: when it cannot install, it prints why and the test skips itself.
set -u
chromium=/usr/bin/chromium
if [ -x "$chromium" ]; then
  exit 0
fi
if [ "$(id -u)" != 0 ]; then
  echo "install_browser: $chromium is missing and this is not root; the browser test will be skipped" >&2
  exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
  echo "install_browser: $chromium is missing and apt-get is not available; the browser test will be skipped" >&2
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the package lists only when apt does not know the package yet.
if ! apt-cache show chromium >/dev/null 2>&1 || [ -z "$(apt-cache policy chromium | awk '/Candidate:/ {print $2}' | grep -v none)" ]; then
  apt-get update -q >/dev/null 2>&1 || echo "install_browser: apt-get update failed; trying the install anyway" >&2
fi
if apt-get install -y -q -o DPkg::Lock::Timeout=120 --no-install-recommends chromium >/tmp/pyx-install-browser.log 2>&1 && [ -x "$chromium" ]; then
  echo "install_browser: installed $("$chromium" --version 2>/dev/null || echo chromium)" >&2
else
  echo "install_browser: apt-get install chromium failed (log: /tmp/pyx-install-browser.log); the browser test will be skipped" >&2
fi
exit 0

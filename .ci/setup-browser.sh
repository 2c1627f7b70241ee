#!/usr/bin/env bash
# Debian's Chromium for the browser tests (tests/ui): Playwright drives it headless through
# executable_path, because Playwright's own browser download does not work where CI runs.
# A CJK font too: the InternVL system prompts are Chinese, and the screenshots should show them.
set -euo pipefail
missing=()
for pkg in chromium fonts-dejavu-core fonts-wqy-zenhei; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
if [ -x /usr/bin/chromium ] && [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
/usr/bin/chromium --version

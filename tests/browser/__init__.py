"""End-to-end tests of `rlm run` in headless Chromium (Debian's package, driven by Playwright)."""

"""Regenerate docs/app.png: serve the app, load an example in headless Chromium, ask, wait for the answer, shoot.

    python app/screenshot.py --model runs/quickstart/model --out docs/app.png

Needs Debian's `chromium`. Chromium is driven over the DevTools protocol on a pipe (--remote-debugging-pipe),
so no browser-automation package is needed; tests/test_app.py uses the same `Browser`.
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


def find_chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Browser:
    """One headless Chromium page, driven over the DevTools protocol (JSON messages on fds 3/4, NUL-terminated)."""

    def __init__(self, width: int = 1400, height: int = 980, chromium: str | None = None):
        chromium = chromium or find_chromium()
        if not chromium:
            raise RuntimeError("chromium not found (apt-get install -y chromium)")
        self._profile = tempfile.TemporaryDirectory()
        to_chrome, self._write = os.pipe()
        self._read, from_chrome = os.pipe()

        def wire():  # in the child: Chromium reads commands on fd 3 and writes replies on fd 4
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 10) for fd in (to_chrome, from_chrome)]  # either may be 3 or 4
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        self.proc = subprocess.Popen(
            [chromium, *CHROMIUM_FLAGS, f"--user-data-dir={self._profile.name}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=wire, close_fds=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(to_chrome)
        os.close(from_chrome)
        self._id, self._buffer, self.session = 0, b"", None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        self.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1, mobile=False)

    def call(self, method: str, timeout: float = 60, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self.session and not method.startswith("Target."):
            message["sessionId"] = self.session
        os.write(self._write, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" not in self._buffer:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self._read], [], [], left)[0]:
                    raise TimeoutError(f"chromium did not answer {method} within {timeout} s")
                chunk = os.read(self._read, 1 << 20)
                if not chunk:
                    raise RuntimeError(f"chromium exited (code {self.proc.poll()}) during {method}")
                self._buffer += chunk
            raw, self._buffer = self._buffer.split(b"\0", 1)
            reply = json.loads(raw)
            if reply.get("id") == self._id:  # events (no id) and other replies are skipped
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})

    def evaluate(self, expression: str):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r}: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60, interval: float = 0.25):
        """Poll a JavaScript expression until it is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.evaluate(expression)
            if value:
                return value
            time.sleep(interval)
        raise TimeoutError(f"{expression!r} still false after {timeout} s")

    def open(self, url: str) -> None:
        self.call("Page.navigate", url=url)

    def screenshot(self, path: str | Path) -> Path:
        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(path).write_bytes(base64.b64decode(data))
        return Path(path)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=10)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._write)
        os.close(self._read)
        self._profile.cleanup()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


# JavaScript run in the page: the Gradio components by their labels and element ids.
EXAMPLES_SHOWN = "document.querySelectorAll('button.gallery-item').length"
ANSWER_VALUE = "document.querySelector('#answer textarea')?.value || ''"


def click_example(index: int) -> str:
    return f"document.querySelectorAll('button.gallery-item')[{index}].click(), true"


CLICK_SEND = "[...document.querySelectorAll('button')].find(b => b.textContent.trim() === 'Send').click(), true"
QUESTION_FILLED = ("[...document.querySelectorAll('textarea')].some(t => t.placeholder === 'Ask about the variant' "
                   "&& t.value.length > 0)")


def ask_example(browser: Browser, url: str, index: int, timeout: float = 120) -> str:
    """Open the app, load example `index`, press Send and wait for the answer field; return its value."""
    browser.open(url)
    browser.wait_for(EXAMPLES_SHOWN, timeout=timeout)
    browser.evaluate(click_example(index))
    browser.wait_for(QUESTION_FILLED, timeout=timeout)
    browser.evaluate(CLICK_SEND)
    return browser.wait_for(ANSWER_VALUE, timeout=timeout)


def optimise(path: Path, size: tuple[int, int], colours: int = 128) -> None:
    """Resize and quantise the PNG (keeps docs/app.png small)."""
    from PIL import Image

    image = Image.open(path).convert("RGB").resize(size, Image.Resampling.LANCZOS)
    image.quantize(colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="runs/quickstart/model")
    parser.add_argument("--out", type=Path, default=Path("docs/app.png"))
    parser.add_argument("--size", default="1000x750", help="PNG size (the page is rendered at 1.4x and scaled)")
    parser.add_argument("--max-new-tokens", type=int, default=1024)
    args = parser.parse_args(argv)
    from dnallm.cli import _load_app_module

    ui = _load_app_module()
    width, height = (int(v) for v in args.size.split("x"))
    examples, _ = ui._examples(ui.N_EXAMPLES)
    shortest = min(range(len(examples)), key=lambda i: len(examples[i][0]))  # the least cluttered chat
    demo = ui.build_app(args.model, max_new_tokens=args.max_new_tokens)
    _, url, _ = ui.launch(demo, port=None, prevent_thread_lock=True, quiet=True)
    try:
        with Browser(round(width * 1.4), round(height * 1.4)) as browser:
            ask_example(browser, url, shortest)
            time.sleep(1.0)  # let the chart draw
            browser.screenshot(args.out)
    finally:
        demo.close()
    optimise(args.out, (width, height))
    print(f"wrote {args.out} ({args.out.stat().st_size / 1024:.0f} KB)")


if __name__ == "__main__":
    main()

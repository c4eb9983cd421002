"""Review masks in the browser: a local page built on NiiVue.

python -m lgg_jax.review DIR [--port=8008] [--host=127.0.0.1]

DIR is a `predict` output or an `evaluate` output (each holds `review.json`,
the page's index, beside the patients' NIfTI volumes), or a run folder: then
its newest evaluation with an index, and its training curves (metrics.jsonl).
The page lists the patients (flagged and worst first), and opens one in
NiiVue only when asked, fetching only that patient's volumes.

The server binds 127.0.0.1 unless told otherwise, answers GET and HEAD only,
and serves nothing but the page's own assets and the files under DIR (no
`..`, absolute paths, encoded separators or symlinks out of DIR). Ctrl-C
stops it. The page loads nothing from the network: NiiVue is vendored
(review_page/niivue/: its version, licence and bundled libraries).
"""

from __future__ import annotations

import http.server
import ipaddress
import json
import math
import mimetypes
import os
import pathlib
import socket
import urllib.parse

from absl import flags

from lgg_jax import cli

INDEX_FILE = "review.json"
CURVES_FILE = "metrics.jsonl"
FOUND, FALSE_POSITIVE, MISSED = 1, 2, 3  # the labels of `<case>_errors.nii.gz`
ASSETS = pathlib.Path(__file__).with_name("review_page")


def _finite(value):
  """NaN and infinities as null: JSON has neither, and browsers refuse them."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: _finite(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_finite(v) for v in value]
  return value


def write_index(out: pathlib.Path, kind: str, rows: list[dict], **about) -> pathlib.Path:
  """The page's index: one row per patient, with its files relative to `out`
  (an undefined HD95 is null). Written whole or not at all (a reader never
  sees half a file)."""
  path = pathlib.Path(out) / INDEX_FILE
  cli.write_whole(path, json.dumps(_finite({"kind": kind, "cases": rows, **about}), indent=1, default=str,
                                   allow_nan=False))
  return path


def find_index(folder: pathlib.Path) -> dict:
  """What the page shows of `folder`: {"index": path of review.json relative
  to folder or None, "curves": "metrics.jsonl" or None, "title": ...}."""
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    raise FileNotFoundError(f"{folder} does not exist or is not a folder")
  curves = CURVES_FILE if (folder / CURVES_FILE).is_file() else None
  if (folder / INDEX_FILE).is_file():
    return {"index": INDEX_FILE, "curves": curves, "title": folder.resolve().name}
  evaluations = sorted(folder.glob(f"evaluation/*/{INDEX_FILE}"), key=lambda p: p.stat().st_mtime)
  if evaluations:
    return {"index": evaluations[-1].relative_to(folder).as_posix(), "curves": curves,
            "title": folder.resolve().name}
  if curves:  # a run not yet evaluated: its curves, and how to get the rest
    return {"index": None, "curves": curves, "title": folder.resolve().name}
  raise FileNotFoundError(f"{folder} holds no {INDEX_FILE} (write one with lgg_jax.predict or lgg_jax.evaluate) "
                          f"and is not a run folder")


_OTHER_SEPARATORS = {os.sep, os.altsep} - {None, "/"}


def contained(base: pathlib.Path, relative: str) -> pathlib.Path | None:
  """The file `relative` names under `base`, or None if it is not a file
  there: `..`, absolute paths and symlinks that lead out of `base` give None.
  A backslash is refused only where it separates folders (Windows): on
  POSIX it is a plain character, and a patient folder may carry one."""
  if "\x00" in relative or relative.startswith("/") or any(s in relative for s in _OTHER_SEPARATORS):
    return None
  try:
    base = base.resolve()
    candidate = (base / relative).resolve()
    if not candidate.is_relative_to(base) or not candidate.is_file():
      return None
  except (OSError, RuntimeError):  # a symlink loop, a name too long
    return None
  return candidate


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def _loopback(host: str) -> bool:
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:
    return host == "localhost"


def host_name(header: str) -> str:
  """A Host header without its port ("[::1]:8008" -> "[::1]")."""
  if header.startswith("["):
    return header[:header.find("]") + 1]
  return header.rsplit(":", 1)[0]


def make_handler(root: pathlib.Path, host: str = "127.0.0.1"):
  """A request handler serving the page's assets and the files under `root`.
  Bound to a loopback address, it answers only requests naming a loopback
  host: a web page elsewhere cannot read the volumes through a name that
  resolves to 127.0.0.1 (DNS rebinding)."""
  root = pathlib.Path(root).resolve()
  find_index(root)  # nothing to show is an error now, not at the first request
  check_host = _loopback(host)
  own_name = f"[{host}]" if ":" in host else host
  allowed = {*LOOPBACK_NAMES, own_name}  # 127.0.0.2 is loopback too, and the URL printed names it

  class Handler(http.server.BaseHTTPRequestHandler):
    server_version = "lgg_jax-review"

    def do_GET(self):  # noqa: N802 (the standard library's name)
      self._answer(body=True)

    def do_HEAD(self):  # noqa: N802
      self._answer(body=False)

    def log_message(self, format, *args):  # noqa: A002  # the terminal shows the URL and errors only
      pass

    def _answer(self, body: bool):
      if check_host and host_name(self.headers.get("Host") or "") not in allowed:
        self._send(403, "text/plain", b"this server answers requests to localhost only\n", body)
        return
      # One decoding, then the path is checked as a file name: an encoded
      # separator or dot-dot becomes a plain one and meets the same check.
      path = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path)
      if path in ("/", "/index.html"):
        self._send_file(ASSETS / "index.html", body)
      elif path == "/api/about":  # looked up on each load: an evaluation written since shows
        try:
          self._send(200, "application/json", json.dumps(find_index(root)).encode(), body)
        except FileNotFoundError as e:  # its index removed since the server started
          self._send(404, "text/plain", f"{e}\n".encode(), body)
      elif path.startswith("/assets/"):
        self._send_file(contained(ASSETS, path[len("/assets/"):]), body)
      elif path.startswith("/files/"):
        self._send_file(contained(root, path[len("/files/"):]), body)
      else:
        self._send(404, "text/plain", b"not found\n", body)

    def _send_file(self, file: pathlib.Path | None, body: bool):
      if file is None:
        self._send(404, "text/plain", b"not found\n", body)
        return
      kind = "text/javascript" if file.suffix == ".js" else (mimetypes.guess_type(file.name)[0]
                                                              or "application/octet-stream")
      self._send(200, kind, file.read_bytes(), body)

    def _send(self, status: int, kind: str, data: bytes, body: bool):
      self.send_response(status)
      self.send_header("Content-Type", kind)
      self.send_header("Content-Length", str(len(data)))
      self.send_header("Cache-Control", "no-store")
      self.end_headers()
      if body:
        self.wfile.write(data)

  return Handler


def make_server(root, host: str = "127.0.0.1", port: int = 8008) -> http.server.ThreadingHTTPServer:
  """The review server for `root` (port 0: a free one); not yet serving. An
  IPv6 address (::1) gets an IPv6 socket."""
  if not 0 <= port <= 65535:
    raise ValueError(f"--port={port}: want 0 (any free port) to 65535")
  server_class = http.server.ThreadingHTTPServer
  if ":" in host:
    server_class = type("IPv6Server", (server_class,), {"address_family": socket.AF_INET6})
  handler = make_handler(root, host)
  try:
    return server_class((host, port), handler)
  except OSError as e:  # a port in use, an address this machine does not have
    raise ValueError(f"--host={host} --port={port}: cannot serve there ({e.strerror or e})") from e


_PORT = flags.DEFINE_integer("port", 8008, "Port of the review page (0: any free port).")
_HOST = flags.DEFINE_string("host", "127.0.0.1", "Address to bind; the default serves this machine only.")


def main(argv):
  if len(argv) != 2:
    raise ValueError("give one folder: python -m lgg_jax.review DIR (a predict or evaluate output, or a run folder)")
  folder = pathlib.Path(argv[1]).expanduser()
  find_index(folder)  # a folder with nothing to show is an error before binding
  server = make_server(folder, _HOST.value, _PORT.value)
  host, port = server.server_address[:2]
  host = f"[{host}]" if ":" in host else host
  print(f"review of {folder.resolve()}: http://{host}:{port}/ (Ctrl-C stops it)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    print("stopped")
  finally:
    server.server_close()


if __name__ == "__main__":
  cli.run(main)

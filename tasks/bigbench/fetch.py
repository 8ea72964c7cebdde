"""Fetch BIG-bench's JSON tasks once: the bigbench==1.0.0 sdist from PyPI, or a local archive.

The only download in this package, run explicitly with
`python -m tasks.bigbench prepare [--cache_dir DIR] [--archive PATH] [--index_url URL]`.

pip cannot fetch this sdist any more: recent pip refuses it, `--no-deps` included,
because its metadata declares a direct-URL dependency (`bleurt @ file://...`). We do not
need its metadata, only the file: `find_sdist` reads the package index's simple API
(PEP 691 JSON, or PEP 503 HTML such as a `file://` mirror) for the file's URL and sha256,
`download_sdist` streams it and checks the hash. `--archive` takes an sdist (or wheel)
downloaded by hand; a copy whose sha256 differs from bigbench 1.0.0's is used with a warning.

Layout of the cache:

  DIR/tasks/<task>/task.json            a task
  DIR/tasks/<task>/<subtask>/task.json  a subtask (its parent's JSON then holds no examples)
  DIR/records/, DIR/index.json          the parsed records (`tasks.bigbench.store`)

Extraction and parsing go to a temporary sibling directory that is renamed into place,
so an interrupted run never leaves a half-written cache.
"""

from __future__ import annotations

import hashlib
import html.parser
import json
import logging
import os
import re
import shutil
import ssl
import sys
import tarfile
import tempfile
import time
import urllib.parse
import urllib.request
import zipfile
from typing import Callable, Optional

from tasks.bigbench import store

log = logging.getLogger(__name__)

VERSION = "1.0.0"
SDIST = f"bigbench-{VERSION}.tar.gz"
SDIST_SHA256 = "1bb398a5512c6d798cdebe0dfa0ac03f67f6033fa6b39c6ef71df978c7cbc5c2"
DEFAULT_INDEX_URL = "https://pypi.org/simple"
INDEX = store.INDEX
# .../bigbench/benchmark_tasks/<task>/task.json or .../<task>/<subtask>/task.json
_MEMBER = re.compile(r"(?:^|/)bigbench/benchmark_tasks/((?:[^/]+/){1,2})task\.json$")


def default_cache_dir() -> str:
  """$MHR_JAX_BIGBENCH_DIR, default ~/.cache/mhr_jax/bigbench."""
  return os.path.expanduser(os.environ.get("MHR_JAX_BIGBENCH_DIR",
                                           os.path.join("~", ".cache", "mhr_jax", "bigbench")))


def default_index_url() -> str:
  """$PIP_INDEX_URL if set (a mirror pip is configured with), else PyPI's simple API."""
  return os.environ.get("PIP_INDEX_URL") or DEFAULT_INDEX_URL


def _open(url: str, accept: Optional[str] = None, timeout: float = 60.0):
  headers = {"User-Agent": "mhr_jax-bigbench-prepare"}
  if accept:
    headers["Accept"] = accept
  cafile = os.environ.get("SSL_CERT_FILE") or os.environ.get("PIP_CERT")
  context = ssl.create_default_context(cafile=cafile) if url.startswith("https:") else None
  return urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=timeout,
                                context=context)


class _Links(html.parser.HTMLParser):
  """The <a href=...>filename</a> anchors of a PEP 503 project page."""

  def __init__(self):
    super().__init__()
    self.links: list[tuple[str, str]] = []
    self._href: Optional[str] = None

  def handle_starttag(self, tag, attrs):
    if tag == "a":
      self._href = dict(attrs).get("href")

  def handle_data(self, data):
    if self._href is not None and data.strip():
      self.links.append((data.strip(), self._href))

  def handle_endtag(self, tag):
    if tag == "a":
      self._href = None


def parse_project_page(text: str, page_url: str) -> dict[str, tuple[str, Optional[str]]]:
  """{filename: (absolute url, sha256 or None)} from a simple-API page (JSON or HTML)."""
  out = {}
  if text.lstrip().startswith("{"):
    for f in json.loads(text).get("files", []):
      url = urllib.parse.urljoin(page_url, f["url"])
      out[f["filename"]] = (url, (f.get("hashes") or {}).get("sha256"))
    return out
  links = _Links()
  links.feed(text)
  for filename, href in links.links:
    url, _, fragment = urllib.parse.urljoin(page_url, href).partition("#")
    sha = fragment[len("sha256="):] if fragment.startswith("sha256=") else None
    out[filename] = (url, sha)
  return out


def find_sdist(index_url: str, filename: str = SDIST) -> tuple[str, Optional[str]]:
  """(url, sha256) of `filename` on the index's bigbench project page."""
  page = index_url.rstrip("/") + "/bigbench/"
  if page.startswith("file:"):  # a local mirror (pip's file:// index layout)
    page += "index.html"
  with _open(page, accept="application/vnd.pypi.simple.v1+json, text/html;q=0.1") as r:
    text = r.read().decode("utf-8")
  files = parse_project_page(text, page)
  if filename not in files:
    raise FileNotFoundError(f"{filename} is not listed at {page}; files there: "
                            f"{sorted(files) or 'none'}")
  return files[filename]


def sha256_of(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()


def download_sdist(dest: str, index_url: Optional[str] = None) -> str:
  """Downloads bigbench's sdist into `dest` (no pip, no metadata checks); returns its path.

  The sha256 the index lists (else bigbench 1.0.0's own) must match.
  """
  index_url = index_url or default_index_url()
  url, sha = find_sdist(index_url)
  path = os.path.join(dest, SDIST)
  print(f"BIG-bench: downloading {url}", file=sys.stderr, flush=True)
  t0, done, last = time.time(), 0, 0.0
  with _open(url, timeout=300) as r, open(path, "wb") as f:
    total = int(r.headers.get("Content-Length") or 0)
    for block in iter(lambda: r.read(1 << 20), b""):
      f.write(block)
      done += len(block)
      if sys.stderr.isatty() and time.time() - last > 1:
        last = time.time()
        of = f" of {total / 1e6:.0f}" if total else ""
        print(f"\r  {done / 1e6:.0f}{of} MB", end="", file=sys.stderr, flush=True)
  if sys.stderr.isatty():
    print(file=sys.stderr)
  want = sha or SDIST_SHA256
  got = sha256_of(path)
  if got != want:
    raise RuntimeError(f"{url}: sha256 {got} != {want} listed by {index_url}; the download "
                       "is corrupt or the index serves another file")
  log.info("downloaded %s (%.0f MB) in %.0f s", SDIST, done / 1e6, time.time() - t0)
  return path


def _extract(archive: str, out_dir: str) -> int:
  """Copies the task.json members of a .tar.gz sdist or .whl/.zip into out_dir/tasks/."""
  n = 0

  def write(rel: str, data: bytes) -> None:
    nonlocal n
    path = os.path.join(out_dir, "tasks", rel, "task.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
      f.write(data)
    n += 1

  if zipfile.is_zipfile(archive):
    with zipfile.ZipFile(archive) as zf:
      for name in zf.namelist():
        m = _MEMBER.search(name)
        if m:
          write(m.group(1), zf.read(name))
  else:
    with tarfile.open(archive) as tf:
      for member in tf:
        m = _MEMBER.search(member.name)
        if m and member.isfile():
          write(m.group(1), tf.extractfile(member).read())
  return n


def build_index(cache_dir: str) -> dict:
  """Parses every task.json under cache_dir/tasks into the record store; returns the index."""
  return store.build_store(cache_dir)


def local_archive(path: str) -> Callable[[str], str]:
  """A `download` callable for `prepare` that uses an archive already on disk."""
  path = os.path.abspath(os.path.expanduser(path))
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--archive {path!r} does not exist; download {SDIST} from "
                            f"{DEFAULT_INDEX_URL}/bigbench/ first")

  def use(dest: str) -> str:
    del dest
    if path.endswith(SDIST) and sha256_of(path) != SDIST_SHA256:
      log.warning("%s: sha256 differs from bigbench %s's sdist; using it anyway", path, VERSION)
    return path

  return use


def prepare(cache_dir: Optional[str] = None, download: Optional[Callable[[str], str]] = None,
            *, index_url: Optional[str] = None) -> str:
  """Downloads (via `download(tmp_dir) -> archive path`, default `download_sdist`), extracts
  and parses the tasks; returns the cache directory."""
  cache_dir = os.path.abspath(os.path.expanduser(cache_dir or default_cache_dir()))
  if download is None:
    download = lambda dest: download_sdist(dest, index_url)  # pylint: disable=unnecessary-lambda-assignment
  parent = os.path.dirname(cache_dir)
  os.makedirs(parent, exist_ok=True)
  with tempfile.TemporaryDirectory(dir=parent, prefix=".bigbench_download_") as tmp:
    archive = download(tmp)
    staging = tempfile.mkdtemp(dir=parent, prefix=".bigbench_staging_")
    try:
      if _extract(archive, staging) == 0:
        raise RuntimeError(f"no bigbench/benchmark_tasks/*/task.json in {archive}")
      build_index(staging)
      old = None
      if os.path.exists(cache_dir):
        old = tempfile.mkdtemp(dir=parent, prefix=".bigbench_old_")
        os.rename(cache_dir, os.path.join(old, "cache"))
      os.rename(staging, cache_dir)
      if old:
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
      shutil.rmtree(staging, ignore_errors=True)
      raise
  return cache_dir

"""`musiclm-jax listen`: the MusicLM paper's pairwise listening test as a local web app.

A rater hears two clips generated for the same text caption and says which one fits the
caption better; every answer is a win for the system behind the chosen clip.

  musiclm-jax listen --pairs DIR [--db PATH] [--host 127.0.0.1] [--port 8000] [--seed 0]
  musiclm-jax listen --pairs DIR [--db PATH] --export wins.json

Pairs folder: DIR/pairs.csv (UTF-8, a header row; other columns are ignored) with the columns
  pair_id,caption,clip_a,clip_b,system_a,system_b
clip_a and clip_b are paths relative to DIR, inside it (WAV, FLAC, OGG or MP3 files);
system_a and system_b name the systems that made them and must differ; pair ids are unique.
Anything else is a ValueError naming the file and line.

Answers: SQLite at --db (default DIR/answers.sqlite) in WAL mode, one row per (rater, pair):
the choice ('a' = the pair's clip_a, whichever side it was shown on), the clip shown on the
left and the UTC time. Each answer is committed in its own transaction before the HTTP
response goes out, so an acknowledged answer survives a crash or restart. A rater's first
answer to a pair stands: a resubmission is rejected (HTTP 409), so a double click or a
replayed request cannot change a judgement after the fact.

Presentation: the page calls the left clip "A" and the right one "B". Which of the pair's
clips is on the left, and the order of the pairs, are shuffled per rater by a hash of
(--seed, rater, pair id): a reload shows the same page.

HTTP: GET / (the page; ?rater=NAME skips the name form), GET /api/next?rater=NAME (the next
unanswered pair, or done), GET /clips/PAIR_ID/a|b (only the clips pairs.csv names),
POST /api/answer with JSON {"rater", "pair_id", "choice"}; bad input gets HTTP 400 and a
JSON {"error": ...}, and nothing is stored.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import datetime
import hashlib
import http.server
import json
import os
import re
import sqlite3
import threading
import urllib.parse
from typing import Dict, Optional, Tuple

from musiclm_jax import atomic, cli_utils

COLUMNS = ("pair_id", "caption", "clip_a", "clip_b", "system_a", "system_b")
CONTENT_TYPES = {".wav": "audio/wav", ".flac": "audio/flac", ".ogg": "audio/ogg",
                 ".mp3": "audio/mpeg"}
MAX_RATER_LENGTH = 64
MAX_BODY_BYTES = 4096
# A rejected body up to this size is read before the 400 goes out: closing a socket with
# unread data resets it, and the client would see the reset instead of the error message.
_DRAIN_BYTES = 1 << 20
PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "listening.html")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
  rater TEXT NOT NULL,
  pair_id TEXT NOT NULL,
  choice TEXT NOT NULL CHECK (choice IN ('a', 'b')),
  left_side TEXT NOT NULL CHECK (left_side IN ('a', 'b')),
  answered_at TEXT NOT NULL,
  PRIMARY KEY (rater, pair_id)
)"""


class BadRequest(ValueError):
  """Input the server refuses with HTTP 400; the message goes back as JSON."""


@dataclasses.dataclass(frozen=True)
class Pair:
  """Two clips for one caption by two systems; clip paths are absolute."""
  pair_id: str
  caption: str
  clip_a: str
  clip_b: str
  system_a: str
  system_b: str

  def clip(self, side: str) -> str:
    return self.clip_a if side == "a" else self.clip_b


# --- The pairs folder ------------------------------------------------------------------

def load_pairs(folder: str) -> Dict[str, Pair]:
  """DIR/pairs.csv -> {pair_id: Pair} in file order; a ValueError names the file and line."""
  path = os.path.join(folder, "pairs.csv")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path}: no such file (a pairs folder needs pairs.csv)")
  pairs = {}
  with open(path, newline="", encoding="utf-8-sig") as f:  # -sig: spreadsheets write a BOM
    reader = csv.DictReader(f)
    missing = [c for c in COLUMNS if c not in (reader.fieldnames or ())]
    if missing:
      raise ValueError(f"{path}: missing column(s) {', '.join(missing)}; the header must "
                       f"have {','.join(COLUMNS)}")
    for row in reader:
      where = f"{path}, line {reader.line_num}"
      pair = _parse_row(folder, row, where)
      if pair.pair_id in pairs:
        raise ValueError(f"{where}: duplicate pair_id {pair.pair_id!r}")
      pairs[pair.pair_id] = pair
  if not pairs:
    raise ValueError(f"{path}: no pairs")
  return pairs


def _parse_row(folder: str, row: Dict[str, Optional[str]], where: str) -> Pair:
  values = {c: (row[c] or "").strip() for c in COLUMNS}  # None: the row is short
  empty = [c for c in COLUMNS if not values[c]]
  if empty:
    raise ValueError(f"{where}: empty {', '.join(empty)}")
  if values["system_a"] == values["system_b"]:
    raise ValueError(f"{where}: both clips are by system {values['system_a']!r}; a pair "
                     "compares two systems")
  for column in ("clip_a", "clip_b"):
    values[column] = _clip_path(folder, values[column], f"{where}, {column}")
  return Pair(**values)


def _clip_path(folder: str, relative: str, where: str) -> str:
  """The absolute path of a clip, which must be an audio file inside the folder."""
  normal = os.path.normpath(relative)
  if os.path.isabs(normal) or normal == os.pardir or normal.startswith(os.pardir + os.sep):
    raise ValueError(f"{where}: {relative!r} is not a path inside {folder}")
  if os.path.splitext(normal)[1].lower() not in CONTENT_TYPES:
    raise ValueError(f"{where}: {relative!r} is not a {'/'.join(CONTENT_TYPES)} file")
  path = os.path.abspath(os.path.join(folder, normal))
  if not os.path.isfile(path):
    raise ValueError(f"{where}: clip {path} not found")
  return path


# --- Raters and presentation order -------------------------------------------------------

def check_rater(rater) -> str:
  """The rater id without surrounding blanks; BadRequest unless 1 to MAX_RATER_LENGTH
  printable characters."""
  if not isinstance(rater, str) or not rater.strip():
    raise BadRequest("rater id is missing or empty")
  rater = rater.strip()
  if len(rater) > MAX_RATER_LENGTH:
    raise BadRequest(f"rater id is longer than {MAX_RATER_LENGTH} characters")
  if not rater.isprintable():
    raise BadRequest("rater id has control characters")
  return rater


def _digest(seed: int, *parts: str) -> bytes:
  return hashlib.sha256("\0".join([str(seed), *parts]).encode("utf-8")).digest()


def left_side(seed: int, rater: str, pair_id: str) -> str:
  """Which of the pair's clips ('a' or 'b') this rater sees on the left, as "A"."""
  return "ab"[_digest(seed, "left", rater, pair_id)[0] & 1]


def pair_order(seed: int, rater: str, pair_ids) -> list:
  """The order this rater is asked the pairs in: shuffled per rater (order effects then
  average out over raters), the same on every request."""
  return sorted(pair_ids, key=lambda pair_id: _digest(seed, "order", rater, pair_id))


def clip_url(pair_id: str, side: str) -> str:
  return f"/clips/{urllib.parse.quote(pair_id, safe='')}/{side}"


# --- Answers ------------------------------------------------------------------------------

def connect(db_path: str) -> sqlite3.Connection:
  """The answers database (the table is created if new). Autocommit: every INSERT is its
  own transaction, committed when execute() returns."""
  conn = sqlite3.connect(db_path, timeout=30, isolation_level=None)
  conn.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
  conn.execute("PRAGMA synchronous=FULL")  # WAL's NORMAL may lose the last commits on power loss
  conn.execute(_SCHEMA)
  return conn


class ListeningTest:
  """What the request handlers share: the pairs, the answers database and the seed."""

  def __init__(self, pairs: Dict[str, Pair], db_path: str, seed: int = 0):
    self.pairs, self.db_path, self.seed = pairs, db_path, seed
    try:
      connect(db_path).close()  # a bad --db fails at start, not at the first answer
    except sqlite3.Error as e:
      raise ValueError(f"{db_path}: cannot open the answers database: {e}") from None

  def answered(self, rater: str) -> set:
    """The ids of the pairs this rater has answered."""
    with contextlib.closing(connect(self.db_path)) as conn:
      rows = conn.execute("SELECT pair_id FROM answers WHERE rater = ?", (rater,))
      return {pair_id for (pair_id,) in rows} & self.pairs.keys()

  def next_pair(self, rater: str) -> dict:
    """The rater's next unanswered pair (caption, left and right clips, progress) or
    {"done": true, ...}."""
    answered = self.answered(rater)
    progress = {"answered": len(answered), "total": len(self.pairs)}
    todo = [p for p in pair_order(self.seed, rater, self.pairs) if p not in answered]
    if not todo:
      return {"done": True, **progress}
    pair = self.pairs[todo[0]]
    left = left_side(self.seed, rater, pair.pair_id)
    right = "b" if left == "a" else "a"
    return {"done": False, "pair_id": pair.pair_id, "caption": pair.caption,
            "left": {"side": left, "url": clip_url(pair.pair_id, left)},
            "right": {"side": right, "url": clip_url(pair.pair_id, right)}, **progress}

  def record(self, rater: str, pair_id: str, choice: str) -> bool:
    """Stores and commits one answer; False (nothing changed) if the rater has already
    answered the pair."""
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="milliseconds")
    with contextlib.closing(connect(self.db_path)) as conn:
      cursor = conn.execute(
          "INSERT INTO answers (rater, pair_id, choice, left_side, answered_at) "
          "VALUES (?, ?, ?, ?, ?) ON CONFLICT (rater, pair_id) DO NOTHING",
          (rater, pair_id, choice, left_side(self.seed, rater, pair_id), now))
      return cursor.rowcount == 1


def parse_answer(body: bytes, pairs: Dict[str, Pair]) -> Tuple[str, str, str]:
  """(rater, pair_id, choice) from a POST /api/answer body; BadRequest says what is wrong."""
  try:
    answer = json.loads(body.decode("utf-8"))
  except ValueError as e:  # UnicodeDecodeError and JSONDecodeError both are
    raise BadRequest(f"the body is not JSON: {e}") from None
  if not isinstance(answer, dict):
    raise BadRequest('the body must be a JSON object {"rater", "pair_id", "choice"}')
  rater = check_rater(answer.get("rater"))
  pair_id = answer.get("pair_id")
  if not isinstance(pair_id, str) or pair_id not in pairs:
    raise BadRequest(f"unknown pair_id {pair_id!r}")
  choice = answer.get("choice")
  if not isinstance(choice, str) or choice not in ("a", "b"):
    raise BadRequest(f"choice must be 'a' or 'b', got {choice!r}")
  return rater, pair_id, choice


# --- HTTP ----------------------------------------------------------------------------------

_RANGE = re.compile(r"bytes=(\d*)-(\d*)$")


def byte_range(header: Optional[str], size: int) -> Optional[Tuple[int, int]]:
  """[start, stop) of a single-range 'Range: bytes=...' header, None for the whole file
  (no header, or one this server ignores); ValueError if it lies past the end."""
  match = _RANGE.match(header or "")
  if not match or match.groups() == ("", ""):
    return None
  first, last = match.groups()
  if first:
    start, stop = int(first), min(int(last) + 1, size) if last else size
  else:  # "bytes=-N": the last N bytes
    start, stop = max(size - int(last), 0), size
  if start >= stop:
    raise ValueError(f"range {header!r} outside {size} bytes")
  return start, stop


class _Handler(http.server.BaseHTTPRequestHandler):
  """The routes. HTTP/1.0 (the default): a connection per request, nothing left open."""
  server_version = "musiclm-jax-listen"
  timeout = 30  # a client that stops sending mid-request frees its thread

  def do_GET(self):  # pylint: disable=invalid-name
    url = urllib.parse.urlsplit(self.path)
    parts = url.path.split("/")
    try:
      if url.path == "/":
        with open(PAGE, "rb") as f:
          self._send(200, f.read(), "text/html; charset=utf-8")
      elif url.path == "/api/next":
        rater = check_rater(urllib.parse.parse_qs(url.query).get("rater", [None])[0])
        self._send_json(200, self.server.app.next_pair(rater))
      elif len(parts) == 4 and parts[:2] == ["", "clips"]:
        self._send_clip(urllib.parse.unquote(parts[2]), parts[3])
      else:
        self._send_json(404, {"error": f"no such page: {url.path}"})
    except BadRequest as e:
      self._send_json(400, {"error": str(e)})

  def do_POST(self):  # pylint: disable=invalid-name
    if urllib.parse.urlsplit(self.path).path != "/api/answer":
      self._send_json(404, {"error": f"no such page: {self.path}"})
      return
    app = self.server.app
    try:
      rater, pair_id, choice = parse_answer(self._read_body(), app.pairs)
    except BadRequest as e:
      self._send_json(400, {"error": str(e)})
      return
    if not app.record(rater, pair_id, choice):
      self._send_json(409, {"error": f"{rater!r} has already answered pair {pair_id!r}; "
                                     "the first answer stands"})
      return
    self._send_json(200, {"stored": True, "pair_id": pair_id})

  def _read_body(self) -> bytes:
    """The body of a JSON request of at most MAX_BODY_BYTES; BadRequest otherwise."""
    try:
      length = int(self.headers.get("Content-Length", ""))
    except ValueError:
      raise BadRequest("Content-Length is missing or not a number") from None
    body = self.rfile.read(length) if 0 <= length <= _DRAIN_BYTES else b""
    content_type = self.headers.get("Content-Type", "").split(";")[0].strip().lower()
    if content_type != "application/json":
      raise BadRequest(f"Content-Type must be application/json, not {content_type!r}")
    if not 0 <= length <= MAX_BODY_BYTES:
      raise BadRequest(f"the body is {length} bytes; at most {MAX_BODY_BYTES} are accepted")
    return body

  def _send_clip(self, pair_id: str, side: str) -> None:
    """A clip pairs.csv names, looked up by pair id: no path from the URL is ever opened."""
    pair = self.server.app.pairs.get(pair_id)
    if pair is None or side not in ("a", "b"):
      self._send_json(404, {"error": "no such clip"})
      return
    path = pair.clip(side)
    with open(path, "rb") as f:
      data = f.read()
    content_type = CONTENT_TYPES[os.path.splitext(path)[1].lower()]
    try:
      span = byte_range(self.headers.get("Range"), len(data))
    except ValueError as e:
      self._send_json(416, {"error": str(e)}, [("Content-Range", f"bytes */{len(data)}")])
      return
    if span is None:  # the whole file; Accept-Ranges lets the player seek with ranges
      self._send(200, data, content_type, [("Accept-Ranges", "bytes")])
    else:
      start, stop = span
      self._send(206, data[start:stop], content_type,
                 [("Accept-Ranges", "bytes"), ("Content-Range",
                                                f"bytes {start}-{stop - 1}/{len(data)}")])

  def _send_json(self, status: int, value, headers=()) -> None:
    self._send(status, json.dumps(value).encode("utf-8"), "application/json", headers)

  def _send(self, status: int, body: bytes, content_type: str, headers=()) -> None:
    self.send_response(status)
    self.send_header("Content-Type", content_type)
    self.send_header("Content-Length", str(len(body)))
    self.send_header("Cache-Control", "no-store")  # progress and answers change under it
    for name, value in headers:
      self.send_header(name, value)
    self.end_headers()
    self.wfile.write(body)


class ListeningServer(http.server.ThreadingHTTPServer):
  """A ThreadingHTTPServer whose handlers share one ListeningTest (`app`).

  At most `max_handlers` requests are handled at once: the accept loop waits for a free
  slot, and further connections queue in the listen backlog (`request_queue_size`), so a
  burst of raters cannot exhaust the server's threads or SQLite's connections.
  """
  daemon_threads = True
  max_handlers = 32
  request_queue_size = 256

  def __init__(self, address: Tuple[str, int], app: ListeningTest):
    self.app = app
    self._slots = threading.BoundedSemaphore(self.max_handlers)
    super().__init__(address, _Handler)

  def process_request(self, request, client_address):
    self._slots.acquire()
    try:
      super().process_request(request, client_address)
    except BaseException:
      self._slots.release()
      raise

  def process_request_thread(self, request, client_address):
    try:
      super().process_request_thread(request, client_address)
    finally:
      self._slots.release()


def make_server(pairs_dir: str, db_path: Optional[str] = None, host: str = "127.0.0.1",
                port: int = 8000, seed: int = 0) -> ListeningServer:
  """A server for the pairs folder, bound (port 0: a free one) but not yet serving."""
  app = ListeningTest(load_pairs(pairs_dir), db_path or default_db(pairs_dir), seed)
  return ListeningServer((host, port), app)


def default_db(pairs_dir: str) -> str:
  return os.path.join(pairs_dir, "answers.sqlite")


# --- Results -------------------------------------------------------------------------------

def export_wins(db_path: str, pairs: Dict[str, Pair]) -> dict:
  """Win counts: each answer is a win for the chosen clip's system over the other one.

  {"answers": N, "raters": R,
   "systems": {system: {"wins", "losses", "comparisons", "win_rate" (None: no answers)}},
   "head_to_head": {system: {opponent: {"wins", "losses"}}}} (opponents it meets in pairs).
  """
  if not os.path.isfile(db_path):
    raise FileNotFoundError(f"{db_path}: no answers database")
  with contextlib.closing(connect(db_path)) as conn:
    rows = conn.execute("SELECT pair_id, choice FROM answers").fetchall()
    raters = conn.execute("SELECT COUNT(DISTINCT rater) FROM answers").fetchone()[0]
  unknown = sorted({pair_id for pair_id, _ in rows} - pairs.keys())
  if unknown:  # pairs.csv changed under the answers: counting them would guess
    raise ValueError(f"{db_path}: answers to pairs that pairs.csv lacks: {unknown[:10]}")
  beat = {}  # (winner, loser) -> count, for every pairing of systems in pairs.csv
  for pair in pairs.values():
    beat.setdefault((pair.system_a, pair.system_b), 0)
    beat.setdefault((pair.system_b, pair.system_a), 0)
  for pair_id, choice in rows:
    pair = pairs[pair_id]
    systems = (pair.system_a, pair.system_b) if choice == "a" else (pair.system_b,
                                                                      pair.system_a)
    beat[systems] += 1
  names = sorted({winner for winner, _ in beat})
  per_system = {}
  for name in names:
    wins = sum(n for (winner, _), n in beat.items() if winner == name)
    losses = sum(n for (_, loser), n in beat.items() if loser == name)
    per_system[name] = {"wins": wins, "losses": losses, "comparisons": wins + losses,
                        "win_rate": wins / (wins + losses) if wins + losses else None}
  head_to_head = {name: {loser: {"wins": n, "losses": beat[(loser, name)]}
                         for (winner, loser), n in sorted(beat.items()) if winner == name}
                  for name in names}
  return {"answers": len(rows), "raters": raters, "systems": per_system,
          "head_to_head": head_to_head}


def format_wins(wins: dict) -> str:
  """The per-system counts as a text table, best win rate first."""
  systems = sorted(wins["systems"].items(),
                   key=lambda item: (-(item[1]["win_rate"] or 0.0), item[0]))
  width = max(len("system"), *(len(name) for name, _ in systems))
  lines = [f"{wins['answers']} answers from {wins['raters']} rater(s)",
           f"{'system':<{width}}  {'wins':>6}  {'losses':>6}  {'comparisons':>11}  win rate"]
  for name, s in systems:
    rate = "-" if s["win_rate"] is None else f"{100 * s['win_rate']:.1f}%"
    lines.append(f"{name:<{width}}  {s['wins']:>6}  {s['losses']:>6}  "
                 f"{s['comparisons']:>11}  {rate:>8}")
  return "\n".join(lines)


# --- Command line --------------------------------------------------------------------------

def _serve(args) -> None:
  app = ListeningTest(load_pairs(args.pairs), args.db or default_db(args.pairs), args.seed)
  try:
    server = ListeningServer((args.host, args.port), app)
  except OSError as e:  # the port is taken, or the host is not this machine's
    raise ValueError(f"cannot serve on {args.host}:{args.port}: {e.strerror or e}") from None
  host, port = server.server_address[:2]
  print(f"{len(server.app.pairs)} pairs from {args.pairs}, answers in {server.app.db_path}")
  print(f"serving on http://{host}:{port}/ (Ctrl-C stops)", flush=True)
  try:
    server.serve_forever()
  except KeyboardInterrupt:
    print("stopped")
  finally:
    server.server_close()


def _export(args) -> None:
  wins = export_wins(args.db or default_db(args.pairs), load_pairs(args.pairs))
  atomic.atomic_write_text(args.export, json.dumps(wins, indent=1, sort_keys=True))
  print(format_wins(wins))
  print(f"-> {args.export}")


def parser() -> argparse.ArgumentParser:
  p = cli_utils.ArgumentParser(prog="musiclm-jax listen",
                               description=cli_utils.first_paragraph(__doc__))
  p.add_argument("--pairs", required=True, help="folder with pairs.csv and the clips")
  p.add_argument("--db", default=None, help="answers database (default PAIRS/answers.sqlite)")
  p.add_argument("--host", default="127.0.0.1")
  p.add_argument("--port", type=int, default=8000, help="0: any free port")
  p.add_argument("--seed", type=int, default=0,
                 help="shuffles left/right and the order of the pairs per rater")
  p.add_argument("--export", default=None, metavar="WINS_JSON",
                 help="write the win counts per system and print them, instead of serving")
  p.set_defaults(run=_run)
  return p


def _run(args) -> None:
  if args.export:
    _export(args)
  else:
    _serve(args)


def main(argv=None) -> None:
  cli_utils.run(parser(), argv)


if __name__ == "__main__":
  main()

"""Secret redaction (policy ``pyx.redact/1``): nothing pyx writes to disk may contain a secret.

Two kinds of rules, every hit replaced by :data:`MASK`:

* **Known values** -- secrets from the environment (:func:`secrets_from_env`) or added at
  runtime (:meth:`Redactor.add_secret`), matched raw and in common encodings: URL-quoted,
  JSON-escaped, hex, base64 (standard/urlsafe, padded or not, and the three alignments of a
  secret embedded in a longer base64 blob). Values shorter than :data:`MIN_SECRET_LEN` (4)
  characters are *not* value-redacted (masking every "ab" would destroy the evidence), and
  encoded forms shorter than 8 characters are skipped (they would mask random text).
* **Shapes**, whatever the environment: PEM private-key blocks, JWTs, AWS access key ids,
  ``Bearer``/``Basic`` credentials, the password in URL userinfo (``scheme://u:PASS@``) and
  ``password=``/``pwd=`` pairs in DSN strings.

Every character covered by any hit is masked (overlapping hits merge into one mask), so the
output does not depend on which rule fired first. :meth:`Redactor.json` also masks values under
secret-looking keys. Pure stdlib, no IPython.
"""

from __future__ import annotations

import base64
import binascii
import json as _json
import os
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import quote, quote_plus, unquote

__all__ = [
    "MASK",
    "MIN_SECRET_LEN",
    "POLICY",
    "Redactor",
    "StreamRedactor",
    "is_secret_name",
    "secrets_from_env",
]

POLICY = "pyx.redact/1"
MASK = "[REDACTED]"
MIN_SECRET_LEN = 4  #: shorter secret values are not value-redacted
MIN_ENCODED_LEN = 8  #: shorter encoded variants (base64, hex) are not used
PEM_CAP = 64 * 1024  #: an unterminated PEM block masks at most this much after its header
LINE_CAP = 64 * 1024  #: a stream holds at most this much of an unterminated line
_FORCE_HOLD = 4096  #: what a forced (mid-line) stream cut keeps back, at least

_SECRET_WORDS = ("PASSWORD", "PASSWD", "SECRET", "TOKEN", "KEY", "CREDENTIAL")
_SECRET_KEYS = ("dsn", "authorization", "passwd", "pwd", "api_key", "cookie")
_NOT_SECRETS = frozenset({"true", "false", "none", "null"})  # flag-like values of e.g. TOKENIZERS_PARALLELISM

_PEM_BEGIN = re.compile(r"-----BEGIN[A-Z0-9 ]{0,64}PRIVATE KEY-----")
_PEM_END = re.compile(r"-----END[A-Z0-9 ]{0,64}PRIVATE KEY-----")
_PEM_END_MAX = 8 + 64 + 16
_JWT = re.compile(r"eyJ[A-Za-z0-9_-]+\.eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+")
_AWS = re.compile(r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", re.ASCII)
_URL = re.compile(r"://([^\s/?#:]*):([^\s/?#]+)@", re.ASCII)
_BEARER = re.compile(r"(?i:\bbearer)[ \t]+([A-Za-z0-9._~+/-]+=*)", re.ASCII)
_BASIC = re.compile(r"(?i:authorization)[\"']?[ \t]*[:=][ \t]*[\"']?(?i:basic)[ \t]+([A-Za-z0-9+/]+={0,2})", re.ASCII)
_DSN = re.compile(
    r"""(?i:password|passwd|pwd)[ \t]*=[ \t]*"""
    r"""(?:'((?:[^'\\\r\n]|\\[^\r\n])*)'|"((?:[^"\\\r\n]|\\[^\r\n])*)"|(['"]?[^\s;&'"]+))""",
    re.ASCII,
)
# (regex, rule, group masked (-1: whichever matched), probes: one must occur in the text, or if
# lower-case in the lower-cased text; a cheap necessary condition that skips the regex)
_SHAPES: tuple[tuple[re.Pattern[str], str, int, tuple[str, ...], bool], ...] = (
    (_JWT, "jwt", 0, ("eyJ",), False),
    (_AWS, "aws_access_key", 0, ("AKIA", "ASIA"), False),
    (_URL, "url_password", 2, ("://",), False),
    (_BEARER, "bearer", 1, ("bearer",), True),
    (_BASIC, "basic_auth", 1, ("authorization",), True),
    (_DSN, "dsn_password", -1, ("passw", "pwd"), True),
)

# For case-insensitive rules: a letter every probe of the rule contains, in both cases (memchr-cheap)
_FOLDED_HINTS = {"bearer": ("b", "B"), "basic_auth": ("z", "Z"), "dsn_password": ("w", "W")}

# A hit: (mask start, mask end, rule, match start, match end); the match may be wider than the mask.
_Span = tuple[int, int, str, int, int]


def is_secret_name(name: str) -> bool:
    """True if ``name`` (case-insensitive) contains PASSWORD, PASSWD, SECRET, TOKEN, KEY or CREDENTIAL."""
    up = name.upper()
    return any(word in up for word in _SECRET_WORDS)


_KEY_WORDS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")
_SECRET_KEY_WORDS = frozenset({"password", "passwd", "pwd", "secret", "secrets", "token", "credential",
                               "credentials", "dsn", "authorization", "cookie", "apikey", "privatekey"})
_KEYISH = frozenset({"api", "access", "private", "secret", "signing", "client", "encryption", "master"})


def is_secret_key(name: str) -> bool:
    """JSON keys by whole words, so ``key``, ``tokens_used`` or ``cache_key`` stay readable while
    ``password``, ``api_key``, ``accessToken`` or ``DB_PASSWORD`` are masked."""
    words = [w.lower() for w in _KEY_WORDS.findall(name)]
    if any(w in _SECRET_KEY_WORDS for w in words):
        return True
    return any(w == "key" and i > 0 and words[i - 1] in _KEYISH for i, w in enumerate(words))


def _url_passwords(value: str) -> list[str]:
    """Passwords in the userinfo of URLs in ``value``, as written and percent-decoded."""
    out: list[str] = []
    for m in _URL.finditer(value):
        raw = m.group(2)
        out.append(raw)
        decoded = unquote(raw)
        if decoded != raw:
            out.append(decoded)
    return out


def _labelled_env_secrets(environ: Mapping[str, str] | None) -> list[tuple[str, str]]:
    env = os.environ if environ is None else environ
    out: list[tuple[str, str]] = []
    for name, value in env.items():
        if is_secret_name(name) and len(value) >= MIN_SECRET_LEN and value.lower() not in _NOT_SECRETS:
            out.append((value, "env_value"))
        out.extend((pw, "url_password") for pw in _url_passwords(value) if len(pw) >= MIN_SECRET_LEN)
    first: dict[str, str] = {}
    for value, rule in out:
        first.setdefault(value, rule)
    return list(first.items())


def secrets_from_env(environ: Mapping[str, str] | None = None) -> list[str]:
    """Secret values in ``environ`` (default ``os.environ``), deduplicated, in environment order.

    Every value of a variable whose name :func:`is_secret_name`, plus the password of any URL
    (``scheme://user:pass@...``) in any variable's value (as written and percent-decoded).
    Values shorter than 4 characters and the flag-like ``true``/``false``/``none``/``null``
    are left out.
    """
    return [value for value, _ in _labelled_env_secrets(environ)]


def _encode(secret: str) -> bytes:
    try:
        return secret.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return secret.encode("utf-8", "surrogatepass")


def _variants(secret: str) -> set[str]:
    """The forms of ``secret`` to mask: raw, quoted, JSON-escaped, hex and base64."""
    raw = _encode(secret)
    out = {
        secret,
        quote(raw),
        quote(raw, safe=""),
        quote_plus(raw),
        _json.dumps(secret)[1:-1],
        _json.dumps(secret, ensure_ascii=False)[1:-1],
    }
    encoded = {binascii.hexlify(raw).decode(), binascii.hexlify(raw).decode().upper()}
    for enc in (base64.b64encode, base64.urlsafe_b64encode):
        full = enc(raw).decode()
        encoded.update((full, full.rstrip("=")))
        for pad in (0, 1, 2):  # the chars that do not depend on neighbours, at each byte alignment
            start, end = -(-8 * pad // 6), 8 * (pad + len(raw)) // 6
            encoded.add(enc(b"\0" * pad + raw).decode()[start:end])
    out.update(v for v in encoded if len(v) >= MIN_ENCODED_LEN)
    return {v for v in out if len(v) >= MIN_SECRET_LEN}


# Characters by how common they are in logs and CSV evidence (most common first); others count as rare.
_COMMON = " \ne,taoinsrhldcu0123456789mfpgwybv.:-/_\"kxjqz"


def _rarest(probe: str, n: int = 3) -> tuple[str, ...]:
    """The ``n`` rarest distinct characters of ``probe``: all must be in a text for it to match."""
    rank = sorted(set(probe), key=lambda c: _COMMON.find(c) if c in _COMMON else len(_COMMON), reverse=True)
    return tuple(rank[:n])


class _Index:
    """Variants of the known secrets, grouped under a shortest one that the others contain.

    Finding is one ``str.find`` pass per probe plus ``startswith`` checks at its hits: measured
    ~5x faster than one regex alternation of all variants (sre tries every branch at every
    position: 18-32 MB/s for 10 secrets), and every occurrence of every variant is found.
    """

    def __init__(self, secrets: Mapping[str, str]) -> None:
        rule_of: dict[str, str] = {}
        for secret, rule in secrets.items():
            for v in _variants(secret):
                rule_of.setdefault(v, rule)
        groups: dict[str, list[str]] = {}
        for v in sorted(rule_of, key=len):
            probe = next((p for p in groups if p in v), None)
            groups.setdefault(v if probe is None else probe, []).append(v)
        self.rule_of = rule_of
        # (probe, its rarest characters, ((variant, offset of the probe in it), ...))
        self.groups = [(p, _rarest(p), tuple((v, v.find(p)) for v in vs)) for p, vs in groups.items()]
        self.multiline = tuple(v for v in rule_of if "\n" in v or "\r" in v)
        self.max_len = max(map(len, rule_of), default=0)


def _pem_spans(s: str, final: bool) -> tuple[list[_Span], int]:
    """PEM private-key blocks in ``s`` and the start of an undecided one (``-1`` if none).

    A block runs from its BEGIN line to the first END line starting within :data:`PEM_CAP`;
    without one, it covers :data:`PEM_CAP` characters (or up to the end of ``s`` if ``final``).
    """
    spans: list[_Span] = []
    pos = 0
    while (head := _PEM_BEGIN.search(s, pos)) is not None:
        start, body = head.start(), head.end()
        end = _PEM_END.search(s, body, body + PEM_CAP + _PEM_END_MAX)
        if end is not None and end.start() <= body + PEM_CAP:
            stop = end.end()
        elif final or len(s) >= body + PEM_CAP + _PEM_END_MAX:
            stop = min(len(s), body + PEM_CAP)
        else:
            return spans, start
        spans.append((start, stop, "pem", start, stop))
        pos = stop
    return spans, -1


def _find_all(s: str, needle: str, rule: str, spans: list[_Span]) -> None:
    i = s.find(needle)
    while i >= 0:
        spans.append((i, i + len(needle), rule, i, i + len(needle)))
        i = s.find(needle, i + 1)


class Redactor:
    """Masks secrets in text, bytes, JSON-like objects and streams; counts masks by rule.

    ``counts`` maps rule name (``env_value``, ``url_password``, ``secret_value``, ``key_name``,
    ``pem``, ``jwt``, ``aws_access_key``, ``bearer``, ``basic_auth``, ``dsn_password``) to the
    number of masks applied over the redactor's lifetime.
    """

    def __init__(self, secrets: Iterable[str] = (), *, policy: str = POLICY) -> None:
        self.policy = policy
        self.counts: dict[str, int] = {}
        self._secrets: dict[str, str] = {}
        self._index: _Index | None = None
        for value in secrets:
            self._add(value, "secret_value")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, extra: Iterable[str] = ()) -> Redactor:
        """A redactor for the secrets of ``environ`` (default ``os.environ``) plus ``extra``."""
        red = cls()
        for value, rule in _labelled_env_secrets(environ):
            red._add(value, rule)
        for value in extra:
            red._add(value, "secret_value")
        return red

    def __repr__(self) -> str:  # never shows a secret
        return f"Redactor(policy={self.policy!r}, secrets={len(self._secrets)}, counts={self.counts!r})"

    def add_secret(self, value: str) -> None:
        """Also mask ``value`` (e.g. a password typed at runtime or a papermill parameter).

        Ignored if shorter than 4 characters or a substring of :data:`MASK`.
        """
        self._add(value, "secret_value")

    def _add(self, value: str, rule: str) -> None:
        if len(value) < MIN_SECRET_LEN or value in MASK or value in self._secrets:
            return
        self._secrets[value] = rule
        self._index = None

    @property
    def _idx(self) -> _Index:
        if self._index is None:
            self._index = _Index(self._secrets)
        return self._index

    @property
    def max_secret_len(self) -> int:
        """Length of the longest masked form of a known secret (0 if none)."""
        return self._idx.max_len

    # -- finding ---------------------------------------------------------------------------

    def _literal_spans(self, s: str, spans: list[_Span]) -> None:
        idx = self._idx
        present: dict[str, bool] = {}
        for probe, rare, group in idx.groups:
            # a one-character ``in`` is a memchr (~20x cheaper than a substring scan): test the probe's
            # rarest characters first, each once per text
            if not all(present[c] if c in present else present.setdefault(c, c in s) for c in rare):
                continue
            if probe not in s:
                continue
            i = s.find(probe)
            while i >= 0:  # every variant of the group contains the probe: check around each hit
                for v, off in group:
                    if i >= off and s.startswith(v, i - off):
                        spans.append((i - off, i - off + len(v), idx.rule_of[v], i - off, i - off + len(v)))
                i = s.find(probe, i + 1)

    def _find(self, s: str) -> list[_Span]:
        """Every hit in ``s``, unordered (cheap substring probes skip rules that cannot match)."""
        spans: list[_Span] = []
        self._literal_spans(s, spans)
        if "-----BEGIN" in s:
            spans += _pem_spans(s, final=True)[0]
        low: str | None = None
        for rx, rule, group, probes, folded in _SHAPES:
            if folded:
                if not any(c in s for c in _FOLDED_HINTS[rule]):
                    continue  # none of the rule's rarest letters, in either case: it cannot match
                if low is None:
                    low = s.lower()  # only probed with ``in``, never indexed (non-ASCII may change length)
                where = low
            else:
                where = s
            if not any(p[-1] in where and p in where for p in probes):
                continue
            for m in rx.finditer(s):
                g = group if group >= 0 else m.lastindex or 0
                if m.start(g) < m.end(g):
                    spans.append((m.start(g), m.end(g), rule, m.start(), m.end()))
        return spans

    def _apply(self, s: str, spans: list[_Span]) -> str:
        """Render ``s`` with ``spans`` masked (overlaps merged) and count one mask per merged run."""
        runs: list[list[Any]] = []
        for start, end, rule, _, _ in sorted(spans, key=lambda sp: (sp[0], -sp[1])):
            if s[start:end] == MASK:
                continue
            if runs and start < runs[-1][1]:
                runs[-1][1] = max(runs[-1][1], end)
            else:
                runs.append([start, end, rule])
        if not runs:
            return s
        out: list[str] = []
        pos = 0
        for start, end, rule in runs:
            out += (s[pos:start], MASK)
            pos = end
            self.counts[rule] = self.counts.get(rule, 0) + 1
        out.append(s[pos:])
        return "".join(out)

    # -- public redaction ------------------------------------------------------------------

    def text(self, s: str) -> str:
        """``s`` with every secret masked."""
        if not s:
            return s
        spans = self._find(s)
        return self._apply(s, spans) if spans else s

    def bytes(self, b: bytes) -> bytes:
        """``b`` with every secret masked; bytes that are not valid UTF-8 pass through unchanged."""
        s = b.decode("utf-8", "surrogateescape")
        spans = self._find(s)
        return self._apply(s, spans).encode("utf-8", "surrogateescape") if spans else b

    def json(self, obj: Any) -> Any:
        """A redacted deep copy of a JSON-like ``obj`` (tuples become lists; ``obj`` is not mutated).

        Strings (keys too) go through :meth:`text`; a non-empty, non-bool value under a key that
        looks secret (:func:`is_secret_name`, or containing dsn/authorization/pwd/cookie...) is
        replaced by :data:`MASK` whole. Other scalars are returned as they are.
        """
        if isinstance(obj, str):
            return self.text(obj)
        if isinstance(obj, dict):
            out: dict[Any, Any] = {}
            for key, value in obj.items():
                new_key = self.text(key) if isinstance(key, str) else key
                if isinstance(key, str) and is_secret_key(key) and _maskable(value):
                    self.counts["key_name"] = self.counts.get("key_name", 0) + 1
                    out[new_key] = MASK
                else:
                    out[new_key] = self.json(value)
            return out
        if isinstance(obj, list | tuple):
            return [self.json(item) for item in obj]
        if isinstance(obj, bytes | bytearray):
            return self.bytes(bytes(obj))
        return obj

    def stream(self, sink: Callable[[str], object]) -> StreamRedactor:
        """A file-like writer that passes redacted text to ``sink`` (for a log tee)."""
        return StreamRedactor(self, sink)

    # -- stream support --------------------------------------------------------------------

    def _line_cut(self, buf: str, cut: int) -> int:
        """The last line-break cut ``<= cut`` that no PEM block or multi-line secret straddles."""
        idx = self._idx
        spans: list[_Span] = []
        limit = cut
        if "-----BEGIN" in buf:
            spans, open_at = _pem_spans(buf, final=False)
            if open_at >= 0:
                limit = min(limit, open_at)
        for v in idx.multiline:
            _find_all(buf, v, "", spans)
            a = buf.find(v[0], max(0, len(buf) - len(v) + 1))
            while 0 <= a < limit:  # the tail could still become this secret
                if v.startswith(buf[a:]):
                    limit = a
                    break
                a = buf.find(v[0], a + 1)
        return _back_off(buf, _last_break(buf, limit) if limit < cut else cut, spans)

    def _forced_cut(self, buf: str, cut: int) -> tuple[int, list[_Span]]:
        """A mid-line cut for an over-long line: before every hit that crosses it or is still open."""
        spans = self._find(buf)
        force = len(buf) - max(self.max_secret_len, _FORCE_HOLD)
        if "-----BEGIN" in buf:
            open_at = _pem_spans(buf, final=False)[1]
            force = min(force, open_at) if open_at >= 0 else force
        at = force
        moved = True
        while moved:
            moved = False
            for _, _, _, xs, xe in spans:
                if xs < at and (at < xe or xe >= len(buf)):
                    at, moved = xs, True
        if at <= cut:  # a single hit wider than the cap: mask what is before the cut
            at = force if len(buf) - cut > 4 * LINE_CAP else cut
        return at, [(s, min(e, at), r, xs, xe) for s, e, r, xs, xe in spans if s < at]


def _maskable(value: Any) -> bool:
    if value is None or isinstance(value, bool) or value == MASK:
        return False
    return not (isinstance(value, str | list | dict | tuple) and len(value) == 0)


def _last_break(buf: str, end: int) -> int:
    """The position just after the last line break before ``end`` (0 if none)."""
    return max(buf.rfind("\n", 0, end), buf.rfind("\r", 0, end)) + 1


def _back_off(buf: str, cut: int, spans: list[_Span]) -> int:
    moved = True
    while moved and cut:
        moved = False
        for _, _, _, xs, xe in spans:
            if xs < cut < xe:
                cut, moved = _last_break(buf, xs), True
    return cut


class StreamRedactor:
    """Incremental redaction for a log tee: the output equals ``text()`` of everything written.

    Complete lines are emitted at once: no rule except PEM blocks and multi-line secrets crosses
    a line break (``\\n`` or ``\\r``), so text up to the last break is safe unless a PEM block is
    still open (held until its END line, or :data:`PEM_CAP`) or the tail could be the start of a
    multi-line secret. An unterminated line is held until :meth:`flush`, or until it exceeds
    :data:`LINE_CAP`, when it is cut mid-line before any hit that could span the cut (at that
    point, and only there, output may differ from ``text()`` of the whole).
    """

    def __init__(self, redactor: Redactor, sink: Callable[[str], object]) -> None:
        self._red = redactor
        self._sink = sink
        self._parts: list[str] = []
        self._size = 0

    def write(self, s: str) -> int:
        """Buffer ``s`` and emit whatever is now known to be safe; returns ``len(s)``."""
        if s:
            self._parts.append(s)
            self._size += len(s)
            if "\n" in s or "\r" in s or self._size > LINE_CAP:
                self._drain()
        return len(s)

    def flush(self) -> None:
        """Emit everything buffered, redacted."""
        buf = self._take()
        if buf:
            self._sink(self._red.text(buf))

    def _take(self) -> str:
        buf = "".join(self._parts)
        self._parts, self._size = [], 0
        return buf

    def _drain(self) -> None:
        red = self._red
        buf = self._take()
        cut = _last_break(buf, len(buf))
        if cut and (red._idx.multiline or "-----BEGIN" in buf):
            cut = red._line_cut(buf, cut)
        if len(buf) - cut > LINE_CAP:
            cut, spans = red._forced_cut(buf, cut)
            out = red._apply(buf[:cut], spans)
        else:
            out = red.text(buf[:cut])
        if buf[cut:]:
            self._parts, self._size = [buf[cut:]], len(buf) - cut
        if out:
            self._sink(out)

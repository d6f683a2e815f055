"""CLIP's byte-level BPE tokenizer (OpenAI ``simple_tokenizer``) without ftfy, regex or torch.

``tok = Tokenizer.from_file(path)`` reads a merges file in OpenAI's format (gzip or plain
text: a header line, then one ``a b`` merge per line; e.g. ``bpe_simple_vocab_16e6.txt.gz``)
or a folder holding one. The vocabulary is 256 byte symbols + their 256 ``</w>`` forms + one
token per merge + ``<|startoftext|>`` + ``<|endoftext|>``, so ``vocab_size`` follows from
the file: 49408 for OpenAI's (which, like the reference, reads at most ``MAX_MERGES`` =
48894 merges), fewer for a small project-made file. ``tok.encode(text)`` -> ids;
``tok(texts, context_length=77)`` -> ``int32 [N, L]`` with SOT/EOT, zero padded.

Differences from the reference, all outside the golden test texts:

- ``ftfy.fix_text`` is replaced by :func:`fix_text`, the subset of ftfy's default fixes that
  needs no statistics: HTML entities (HTML5 ``&name;``, their all-caps forms, numeric ones;
  not from the first line containing ``<`` on), C1 controls read as cp1252, Latin ligatures,
  half/fullwidth forms, curly quotes, terminal escapes, control characters and NFC, line by
  line to a fixed point as ftfy does. Not reproduced: mojibake repair (``fix_encoding``:
  ``"cafÃ©"`` stays as is instead of becoming ``"café"``) and surrogate-pair repair.
- ``\\p{L}`` / ``\\p{N}`` of the ``regex`` package become explicit character classes built
  from :mod:`unicodedata` (categories L* / N*) for stdlib :mod:`re`, and ``\\s`` becomes the
  Unicode White_Space set (stdlib ``\\s`` would also match U+001C..U+001F). Characters
  assigned after this Python's Unicode version (14.0 on Python 3.11) are not letters or
  digits here; the ``regex`` package knows newer Unicode versions. U+0345 is dropped, as the
  reference's case-insensitive ``regex`` match does.

Checked against the reference (ftfy 6.3.1, regex 2026.11.15) on 3028 mixed-script texts: all
ids equal except for texts with mojibake or characters newer than Unicode 14.
"""

from __future__ import annotations

import functools
import gzip
import html
import html.entities
import re
import unicodedata
from pathlib import Path

import numpy as np

from jaxedit.errors import InputError

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_MERGES = 49152 - 256 - 2  # the reference reads lines 1..48894 of its merges file
MERGES_MAX_BYTES = 64 << 20  # what a merges file may hold (inflated): OpenAI's is a few MiB
SOT, EOT = "<|startoftext|>", "<|endoftext|>"

# Unicode White_Space (what the regex package's \s matches)
_WS = "\t\n\x0b\x0c\r \x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
_WS_RE = re.compile(f"[{_WS}]+")


class TokenizerError(InputError):
    """A merges file cannot be read, or a text does not fit; the message names the file or text."""


# ------------------------------------------------------------------------------ text cleaning
_ENTITY_RE = re.compile(r"&#?[0-9A-Za-z]{1,24};")
_ANSI_RE = re.compile("\x1b\\[((?:\\d|;)*)([a-zA-Z])")
_LIGATURES = {"Ĳ": "IJ", "ĳ": "ij", "ŉ": "ʼn", "Ǳ": "DZ", "ǲ": "Dz", "ǳ": "dz", "Ǆ": "DŽ", "ǅ": "Dž",
              "ǆ": "dž", "Ǉ": "LJ", "ǈ": "Lj", "ǉ": "lj", "Ǌ": "NJ", "ǋ": "Nj", "ǌ": "nj", "ﬀ": "ff",
              "ﬁ": "fi", "ﬂ": "fl", "ﬃ": "ffi", "ﬄ": "ffl", "ﬅ": "ſt", "ﬆ": "st"}
_QUOTES = {**{c: "'" for c in "\u02bc\u2018\u2019\u201a\u201b"}, **{c: '"' for c in "\u201c\u201d\u201e\u201f"}}
_C1 = {b: bytes([b]).decode("cp1252", errors="ignore") or chr(b) for b in range(0x80, 0xA0)}  # "sloppy" cp1252
_CONTROLS = [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
             *range(0xFFF9, 0xFFFD)]


@functools.lru_cache(None)
def _tables() -> tuple[dict, dict, dict, dict]:
    widths = {0x3000: " "}
    for i in range(0xFF01, 0xFFF0):
        alt = unicodedata.normalize("NFKC", chr(i))
        if alt != chr(i):
            widths[i] = alt
    return (_C1, str.maketrans({**_LIGATURES, **{chr(k): v for k, v in widths.items()}}), str.maketrans(_QUOTES),
            dict.fromkeys(_CONTROLS))


def _entity(m: re.Match) -> str:
    t = m.group()
    name = t[1:]
    if name in html.entities.html5:
        return html.entities.html5[name]
    if name == name.lower().upper() and name.lower() in html.entities.html5 and html.unescape(t) == t:
        return html.entities.html5[name.lower()].upper()  # all-caps names of lower-case entities (ftfy)
    if t[1] != "#":
        return t
    s = html.unescape(t)
    return t if ";" in s else s


def _fix_segment(text: str, unescape: bool) -> str:
    c1, shapes, quotes, controls = _tables()
    while True:
        before = text
        if unescape:
            text = _ENTITY_RE.sub(_entity, text)
        text = text.translate(c1).translate(shapes).translate(quotes)
        text = _ANSI_RE.sub("", text).translate(controls)
        text = unicodedata.normalize("NFC", text)
        if text == before:
            return text


def fix_text(text: str) -> str:
    """The statistics-free part of ``ftfy.fix_text`` (see the module docstring): line by line, each
    line to a fixed point; entities are left alone from the first line containing ``<`` on."""
    out, unescape = [], True
    for line in re.findall(r"[^\n]*\n|[^\n]+", text):
        unescape = unescape and "<" not in line
        out.append(_fix_segment(line, unescape))
    return "".join(out)


def clean(text: str) -> str:
    """The reference's text cleaning: fix_text, html-unescape twice, collapse whitespace, lower-case."""
    text = html.unescape(html.unescape(fix_text(text))).strip()
    return _WS_RE.sub(" ", text).strip().lower()


# ------------------------------------------------------------------------------ pre-tokenization
@functools.lru_cache(None)
def _category_class(major: str) -> str:
    """A ``re`` character-class body of every code point whose Unicode category starts with ``major``."""
    parts, start = [], None
    for cp in range(0x110001):
        inside = cp < 0x110000 and unicodedata.category(chr(cp))[0] == major
        if inside and start is None:
            start = cp
        elif not inside and start is not None:
            a, b = re.escape(chr(start)), re.escape(chr(cp - 1))
            parts.append(a if start == cp - 1 else f"{a}-{b}")
            start = None
    return "".join(parts)


@functools.lru_cache(None)
def _pattern() -> re.Pattern:
    """The reference's split: special tokens, English contractions, letter runs, single digits, other runs."""
    L, N = _category_class("L"), _category_class("N")
    return re.compile(rf"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[{L}]+|[{N}]|[^{_WS}{L}{N}]+",
                      re.IGNORECASE)


@functools.lru_cache(None)
def byte_symbols() -> dict[int, str]:
    """Byte -> printable unicode symbol (printable Latin-1 bytes map to themselves, the rest to U+0100...)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    moved = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + i) for i, b in enumerate(moved)}}


# ------------------------------------------------------------------------------ tokenizer
def find_vocab(path: str | Path) -> Path:
    """``path`` itself if a file; in a folder, ``bpe_simple_vocab_16e6.txt.gz`` or its only ``*.txt.gz``."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise TokenizerError(f"{path}: no such BPE merges file or folder")
    if (path / VOCAB_FILE).is_file():
        return path / VOCAB_FILE
    found = sorted(path.glob("*.txt.gz"))
    if len(found) != 1:
        raise TokenizerError(f"{path}: expected {VOCAB_FILE} or exactly one *.txt.gz merges file, "
                             f"found {[p.name for p in found]}")
    return found[0]


def read_merges(path: str | Path, max_merges: int = MAX_MERGES) -> list[tuple[str, str]]:
    """The merges of an OpenAI-format file (gzip or plain; first line is a header; blank lines ignored)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            raw = (gzip.GzipFile(fileobj=f) if gzipped else f).read(MERGES_MAX_BYTES + 1)  # bounded, even inflated
        if len(raw) > MERGES_MAX_BYTES:
            raise TokenizerError(f"{path}: more than {MERGES_MAX_BYTES >> 20} MiB of merges (not a BPE merges file)")
        text = raw.decode("utf-8")
    except (OSError, EOFError, gzip.BadGzipFile, UnicodeDecodeError) as e:
        raise TokenizerError(f"{path}: not a readable BPE merges file ({type(e).__name__}: {e})") from None
    merges = []
    for i, line in enumerate(text.split("\n")[1:], start=2):
        if len(merges) == max_merges:
            break
        if not line.strip():
            continue
        pair = tuple(line.split())
        if len(pair) != 2:
            raise TokenizerError(f"{path}: line {i} is not a merge 'a b': {line[:60]!r}")
        merges.append(pair)
    if not merges:
        raise TokenizerError(f"{path}: no merges found")
    return merges


class Tokenizer:
    """CLIP's BPE over a merges list; ``sot_token`` / ``eot_token`` are the two last ids."""

    def __init__(self, merges: list[tuple[str, str]]):
        symbols = list(byte_symbols().values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [SOT, EOT]
        self.vocab_size = len(vocab)
        self.encoder = dict(zip(vocab, range(len(vocab))))  # a repeated entry keeps its last id, as the reference
        self.decoder = {i: s for s, i in self.encoder.items()}
        self.ranks = dict(zip(merges, range(len(merges))))
        self.sot_token, self.eot_token = self.encoder[SOT], self.encoder[EOT]
        self._cache: dict[str, tuple[str, ...]] = {SOT: (SOT,), EOT: (EOT,)}

    @classmethod
    def from_file(cls, path: str | Path, max_merges: int = MAX_MERGES) -> "Tokenizer":
        """From a merges file, or a folder holding one (see :func:`find_vocab`)."""
        return cls(read_merges(find_vocab(path), max_merges))

    def bpe(self, word: str) -> tuple[str, ...]:
        """Merge the byte symbols of one pre-token (its last symbol marked ``</w>``) by merge rank."""
        if word in self._cache:
            return self._cache[word]
        sym = (*word[:-1], word[-1] + "</w>")
        while len(sym) > 1:
            pair = min(zip(sym, sym[1:]), key=lambda p: self.ranks.get(p, len(self.ranks)))
            if pair not in self.ranks:
                break
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and (sym[i], sym[i + 1]) == pair:
                    out.append(sym[i] + sym[i + 1])
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            sym = tuple(out)
        self._cache[word] = sym
        return sym

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (without SOT/EOT)."""
        table = byte_symbols()
        ids = []
        # U+0345 (a combining mark, case-equivalent to iota) matches no branch of the reference's
        # case-insensitive regex-package pattern, so it splits words and is dropped: a space does both.
        for piece in _pattern().findall(clean(text).replace("\u0345", " ")):
            ids.extend(self.encoder[s] for s in self.bpe("".join(table[b] for b in piece.encode("utf-8"))))
        return ids

    def decode(self, ids) -> str:
        """Text of token ids, as the reference: ``</w>`` becomes a space, SOT/EOT appear by name."""
        try:
            symbols = "".join(self.decoder[int(i)] for i in ids)
        except KeyError as e:
            raise TokenizerError(f"token id {e.args[0]} is outside the vocabulary of {self.vocab_size}") from None
        inverse = {s: b for b, s in byte_symbols().items()}
        return bytearray(inverse[c] for c in symbols).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | list[str], context_length: int = 77, truncate: bool = False) -> np.ndarray:
        """``[N, context_length]`` int32: SOT, ids, EOT, zeros. Too long: error, or with ``truncate`` keep the
        first ``context_length`` ids and make the last one EOT (as the reference)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        out = np.zeros((len(texts), context_length), np.int32)
        for i, text in enumerate(texts):
            ids = [self.sot_token, *self.encode(text), self.eot_token]
            if len(ids) > context_length:
                if not truncate:
                    raise TokenizerError(f"text {i} ({text[:40]!r}...) has {len(ids)} tokens with SOT/EOT, more "
                                         f"than the context length {context_length} (pass truncate=True)")
                ids = ids[:context_length]
                ids[-1] = self.eot_token
            out[i, :len(ids)] = ids
        return out

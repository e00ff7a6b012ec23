"""Files into text, text into chunks: the two steps before anything is indexed.

A corpus is whatever a user points at, so every file is distrusted: it may be empty, binary, huge or in a legacy
encoding, and each of those is a clear ``UserError`` naming the file (the store skips it and goes on) rather than
an index full of mojibake. HTML is reduced to its visible text with Markdown ``#`` headings, so that one chunker
serves Markdown and HTML alike. Chunks keep the section they come from (a chunk never spans two headings) and
whole sentences, because a retriever that hands a model half a sentence hands it a wrong fact.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path

from tokenomy.errors import UserError
from tokenomy.kernels.tokens import count_text
from tokenomy.tools.builtin.chunking import sentence_spans, title_of

__all__ = ["Document", "KINDS", "SUFFIXES", "MAX_BYTES", "read_bytes", "parse_document", "read_document",
           "split_chunks"]

KINDS = ("text", "markdown", "html", "pdf")
SUFFIXES = {".txt": "text", ".md": "markdown", ".markdown": "markdown", ".html": "html", ".htm": "html",
            ".pdf": "pdf"}
MAX_BYTES = 20 << 20
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f-\x9f\ufffd]")  # what no text file holds (\f allowed)
_MAX_CONTROL_SHARE = 0.05
_HEADING = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_BLANK = re.compile(r"\n[ \t]*\n")


@dataclass(frozen=True)
class Document:
    """A file read as text: ``kind`` is one of :data:`KINDS`; ``encoding`` the codec its bytes were decoded with."""

    path: Path
    title: str
    text: str
    kind: str
    encoding: str = "utf-8"


def read_bytes(path: str | Path, max_bytes: int = MAX_BYTES) -> bytes:
    """The bytes of ``path``, refusing what is not a regular file or is over ``max_bytes``.

    Raises:
        UserError: the file is missing, not a regular file, unreadable or too big (the message names it).
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if not path.is_file():
            raise UserError(f"{path}: not a regular file")
        if size > max_bytes:
            raise UserError(f"{path}: {size} bytes is more than the {max_bytes} read per file (max_bytes)")
        data = path.read_bytes()
    except OSError as exc:
        raise UserError(f"{path}: cannot read it ({exc.strerror or exc})") from exc
    if len(data) > max_bytes:  # it grew between stat and read
        raise UserError(f"{path}: {len(data)} bytes is more than the {max_bytes} read per file (max_bytes)")
    return data


def read_document(path: str | Path, *, max_bytes: int = MAX_BYTES) -> Document:
    """Read a ``.txt``, ``.md``/``.markdown``, ``.html``/``.htm`` or ``.pdf`` file (PDF needs ``pypdf``).

    Args:
        path: The file.
        max_bytes: Larger files are refused (20 MB by default).

    Raises:
        UserError: an unsupported, missing, empty, binary, huge or undecodable file; the message names it.
    """
    path = Path(path)
    _kind(path)  # an unsupported file is refused before it is read
    return parse_document(path, read_bytes(path, max_bytes))


def parse_document(path: str | Path, data: bytes) -> Document:
    """A :class:`Document` from the bytes ``data`` of the file ``path`` (whose suffix gives the format).

    Raises:
        UserError: as :func:`read_document`.
    """
    path = Path(path)
    kind = _kind(path)
    if not data.strip():
        raise UserError(f"{path}: the file is empty")
    if kind == "pdf":
        text, title, encoding = _pdf_text(path, data), "", "pdf"
    else:
        text, encoding = _decode(path, data)
        title = ""
        if kind == "html":
            parser = _HtmlText()
            parser.feed(text)
            parser.close()
            text, title = parser.result(), parser.title
    text = "\n".join(line.rstrip() for line in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")).strip()
    if not text:
        raise UserError(f"{path}: no text in it (only whitespace{', markup or scripts' if kind == 'html' else ''})")
    if not title:
        title = title_of(text, path.stem) if kind in ("markdown", "html") else title_of("", path.stem)
    return Document(path=path, title=title, text=text, kind=kind, encoding=encoding)


def _kind(path: Path) -> str:
    kind = SUFFIXES.get(path.suffix.lower())
    if kind is None:
        raise UserError(f"{path}: unsupported file type {path.suffix!r} (supported: {', '.join(SUFFIXES)})")
    return kind


def _decode(path: Path, data: bytes) -> tuple[str, str]:
    """Text and codec: UTF-8 (a BOM is dropped; a UTF-16 BOM is honoured), else cp1252 or latin-1 if it reads
    as text; NUL bytes or too many control characters mean a binary file."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ["utf-16"]
    elif b"\x00" in data:
        raise UserError(f"{path}: a binary file (it holds NUL bytes; or UTF-16 text without a BOM), not text")
    else:
        candidates = ["utf-8-sig", "cp1252", "latin-1"]
    for codec in candidates:
        try:
            text = data.decode(codec)
        except UnicodeDecodeError:
            continue
        if len(_CONTROL.findall(text)) <= _MAX_CONTROL_SHARE * len(text):
            return text, "utf-8" if codec == "utf-8-sig" else codec
        break  # decodes, but into control characters: a binary file (later codecs would read it no better)
    raise UserError(f"{path}: not text (a binary file, or an encoding other than UTF-8, cp1252 or latin-1)")


def _pdf_text(path: Path, data: bytes) -> str:
    try:
        import pypdf
    except ImportError:
        raise UserError(f"{path}: reading PDF files needs the optional package pypdf: pip install pypdf") from None
    import io

    try:
        reader = pypdf.PdfReader(io.BytesIO(data))
        pages = [page.extract_text() or "" for page in reader.pages]
    except Exception as exc:  # pypdf raises many types for broken or encrypted files
        raise UserError(f"{path}: cannot read this PDF ({type(exc).__name__}: {exc})") from exc
    text = "\n\n".join(p.strip() for p in pages if p.strip())
    if not text:
        raise UserError(f"{path}: the PDF has no extractable text (a scan needs OCR first)")
    return text


class _HtmlText(HTMLParser):
    """Visible text of an HTML page: headings become ``#`` lines, blocks are separated by blank lines."""

    _DROP = frozenset({"script", "style", "head", "noscript", "template", "svg", "iframe", "object"})
    _BLOCK = frozenset({"p", "div", "br", "li", "ul", "ol", "dl", "dt", "dd", "table", "tr", "section", "article",
                        "aside", "header", "footer", "nav", "main", "blockquote", "pre", "hr", "figure",
                        "figcaption", "form", "address", "details", "summary", "body"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self.current: list[str] = []
        self.drop: list[str] = []
        self.heading = 0
        self.pre = 0
        self.title = ""
        self.in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "body" and "head" in self.drop:  # an unclosed <head>
            self.drop = [t for t in self.drop if t != "head"]
        if tag == "title" and "svg" not in self.drop:
            self.in_title = True
        elif tag in self._DROP:
            self.drop.append(tag)
        elif not self.drop and (tag in self._BLOCK or re.fullmatch(r"h[1-6]", tag)):
            self.flush()
            if tag[0] == "h" and tag[1:].isdigit():
                self.heading = int(tag[1])
            self.pre += tag == "pre"

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self.in_title = False
        elif tag in self._DROP:
            if tag in self.drop:
                del self.drop[len(self.drop) - 1 - self.drop[::-1].index(tag):]
        elif not self.drop and (tag in self._BLOCK or re.fullmatch(r"h[1-6]", tag)):
            self.flush()
            self.pre -= tag == "pre" and self.pre > 0
            if tag[0] == "h" and tag[1:].isdigit():
                self.heading = 0

    def handle_data(self, data: str) -> None:
        if self.in_title:
            self.title = " ".join(f"{self.title} {data}".split())
        elif not self.drop:
            self.current.append(data)

    def flush(self) -> None:
        raw = "".join(self.current)
        self.current = []
        if self.pre and not self.heading:
            lines = [line.rstrip() for line in raw.strip("\n").split("\n")]
        else:
            lines = [" ".join(raw.split())]
        lines = [f"\\{line}" if _HEADING.match(line) or _SETEXT.match(line) else line for line in lines if line]
        if lines and self.heading:
            lines = [f"{'#' * self.heading} {' '.join(lines)}"]
        if lines:
            self.blocks.append("\n".join(lines))
            self.heading = 0

    def result(self) -> str:
        self.flush()
        return "\n\n".join(self.blocks)


def split_chunks(text: str, *, max_tokens: int = 200, overlap_sentences: int = 0,
                 headings: bool = True) -> list[tuple[str, str]]:
    """Cut ``text`` into chunks of at most ``max_tokens`` o200k_base tokens, each within one section.

    Paragraphs are packed greedily; a paragraph that alone is too long is cut between sentences, and a sentence
    that alone is too long between words (a word longer than ``max_tokens``, between characters).

    Args:
        text: Plain text or Markdown (ATX ``#`` and setext headings; ``#`` lines in fenced code are not headings).
        max_tokens: The most tokens of a chunk's text (the heading is not counted: it is stored apart).
        overlap_sentences: Start each chunk after the first of a section with the last this-many sentences of the
            chunk before, as far as they fit.
        headings: ``False`` for plain text: ``#`` lines are then ordinary text.

    Returns:
        ``(heading_path, chunk_text)`` pairs in document order; ``heading_path`` is the headings above the chunk,
        outermost first, joined by `` > `` (empty before the first heading); a chunk's text never holds the
        heading line and is never empty.
    """
    if max_tokens < 1 or overlap_sentences < 0:
        raise UserError(f"split_chunks needs max_tokens >= 1 and overlap_sentences >= 0, got {max_tokens}, "
                        f"{overlap_sentences}")
    out: list[tuple[str, str]] = []
    for heading, body in _sections(text, headings):
        out.extend((heading, chunk) for chunk in _pack(body, max_tokens, overlap_sentences))
    if not out and text.strip() and headings:  # only headings: their titles are the text
        return split_chunks(text, max_tokens=max_tokens, overlap_sentences=overlap_sentences, headings=False)
    return out


def _sections(text: str, headings: bool) -> list[tuple[str, str]]:
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if not headings:
        return [("", "\n".join(lines))]
    sections: list[tuple[str, str]] = []
    stack: list[tuple[int, str]] = []
    body: list[str] = []
    fence = ""

    def close() -> None:
        sections.append((" > ".join(t for _, t in stack if t), "\n".join(body)))
        body.clear()

    for line in lines:
        m = _FENCE.match(line)
        if fence:
            fence = "" if m and m.group(1)[0] == fence[0] and len(m.group(1)) >= len(fence) else fence
        elif m:
            fence = m.group(1)
        elif (h := _HEADING.match(line)) or (
                _SETEXT.match(line) and body and body[-1].strip() and (len(body) < 2 or not body[-2].strip())
                and not _HEADING.match(body[-1])):
            if h:
                level, title = len(h.group(1)), (h.group(2) or "").strip()
            else:
                level, title = (1 if line.strip()[0] == "=" else 2), body.pop().strip()
            close()
            while stack and stack[-1][0] >= level:
                stack.pop()
            stack.append((level, title))
            continue
        body.append(line)
    close()
    return [(h, b) for h, b in sections if b.strip()]


def _pieces(body: str, max_tokens: int) -> list[tuple[str, str]]:
    """``(separator_before, text)`` units that each fit: whole paragraphs, else sentences, else word runs."""
    out: list[tuple[str, str]] = []
    for paragraph in (p.strip() for p in _BLANK.split(body)):
        if not paragraph:
            continue
        if count_text(paragraph) <= max_tokens:
            out.append(("\n\n", paragraph))
            continue
        for i, (sep, sentence) in enumerate(sentence_spans(paragraph)):
            runs = [sentence] if count_text(sentence) <= max_tokens else _cut_words(sentence, max_tokens)
            for j, run in enumerate(runs):
                out.append(("\n\n" if i == j == 0 else sep if j == 0 else " ", run))
    return out


def _cut_words(sentence: str, max_tokens: int) -> list[str]:
    # Runs are sized by the sum of their words' tokens (a word's tokens rarely depend on its neighbours under
    # o200k's pre-tokenizer), then checked once exactly: linear in the sentence, not quadratic.
    queue = deque(w for word in sentence.split() for w in _cut_long(word, max_tokens))
    runs: list[str] = []
    while queue:
        run: list[str] = []
        used = 0
        while queue:
            n = count_text(" " + queue[0])
            if run and used + n > max_tokens:
                break
            used += n
            run.append(queue.popleft())
        text = " ".join(run)
        while len(run) > 1 and count_text(text) > max_tokens:
            queue.appendleft(run.pop())
            text = " ".join(run)
        runs.append(text)
    return runs


def _cut_long(word: str, max_tokens: int) -> list[str]:
    """A "word" longer than ``max_tokens`` (a URL, base64...) cut into the longest prefixes that fit."""
    out = []
    while count_text(word) > max_tokens and len(word) > 1:
        lo, hi = 1, len(word) - 1  # at least one character, so that it always progresses
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if count_text(word[:mid]) <= max_tokens else (lo, mid - 1)
        out.append(word[:lo])
        word = word[lo:]
    return [*out, word]


def _pack(body: str, max_tokens: int, overlap: int) -> list[str]:
    chunks: list[str] = []
    current = ""
    for sep, piece in _pieces(body, max_tokens):
        candidate = f"{current}{sep}{piece}" if current else piece
        if not current or count_text(candidate) <= max_tokens:
            current = candidate
            continue
        chunks.append(current)
        current = piece
        tail = [s for _, s in sentence_spans(chunks[-1])][-overlap:] if overlap else []
        while tail:
            with_tail = f"{' '.join(tail)}{sep}{piece}"
            if count_text(with_tail) <= max_tokens:
                current = with_tail
                break
            tail = tail[1:]
    if current:
        chunks.append(current)
    return chunks

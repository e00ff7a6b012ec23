"""Rule-based triplet extraction over English: ``(subject, relation, object)`` facts from prose, offline.

A knowledge graph needs facts, and a model that extracts them costs tokens and time at ingest. These rules read
the common shapes of English statements ("X is a company founded in 1921 by Y", "The birthplace of X is Y",
"Its mayor is Z", "It has 412 employees", "X works for Y", "X is 120 kilometres long") and fall back on "first
name, the verb between, next name or number" for the rest. Named entities are runs of capitalised words. Free
prose is first rewritten into simple clauses by :mod:`.prose` (pronouns and "the town" resolved, appositions,
relative and subordinate clauses, coordinated verbs and lists taken apart); ``It`` and ``Its`` with nothing
before them stand for the text's main subject (its heading or first name). Deterministic and cheap, so a corpus
is read once at ingest.

Extraction is data handling: corpus text is matched against patterns, never interpreted or executed.
"""

from __future__ import annotations

import re

from tokenomy.tools.builtin.chunking import STOPWORDS, sentences

from .prose import _ADJ_DIM, NUM, Discourse, read_sentence

__all__ = ["extract_triplets", "main_subject"]

# Capitalised words that start a sentence without naming anything.
_NOT_NAMES = frozenset(
    "a an the it its he she his her they their them this that these those i we our you your my there here "
    "in on at for from by with of to and or but if when while after before since because although however "
    "also then thus so yet many some most all every each both no not one what which who whom whose where why "
    "how as is was are were about around over nearly almost some today now every two three four five six seven "
    "eight nine ten not".split())
_TITLES = frozenset("inc ltd co corp dr mr mrs ms prof st jr sr mt ft".split())
_CONNECTORS = frozenset("of de du da del di van von der den la le &".split())
_TOKEN = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|[\w'’]+(?:-[\w'’]+)*|\S")
_NUMBER = re.compile(r"\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?")
_ENT = r"@E\d+@"
_NUM = r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?:\s+(?:hundred|thousand|million|billion|trillion)\b)?"
_BE = r"(?:is|was|are|were|remains|became|has been)"
_PRON = r"(?:it|he|she|they)"
_POSS = r"(?:its|his|her|their)"
_REL = r"(?P<rel>[a-z][a-z' -]{0,40}?)"
_PREPS = r"in|by|on|at|from|of|with|for|near|since"
_UNIT_REL = {"people": "population", "inhabitants": "population", "residents": "population",
             "citizens": "population", "staff": "employees", "workers": "employees"}
_AGENT = {"founded": "founder", "established": "founder", "set up": "founder", "started": "founder", "made": "maker",
          "written": "author", "directed": "director", "built": "builder",
          "designed": "designer", "created": "creator", "owned": "owner", "invented": "inventor",
          "produced": "producer", "published": "publisher", "manufactured": "manufacturer", "led": "leader",
          "developed": "developer", "painted": "painter", "composed": "composer", "discovered": "discoverer"}
_SAME = {"established": "founded", "set up": "founded", "started": "founded"}
"""Participles that say the same: one relation name, so that questions find them alike."""
_PLACE = {"born": "birthplace", "located": "location", "based": "location", "situated": "location",
          "headquartered": "headquarters", "died": "deathplace"}
_PARTICIPLE = re.compile(r"set up|[a-z]+ed|made|born|built|written|known|led|held|founded|grown|run|sold|given|taken|"
                         r"lit|won|seen|begun|shown|drawn|paid|laid|kept|sent|spent|found|hung|struck|chosen|elected")
_CONJ = re.compile(rf"^(?:\s*,\s*(?:and\s+)?|\s+and\s+)({_ENT})")
_NOT_RELATIONS = frozenset("and or but nor then so in on at by of to for from with as".split())
_RELATIVE = re.compile(rf"({_ENT}),\s*(?:which|who)\s+([^,;]+?),\s*")


def _entities(sentence: str) -> list[tuple[int, int]]:
    """Character spans of named entities: runs of capitalised words (joined by ``of``/``de``..., by the dot of an
    initial or of ``Inc.``, and ended by a number, as in ``Zarvo 12``), without the function words that open a
    sentence."""
    toks = [(m.start(), m.end(), m.group()) for m in _TOKEN.finditer(sentence)]
    spans: list[tuple[int, int]] = []
    i = 0

    def cap(j: int) -> bool:
        return j < len(toks) and toks[j][2][:1].isupper() and toks[j][2].lower() not in _NOT_NAMES

    def dot(j: int) -> bool:  # the dot of "J." or "Inc." (not a sentence's end)
        prev = toks[j - 1][2]
        return (toks[j][2] == "." and toks[j][0] == toks[j - 1][1]
                and (len(prev) == 1 or prev.lower() in _TITLES) and prev[:1].isupper())

    while i < len(toks):
        if not cap(i):
            i += 1
            continue
        j = i + 1
        while j < len(toks):
            if cap(j):
                j += 1
            elif toks[j][2].lower() in _CONNECTORS and cap(j + 1):
                j += 2
            elif dot(j):
                j += 1
            else:
                break
        if j < len(toks) and _NUMBER.fullmatch(toks[j][2]) and toks[j][0] == toks[j - 1][1] + 1:
            j += 1  # "Zarvo 12", "Windows 95"
        spans.append((toks[i][0], toks[j - 1][1]))
        i = j
    return spans


def main_subject(text: str, subject_hint: str = "") -> str:
    """What ``It``/``Its`` refer to in ``text``: the hint (a heading; its last `` > `` part; without one, the
    text's own last Markdown heading) when the text names it or no sentence opens with a name; else the first
    name that opens a sentence (else the first name; "" if the text names nothing)."""
    if not subject_hint.strip():  # a Markdown heading inside the chunk serves as well
        headings = re.findall(r"^[ \t]*#+[ \t]*(.+?)[ \t#]*$", str(text), re.M)
        subject_hint = headings[-1] if headings else ""
    hint = subject_hint.split(" > ")[-1].strip().lstrip("#").strip()
    opening, first = "", ""
    for sent in sentences(text):
        spans = _entities(sent)
        if spans and not first:
            first = _name(sent, spans[0])
        if spans and re.fullmatch(r"(?:the\s+)?", sent[:spans[0][0]], re.I):
            opening = _name(sent, spans[0])
            break
    if hint:
        m = re.search(rf"(?<!\w){re.escape(hint)}(?!\w)", " ".join(sentences(text)), re.I)
        if m:
            return m.group()
        if not opening or re.search(rf"(?<!\w){re.escape(opening)}$", hint, re.I):
            return hint  # "The Tamsin rises ..." under the heading "River Tamsin"
    return opening or first


def _name(sentence: str, span: tuple[int, int]) -> str:
    return sentence[span[0]:span[1]].rstrip(".")


def _norm_rel(rel: str) -> str:
    ws = [w for w in rel.lower().replace("'s", "").split() if w]
    while ws and ws[0] in ("the", "a", "an", "its", "his", "her", "their"):
        ws = ws[1:]
    while ws and ws[-1] in ("the", "a", "an"):
        ws = ws[:-1]
    return " ".join(ws)


class _Clause:
    """One clause with its entities replaced by ``@E<i>@`` stand-ins."""

    def __init__(self, text: str, names: list[str], main: str) -> None:
        self.text, self.names, self.main = text, names, main

    def subj(self, token: str) -> str:
        if re.fullmatch(_ENT, token):
            return self.names[int(token[2:-1])]
        return self.main if re.fullmatch(_PRON, token, re.I) else ""

    def obj(self, rest: str, *, unit: bool = True) -> tuple[str, str]:
        """The object at the start of ``rest`` and what follows it: an entity, a number (with its unit), else
        a short lowercase phrase."""
        rest = re.sub(r"^(?:the|a|an)\s+", "", rest.strip(), flags=re.I)
        m = re.match(rf"({_ENT})", rest)
        if m:
            return self.names[int(m.group(1)[2:-1])], rest[m.end():]
        m = re.match(rf"({_NUM})(?:\s+(?!(?:{_PREPS}|and|or|but|the|a|an)\b)([a-z]+))?", rest)
        if m:
            value = m.group(1) + (f" {m.group(2)}" if unit and m.group(2) else "")
            return value, rest[m.end():]
        m = re.match(r"([a-z][a-z' -]*?)\s*(?=,|;|\.|$|\b(?:and|but|which|who|that)\b)", rest)
        if m and m.group(1) and len(m.group(1).split()) <= 6:
            return m.group(1).strip(), rest[m.end():]
        return "", rest


def _modifiers(cl: _Clause, subject: str, tail: str, participle: str = "") -> list[tuple[str, str, str]]:
    """Triplets from the phrases after a predicate: ``founded in 1921 by X``, ``of 412000 people``,
    ``with 40 employees``, ``born in Tormos``."""
    out: list[tuple[str, str, str]] = []
    pat = re.compile(rf"(?:\b(?P<part>{_PARTICIPLE.pattern})\s+)?\b(?P<prep>{_PREPS})\s+(?:the\s+)?"
                     rf"(?P<o>{_ENT}|{_NUM})(?:\s+(?!(?:{_PREPS}|and|or|but|the|a|an)\b)(?P<unit>[a-z]+))?", re.I)
    for m in pat.finditer(tail):
        part = (m.group("part") or participle).lower()
        participle = part or participle
        prep, token, unit = m.group("prep").lower(), m.group("o"), (m.group("unit") or "").lower()
        is_ent = token.startswith("@E")
        value = cl.names[int(token[2:-1])] if is_ent else token
        part = _SAME.get(part, part)
        if prep == "by" and is_ent:
            rel = _AGENT.get(part, f"{part} by".strip())
        elif prep in ("of", "with") and not is_ent and unit and unit not in STOPWORDS:
            rel = _UNIT_REL.get(unit, unit)
        elif not part:
            rel = "located in" if is_ent and prep in ("in", "at", "near") else ""
        elif is_ent and prep in ("in", "at", "near"):
            rel = _PLACE.get(part, f"{part} {prep}")
        elif not is_ent and prep in ("in", "on", "since"):
            rel = part
            if unit and unit not in STOPWORDS and not re.fullmatch(r"\d{4}", token):
                value = f"{token} {unit}"
        else:
            rel = f"{part} {prep}"
        if rel:
            out.append((subject, rel, value))
            rest = tail[m.end():]
            while is_ent and (c := _CONJ.match(rest)):  # "founded by X and Y"
                out.append((subject, rel, cl.names[int(c.group(1)[2:-1])]))
                rest = rest[c.end():]
    return out


def _clause_triplets(cl: _Clause) -> list[tuple[str, str, str]]:
    t = cl.text.strip().rstrip(".!?;:").strip()
    subj_re = rf"(?:the\s+)?(?P<s>{_ENT}|{_PRON})"
    # The <rel> of X is Y
    m = re.match(rf"^(?:the\s+)?{_REL}\s+of\s+(?:the\s+)?(?P<s>{_ENT})\s+{_BE}\s+(?P<rest>.+)$", t, re.I)
    if m:
        o, _ = cl.obj(m.group("rest"))
        return [(cl.subj(m.group("s")), _norm_rel(m.group("rel")), o)] if o else []
    # Its <rel> is Y
    m = re.match(rf"^{_POSS}\s+{_REL}\s+{_BE}\s+(?P<rest>.+)$", t, re.I)
    if m and cl.main:
        o, _ = cl.obj(m.group("rest"))
        return [(cl.main, _norm_rel(m.group("rel")), o)] if o else []
    # X's <rel> is Y
    m = re.match(rf"^(?P<s>{_ENT})['’]s?\s+{_REL}\s+{_BE}\s+(?P<rest>.+)$", t, re.I)
    if m:
        o, _ = cl.obj(m.group("rest"))
        return [(cl.subj(m.group("s")), _norm_rel(m.group("rel")), o)] if o else []
    m = re.match(rf"^{subj_re}\s+(?P<rest>.+)$", t, re.I)
    if not m or not cl.subj(m.group("s")):
        return _fallback(cl, t)
    s, rest = cl.subj(m.group("s")), m.group("rest")
    # X is the <rel> of Y
    m = re.match(rf"^{_BE}\s+(?:the|a|an)\s+{_REL}\s+of\s+(?:the\s+)?(?P<o>{_ENT})", rest, re.I)
    if m and not re.search(r"\b(?:in|on|at|near|between|and|from)\b", m.group("rel")):
        return [(cl.subj(m.group("o")), _norm_rel(m.group("rel")), s)]
    # X is N kilometres long
    m = re.match(rf"^{_BE}\s+(?:about\s+|around\s+)?(?P<n>{_NUM})\s+(?P<unit>[a-z]+)\s+(?P<adj>\w+)", rest, re.I)
    if m and m.group("adj").lower() in _ADJ_DIM:
        return [(s, _ADJ_DIM[m.group("adj").lower()], f"{m.group('n')} {m.group('unit')}")]
    # X has N <noun> / X has a <rel> of Y
    m = re.match(rf"^(?:has|had|have|employs|employed)\s+(?:about\s+|around\s+|over\s+)?(?P<n>{_NUM})\s+"
                 r"(?P<noun>[a-z]+(?:\s+[a-z]+)?)", rest, re.I)
    if m:
        noun = m.group("noun").split()
        noun = noun[:1] if len(noun) > 1 and noun[1] in STOPWORDS | {"in", "on", "at"} else noun
        rel = " ".join(noun).lower()
        rel = "employees" if rest.lower().startswith("employ") else _UNIT_REL.get(rel, rel)
        return [(s, rel, m.group("n"))]
    m = re.match(rf"^(?:has|had|have)\s+(?:a|an)\s+{_REL}\s+of\s+(?P<rest>.+)$", rest, re.I)
    if m:
        o, _ = cl.obj(m.group("rest"))
        return [(s, _norm_rel(m.group("rel")), o)] if o else []
    # X is a <noun> <modifiers>
    m = re.match(rf"^{_BE}\s+(?:a|an)\s+(?P<np>[a-z][\w-]*(?:\s+[a-z][\w-]*)*?)(?=\s+(?:{_PREPS}|that|which|who|"
                 rf"{_PARTICIPLE.pattern})\b|$)(?P<tail>.*)$", rest, re.I)
    if m:
        return [(s, "is a", m.group("np").strip().lower()), *_modifiers(cl, s, m.group("tail"))]
    # X was born in Y / X was founded in 1921 by Y
    m = re.match(rf"^(?:{_BE}|had been)\s+(?:also\s+)?(?P<part>{_PARTICIPLE.pattern})\b(?P<tail>.*)$", rest, re.I)
    if m:
        return _modifiers(cl, s, m.group("tail"), m.group("part").lower())
    # X is Y / X is 42 crowns
    m = re.match(rf"^{_BE}\s+(?P<rest>(?:the\s+)?(?:{_ENT}|{_NUM}).*)$", rest, re.I)
    if m:
        o, _ = cl.obj(m.group("rest"))
        return [(s, "is", o)] if o else []
    # X <verb phrase> Y: "works for", "lives in", "flows through"
    m = re.match(rf"^(?P<verb>(?:[a-z][\w'-]*\s+){{1,5}}?)(?:the\s+)?(?P<o>{_ENT}|{_NUM})(?P<tail>.*)$", rest, re.I)
    if m and not re.search(r"[,;]", m.group("verb")):
        verb = _norm_rel(m.group("verb"))
        o = cl.obj(m.group("o"))[0]
        if verb:
            part = verb.split()[0] if _PARTICIPLE.fullmatch(verb.split()[0]) else ""
            return [(s, verb, o), *_modifiers(cl, s, m.group("tail"), part)]
    return _fallback(cl, t)


def _fallback(cl: _Clause, t: str) -> list[tuple[str, str, str]]:
    """The first entity, the words up to the next entity or number, and that: a loose but general reading."""
    m = re.search(rf"(?P<s>{_ENT})\s+(?P<verb>(?:[a-z][\w'-]*\s+){{1,6}}?)(?:the\s+)?(?P<o>{_ENT}|{_NUM})", t)
    if not m:
        return []
    verb = _norm_rel(m.group("verb"))
    return [(cl.subj(m.group("s")), verb, cl.obj(m.group("o"))[0])] if verb else []


def extract_triplets(text: str, *, subject_hint: str = "") -> list[tuple[str, str, str, str]]:
    """Rule-based ``(subject, relation, object, sentence)`` triplets of English text.

    Named entities are runs of capitalised words (``River Tal``, ``Kelmar Works``, ``Zarvo 12``); objects are
    entities, numbers (with their unit) or short phrases. ``It``/``Its``/``He``/``His`` stand for the text's main
    subject (see :func:`main_subject`). Relations are lowercase phrases: ``founder``, ``founded``,
    ``birthplace``, ``headquarters city``, ``works for``, ``employees``, ``length``, ``is a`` ...

    Args:
        text: a chunk of prose (Markdown headings are skipped).
        subject_hint: the chunk's heading, if any: what pronouns refer to when the text names it.

    Returns:
        Distinct triplets in text order; ``sentence`` is the sentence that states each. Never raises on odd
        input: text with nothing recognisable gives ``[]``.
    """
    try:
        return _extract(str(text or ""), str(subject_hint or ""))
    except (re.error, IndexError, ValueError, RecursionError):  # pragma: no cover - defensive
        return []


def _extract(text: str, subject_hint: str) -> list[tuple[str, str, str, str]]:
    main = main_subject(text, subject_hint)
    sents = sentences(text)
    doc = Discourse(main, kind=_kind(main, sents))
    out: dict[tuple[str, str, str], tuple[str, str, str, str]] = {}

    def keep(s: str, r: str, o: str, sent: str) -> None:
        s, r, o = s.strip(), " ".join(r.split()), o.strip().rstrip(".,;:")
        if s and r and o and s.lower() != o.lower() and not set(r.split()) <= _NOT_RELATIONS:
            out.setdefault((s.lower(), r, o.lower()), (s, r, o, sent))

    for sent in sents:
        spans = _entities(sent)
        doc.names.update(_name(sent, sp) for sp in spans if " " in _name(sent, sp))
    for sent in sents:
        if len(sent) > 2000:
            continue
        spans = _entities(sent)
        safe = sent.replace("@", "\uff20")  # the text's own "@E0@" cannot pose as a stand-in
        names: list[str] = []
        marked: list[str] = []
        last = 0
        for a, b in spans:
            marked += [safe[last:a], f"@E{len(names)}@"]
            names.append(doc.canonical(_name(sent, (a, b))))
            last = b
        marked.append(safe[last:])
        clauses, facts = read_sentence("".join(marked), names, doc)
        for s, r, o in facts:
            if r:
                keep(s, r, o, sent)
            else:  # a participle apposition: "X, born in 1574 in Y,"
                for s2, r2, o2 in _modifiers(_Clause(o, names, main), s, " " + o):
                    keep(s2, r2, o2, sent)
        for clause, prefix in clauses:
            subject = names[int(clause[2:clause.index("@", 2)])] if re.match(_ENT, clause) else doc.thing()
            cl = _Clause(clause, names, subject)
            found = _clause_triplets(cl) + _extra(cl, subject)
            for s, r, o in found:
                keep(s, f"{prefix} {r}" if prefix and s == main else r, o, sent)
    return list(out.values())


def _kind(main: str, sents: list[str]) -> str:
    """The noun the text calls its main subject by: ``town`` for "Arlen Falls is a mill town"."""
    for sent in sents:
        m = re.match(rf"^(?:the\s+)?{re.escape(main)}(?:,[^,]*,)?\s+{_BE}\s+(?:a|an)\s+((?:[a-z]+\s+){{0,3}}?)"
                     r"([a-z]+)\b(?=\s+(?:of|in|on|at|between|with|that|which|founded|from|near)\b|[,.;]|$)", sent)
        if m and main:
            return m.group(2)
    words = main.lower().split()
    return words[0] if len(words) > 1 and words[0] in ("river", "mount", "lake", "port") else ""


def _extra(cl: _Clause, subject: str) -> list[tuple[str, str, str]]:
    """Facts the clause patterns leave: ``N people live there``, ``its head office in Y``, ``her death in 1921``,
    ``an area of N``, ``a waterfall that drops 27 metres``, and a list of objects (``makes rails, girders and
    towers``)."""
    t, out = cl.text, []
    m = re.search(rf"({_NUM})\s+(?:people|inhabitants|residents|citizens)\s+(?:still\s+)?live\s+"
                  rf"(?:in\s+(?:the\s+)?({_ENT})|there|here)", t)
    if m:
        out.append((cl.subj(m.group(2)) if m.group(2) else subject, "population", m.group(1)))
    for m in re.finditer(rf"({_ENT})['’]s\s+((?:[a-z]+\s+){{0,2}}?[a-z]+)\s+(?:in|at|of)\s+(?:the\s+)?"
                         rf"({_ENT}|\d{{4}}\b)", t):
        out.append((cl.subj(m.group(1)), m.group(2), cl.obj(m.group(3))[0]))
    for m in re.finditer(rf"(?<!\bis )(?<!\bwas )\b(?:a|an)\s+([a-z]+)\s+of\s+({NUM})", t):  # "drains an area of N"
        out.append((subject, m.group(1), m.group(2)))
    for m in re.finditer(rf"\b(?:a|an|the)\s+([a-z]+)\s+(?:that|which)\s+([a-z]+)\s+({NUM})", t):
        out.append((subject, f"{m.group(1)} {m.group(2)}", m.group(3)))
    # "the clock tower on the market square, 52 metres tall"
    for m in re.finditer(rf"\b[Tt]he\s+((?:[a-z]+\s+)?[a-z]+)(?:\s+(?:on|in|at|of)\s+(?:the\s+)?[a-z]+"
                         rf"(?:\s+[a-z]+)?)?,?"
                         rf"\s+({_NUM}\s+[a-z]+)\s+({'|'.join(_ADJ_DIM)})\b", t):
        out.append((subject, f"{m.group(1)} {_ADJ_DIM[m.group(3)]}", m.group(2)))
    # "a harbour town on the Salt Coast of Veradel", "a mill town in the hills of Veradel"
    for m in re.finditer(rf"\b(?:in|on|at|near)\s+(?:the\s+)?(?:{_ENT}|(?:[a-z]+\s+){{1,2}})\s*of\s+(?:the\s+)?"
                         rf"({_ENT})", t):
        out.append((subject, "located in", cl.names[int(m.group(1)[2:-1])]))
    for m in re.finditer(rf"\b(?:in|on|at|near)\s+(?:the\s+)?({_ENT})", t):  # "on the Salt Coast of Veradel"
        name = cl.names[int(m.group(1)[2:-1])]
        if " of " in name and name.rsplit(" of ", 1)[1][:1].isupper():
            out.append((subject, "located in", name.rsplit(" of ", 1)[1]))
    for m in re.finditer(r"\b(\d{1,3}(?:,\d{3})+|\d+)\s+(square\s+[a-z]+)", t):  # a square measure is an area
        out.append((subject, "area", f"{m.group(1)} {m.group(2)}"))
    m = re.match(rf"^{_ENT}\s+(?:still\s+)?([a-z]+s)\s+((?:[a-z][a-z ]*?,\s+)+[a-z][a-z ]*?(?:,)?\s+and\s+"
                 r"[a-z][a-z ]*?)(?=,|\.|$)", t)
    if m:
        for item in re.split(r",\s+(?:and\s+)?|\s+and\s+", m.group(2)):
            if item.strip():
                out.append((subject, m.group(1), item.strip()))
    return out

"""Reading one value out of prose: attribute families, subjects that pronouns stand for, value spans.

``lookup(entity, attribute)`` over free text cannot expect the attribute's name in the sentence: a population is
given as "12,900 inhabitants", a founder as "set up in 1868 by Benedikt Voss", a height as "52 metres tall".
``FAMILIES`` is the data that bridges them (extend it, or pass your own, to teach lookup new wordings): each family
names an attribute, the words prose uses for it, and the kind of value it has (a year, a quantity with its unit, or
a name). ``find_value`` scores every sentence about the entity (one that names it, or any sentence of the entity's
own file, where "It", "She" and "The town" stand for the file's subject) by how many of the attribute's words it
has, then takes the value of the wanted kind nearest to the attribute's word, in the same clause if it can.

Text is data here: it is split and matched, never interpreted.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .calculator import UNITS
from .chunking import STOPWORDS, same_word, sentences

__all__ = ["Family", "FAMILIES", "UNIT_WORDS", "Found", "attribute_groups", "find_value", "mentioned_families",
           "family_words", "names_about", "is_a", "resolve_attribute", "attribute_words"]

YEAR, QUANTITY, NAME, ANY = "year", "quantity", "name", "any"


@dataclass(frozen=True)
class Family:
    """An attribute and the words prose uses for it.

    Attributes:
        name: the attribute's usual name ("founder").
        cues: words and phrases that state it ("founded by", "set up"); the name counts as one.
        kind: the value it has: ``"year"``, ``"quantity"`` (a number, with its unit), ``"name"`` (a person or
            place) or ``"any"``.
    """

    name: str
    cues: tuple[str, ...]
    kind: str


FAMILIES: tuple[Family, ...] = (
    Family("founded", ("founding", "established", "set up", "incorporated", "started", "built", "settled"), YEAR),
    Family("founder", ("founded", "established", "set up", "started", "built", "founders", "creator", "founded by",
                       "established by", "set up by", "started by", "built by", "created by"), NAME),
    Family("born", ("birth", "birthday"), YEAR),
    Family("birthplace", ("born", "native", "place of birth", "birth place", "hometown"), NAME),
    Family("died", ("death", "dies", "dead"), YEAR),
    Family("population", ("inhabitants", "people", "residents", "citizens", "live", "lives", "populated"), QUANTITY),
    Family("capital", ("main town", "seat", "chief town"), NAME),
    Family("length", ("long", "stretches", "runs"), QUANTITY),
    Family("height", ("tall", "high", "drops", "elevation", "altitude"), QUANTITY),
    Family("area", ("covers", "square", "size"), QUANTITY),
    Family("distance", ("apart", "away", "far", "offshore", "downstream", "upstream", "distant"), QUANTITY),
    Family("duration", ("time", "takes", "lasts", "minutes", "hours", "journey"), QUANTITY),
    Family("employees", ("employs", "workers", "staff", "workforce"), QUANTITY),
    Family("students", ("pupils", "enrolled"), QUANTITY),
    Family("employer", ("works for", "employed by"), NAME),
    Family("maker", ("made by", "manufacturer", "producer", "makes"), NAME),
    Family("mayor", ("mayors",), NAME),
    Family("governor", ("governs",), NAME),
    Family("ceo", ("chief executive", "director", "leads", "led by"), NAME),
    Family("headquarters", ("head office", "based", "hq", "seat"), NAME),
    Family("province", ("region", "county", "state", "district"), NAME),
    Family("source", ("rises", "springs", "spring"), NAME),
    Family("mouth", ("reaches", "enters", "meets", "flows into"), NAME),
    Family("spouse", ("married", "husband", "wife"), NAME),
    Family("completed", ("finished", "built", "opened", "lit", "inaugurated"), YEAR),
    Family("elected", ("election", "chosen"), YEAR),
    Family("charter", ("chartered",), YEAR),
)
# Words that only say what kind of value is wanted ("the year the mayor was elected", "how many").
_KIND_WORDS = {"year": YEAR, "date": YEAR, "when": YEAR, "number": QUANTITY, "count": QUANTITY, "many": QUANTITY,
               "much": QUANTITY, "who": NAME, "name": NAME, "where": NAME, "whom": NAME, "place": NAME}

# Units a quantity keeps (calc knows them all); counted nouns ("12,900 inhabitants") are left out of a value.
UNIT_WORDS = tuple(u for u, (dimension, _) in UNITS.items() if dimension)
_UNIT = "|".join(re.escape(u) for u in sorted(UNIT_WORDS, key=len, reverse=True))
_TOKEN = re.compile(rf"(?P<num>\d{{1,3}}(?:,\d{{3}})+(?:\.\d+)?|\d+(?:\.\d+)?)(?:\s(?P<unit>{_UNIT})(?![\w²]))?"
                    r"|(?P<word>[^\W\d]+(?:['’-][^\W\d]+)*)|(?P<punct>[,;:()])")
_YEAR = re.compile(r"1\d{3}|20\d{2}")
_CONNECTORS = {"of", "de", "van", "von", "upon", "on"}  # inside a name: "University of Brennock"
# Capitalised words that begin sentences but name nothing.
_NOT_NAMES = STOPWORDS | {"he", "she", "his", "her", "they", "them", "we", "you", "i", "today", "every", "not",
                          "before", "after", "since", "about", "most", "some", "many", "one", "two", "three",
                          "four", "five", "its", "but", "although", "while", "once", "also", "there", "here"}
_PRONOUNS = {"he", "she"}
_RELATIVE = {"who", "whose", "which"}


@dataclass(frozen=True)
class _Tok:
    text: str
    kind: str  # "num", "word", "punct"
    unit: str = ""


@dataclass(frozen=True)
class Group:
    """One word (or phrase) of the attribute, with the cues that count as it."""

    cues: tuple[tuple[str, ...], ...]
    family: Family | None


@dataclass(frozen=True)
class Found:
    value: str
    path: str
    n: int


_SMALL = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
          "seventeen eighteen nineteen").split()
_TENS = "twenty thirty forty fifty sixty seventy eighty ninety".split()
NUMBER_WORDS = {w: i for i, w in enumerate(_SMALL)} | {w: 20 + 10 * i for i, w in enumerate(_TENS)}
_SPELLED = re.compile(rf"\b(?P<n>(?:{'|'.join(_TENS)})(?:-(?:{'|'.join(_SMALL[1:10])}))?|{'|'.join(_SMALL)})"
                      rf"(?=\s(?:{_UNIT})\b)", re.IGNORECASE)
_LIFESPAN = re.compile(r"\((1\d{3}|20\d{2})\s*[-–]\s*(1\d{3}|20\d{2})\)")


def _spelled(m: re.Match[str]) -> str:
    head, _, unit = m.group("n").lower().partition("-")
    return str(NUMBER_WORDS[head] + (NUMBER_WORDS[unit] if unit else 0))


def _tokens(sentence: str) -> list[_Tok]:
    # "ninety minutes" is a quantity; "three things" is not (only a number word before a unit is read);
    # "Corvin Halvane (1931 - 2008)" says when he was born and died.
    sentence = _LIFESPAN.sub(r"(born \1, died \2)", _SPELLED.sub(_spelled, sentence))
    out = []
    for m in _TOKEN.finditer(sentence):
        if m.group("num"):
            out.append(_Tok(m.group("num"), "num", m.group("unit") or ""))
        elif m.group("word"):
            out.append(_Tok(m.group("word"), "word"))
        else:
            out.append(_Tok(m.group("punct"), "punct"))
    return out


def _family(word: str, families: Sequence[Family]) -> Family | None:
    for f in families:  # an attribute's own name first: "born" is the year, not the place
        if word == f.name:
            return f
    for f in families:
        if word in f.cues:
            return f
    return None


_CAMEL = re.compile(r"(?<=[a-z0-9])(?=[A-Z])")


def attribute_words(attribute: str) -> list[str]:
    """An attribute's words as a person would write them: models write ``founding_year``, ``birthYear`` and
    ``head-office`` for "founding year", "birth year" and "head office"."""
    return re.findall(r"[^\W_]+", _CAMEL.sub(" ", attribute).lower())


def attribute_groups(attribute: str, entity: str,
                     families: Sequence[Family] = FAMILIES) -> tuple[list[Group], str]:
    """The attribute's words as groups of cues, and the kind of value wanted."""
    ent = {w.lower() for w in re.findall(r"\w+", entity)}
    said = attribute_words(attribute)
    text = " ".join(w for w in said if w not in ent)
    groups: list[Group] = []
    kind = ""
    # Phrases first, the longest first ("founded by" before "founded", "set up by" before "set up"), so that
    # their words are not read alone.
    phrases = sorted(((c, f) for f in families for c in f.cues if " " in c), key=lambda cf: -len(cf[0].split()))
    for cue, f in phrases:
        phrase = rf"\b{re.escape(cue)}\b"
        if re.search(phrase, text):
            text = re.sub(phrase, " ", text)
            groups.append(Group(_cue_tuple(f), f))
            kind = f.kind
    for word in text.split():
        if word in _KIND_WORDS:
            kind = kind or _KIND_WORDS[word]
            continue
        if word in STOPWORDS:
            continue
        fam = _family(word, families)
        if fam is not None:
            groups.append(Group(_cue_tuple(fam), fam))
            kind = fam.kind if fam.kind != ANY else kind
        else:
            groups.append(Group(((word,),), None))
    if "year" in said or "when" in said:
        kind = YEAR
    return groups, kind or ANY


def resolve_attribute(attribute: str, fields: Iterable[str], families: Sequence[Family] = FAMILIES) -> str | None:
    """The one field of a record (a table's columns, a JSON object's keys) that ``attribute`` means, or None when
    none or several do: "birth year" is ``born``, "founding year" ``founded``, "number of employees"
    ``employees``, "main product" ``product``. A field named as it is wins; then the attribute's words, each by its
    family's name or as a field's own word ("products" is ``product``)."""
    names = {f.lower(): f for f in fields}
    key = "_".join(attribute_words(attribute))
    if key in names:
        return names[key]
    groups, _ = attribute_groups(attribute, "", families)
    found: list[str] = []
    for g in groups:
        words = [g.family.name] if g.family is not None else [" ".join(c) for c in g.cues]
        for w in words:
            exact = w.replace(" ", "_")
            hit = names.get(exact) or next((names[n] for n in names if same_word(n, w)), None)
            if hit is not None and hit not in found:
                found.append(hit)
    return found[0] if len(found) == 1 else None


def _cue_tuple(f: Family) -> tuple[tuple[str, ...], ...]:
    return tuple(tuple(c.split()) for c in (f.name, *f.cues))


def _match_at(words: list[str], i: int, cue: tuple[str, ...]) -> bool:
    if i + len(cue) > len(words):
        return False
    if len(cue) == 1:
        return same_word(cue[0], words[i])
    return all(words[i + k] == cue[k] for k in range(len(cue)))


def _group_hits(group: Group, words: list[str]) -> list[int]:
    # A phrase is anchored at its last word: the value follows "chief executive", not "chief".
    return [i + len(c) - 1 for i in range(len(words)) for c in group.cues if _match_at(words, i, c)]


def _names(toks: list[_Tok], known: set[str]) -> list[tuple[int, int, str]]:
    """Proper-noun spans ``(start, end, text)``: capitalised words, joined by "of" and the like."""
    spans = []
    i = 0
    while i < len(toks):
        t = toks[i]
        if t.kind == "word" and t.text[0].isupper() and t.text.lower() not in _NOT_NAMES:
            first = i == 0 or toks[i - 1].text in "(:"
            j = i + 1
            while j < len(toks):
                if toks[j].kind == "word" and toks[j].text[0].isupper():
                    j += 1
                elif (toks[j].text in _CONNECTORS and j + 1 < len(toks) and toks[j + 1].kind == "word"
                      and toks[j + 1].text[0].isupper() and toks[j + 1].text.lower() not in _NOT_NAMES):
                    j += 2
                else:
                    break
            # A sentence's first word is capitalised anyway: a name only if it is known or goes on.
            if not first or j - i > 1 or t.text.lower() in known:
                spans.append((i, j, " ".join(x.text for x in toks[i:j])))
            i = j
        else:
            i += 1
    return spans


def _values(toks: list[_Tok], kind: str, known: set[str], subject: str) -> list[tuple[int, int, str]]:
    out: list[tuple[int, int, str]] = []
    for i, t in enumerate(toks):
        if t.kind != "num":
            continue
        is_year = bool(_YEAR.fullmatch(t.text)) and not t.unit
        if kind in (YEAR, ANY) and is_year:
            out.append((i, i + 1, t.text))
        elif kind in (QUANTITY, ANY) and not is_year:
            out.append((i, i + 1, f"{t.text} {t.unit}" if t.unit else t.text))
    if kind in (NAME, ANY):
        out += _names(toks, known)
        if subject:  # "she founded ..." gives the file's subject
            out += [(i, i + 1, subject) for i, t in enumerate(toks) if t.text.lower() in _PRONOUNS]
    return out


def _cost(span: tuple[int, int, str], at: int, toks: list[_Tok]) -> float:
    """Tokens between the value and the attribute's word; a clause boundary costs 4 (1 where a relative pronoun
    opens it, "X, who ..."), a value before it 1.5x."""
    start, end, _ = span
    if start <= at < end:
        return 0.0
    lo, hi = (end, at) if end <= at else (at + 1, start)
    between = toks[lo:hi]
    cost = sum(4 if t.kind == "punct" else 1 for t in between) + 1
    if len(between) > 1 and between[0].text == "," and between[1].text.lower() in _RELATIVE:
        cost -= 3  # "Mira Holt, who founded ...": the comma opens a clause about the name, not another
    return cost * 1.5 if end <= at else cost


@dataclass(frozen=True)
class Passage:
    """A paragraph to read: its file, number, the file's title, and whether the title is the entity."""

    path: str
    n: int
    title: str
    text: str
    own: bool


def _mentions(words: list[str], entity: list[str]) -> list[tuple[int, int]]:
    k = len(entity)
    return [(i, i + k) for i in range(len(words) - k + 1) if words[i:i + k] == entity]


def about(passage: Passage, sentence: str, entity: list[str]) -> bool:
    """Does ``sentence`` speak of the entity: it names it, or it is in the entity's own file."""
    return passage.own or bool(_mentions([t.text.lower() for t in _tokens(sentence)], entity))


def find_value(passages: Iterable[Passage], entity: str, attribute: str, *, known: set[str],
               families: Sequence[Family] = FAMILIES) -> Found | None:
    """The best value of ``attribute`` of ``entity`` in ``passages`` (see the module docstring), or ``None``."""
    groups, kind = attribute_groups(attribute, entity, families)
    if not groups:
        return None
    ent = [w.lower() for w in re.findall(r"\w+", entity)]
    said = [w for w in attribute_words(attribute) if w not in STOPWORDS and w not in ent]
    need_family = any(g.family for g in groups)
    best: tuple[tuple[int, float], Found] | None = None
    for p in passages:
        subject = p.title if not p.own else ""
        for sentence in sentences(p.text):
            toks = _tokens(sentence)
            words = [t.text.lower() for t in toks]
            mentions = _mentions(words, ent)
            if not (p.own or mentions):
                continue
            hits = [(g, _group_hits(g, words)) for g in groups]
            matched = [(g, h) for g, h in hits if h]
            if not matched or (need_family and not any(g.family for g, _ in matched)):
                continue
            anchors = [i for g, h in matched if g.family or not need_family for i in h]
            literal = {i for i, w in enumerate(words) if any(same_word(a, w) for a in said)}
            inside = {i for a, b in mentions for i in range(a, b)}
            itself = set(ent) | (set(re.findall(r"\w+", p.title.lower())) if p.own else set())
            cue_words = {words[i] for i in anchors}
            spans = [s for s in _values(toks, kind, known, subject) if not inside.intersection(range(s[0], s[1]))
                     and not set(re.findall(r"\w+", s[2].lower())) <= itself | cue_words]
            if not spans:
                continue
            # A verb with the entity as its object ("Hadrian Sollis, who later founded Brannock, was born at
            # Sallowford") has its value, the one who did it, before it: not the name after the object.
            objects = {a for a in anchors if kind == NAME and any(m == a + 1 for m, _ in mentions)}
            # The attribute's own word ("population") says it more surely than a synonym ("people").
            costs = [(max(0.0, _cost(s, a, toks) - 1.5 * (a in literal)), s, a) for s in spans for a in anchors
                     if a not in objects or s[1] <= a]
            if not costs:
                continue
            cost, span, anchor = min(costs)
            if not p.own:  # the entity's own file speaks of it more surely than a passing mention elsewhere,
                names = _names(toks, known)  # and a sentence that begins with another name is about that one,
                cost += 3 if anchor in objects or names and names[0][0] in inside else 8  # unless its verb's object
            score = (len(matched), -cost)
            if best is None or score > best[0]:
                best = (score, Found(span[2], p.path, p.n))
    return best[1] if best else None


def mentioned_families(passages: Iterable[Passage], entity: str, families: Sequence[Family] = FAMILIES,
                       limit: int = 8) -> list[str]:
    """The attribute names whose cues occur in the sentences about ``entity`` (a hint after "not found")."""
    ent = [w.lower() for w in re.findall(r"\w+", entity)]
    seen: dict[str, None] = {}
    for p in passages:
        for sentence in sentences(p.text):
            if not about(p, sentence, ent):
                continue
            words = [t.text.lower() for t in _tokens(sentence)]
            for f in families:
                if f.name not in seen and _group_hits(Group(_cue_tuple(f), f), words):
                    seen[f.name] = None
    return list(seen)[:limit]


def names_about(passages: Iterable[Passage], entity: str, known: set[str]) -> list[Found]:
    """The names in the sentences about ``entity`` (not the entity's own), in order, each with its source."""
    ent = [w.lower() for w in re.findall(r"\w+", entity)]
    out: dict[str, Found] = {}
    for p in sorted(passages, key=lambda p: not p.own):
        for sentence in sentences(p.text):
            if about(p, sentence, ent):
                for _, _, name in _names(_tokens(sentence), known):
                    # "the Salt Coast of Veradel" names Veradel too
                    for part in (name, *re.split(r" (?:of|de|van|von|upon|on) ", name)[1:]):
                        if part.lower() not in (entity.lower(), p.title.lower()):
                            out.setdefault(part, Found(part, p.path, p.n))
    return list(out.values())


def is_a(first_sentence: str, name: str, attribute: str, families: Sequence[Family] = FAMILIES) -> bool:
    """Whether ``first_sentence`` of the text on ``name`` says it is a thing of the attribute's kind ("Veradel is
    a small province"): the way to find "the province of Port Arlen" when no sentence says "province"."""
    words = [t.text.lower() for t in _tokens(first_sentence)]
    groups, _ = attribute_groups(attribute, name, families)
    if not groups or "is" not in words:
        return False
    after = words.index("is")  # "Veradel is a small province", not "Brennock, the seat of the province, is"
    return all(any(after < i <= after + 4 for i in _group_hits(g, words)) for g in groups)


def family_words(text: str, families: Sequence[Family] = FAMILIES) -> list[str]:
    """The one-word cues of the families named in ``text`` ("population" -> "inhabitants", "people" ...)."""
    named = set(re.findall(r"\w+", text.lower()))
    return list(dict.fromkeys(c for f in families if f.name in named for c in f.cues if " " not in c))

"""The prose layer of triplet extraction: sentences as people write them, rewritten into the simple clauses that
the patterns of ``extract`` read.

Free prose states a fact once and then refers to it: ``He``, ``She``, ``It``, ``its``, ``the town``, ``the
company``; it packs several facts into a sentence with appositions (``Mara Voss, a glassmaker from Pellhaven,
...``), relative and subordinate clauses (``..., which was set up in 1893 by X``; ``Before she went into
politics she ...``), lists (``rails, girders and towers``) and coordinated verbs (``X rises at Y and stretches 212
km``). ``read_sentence`` resolves the references (to the previous clause's subject, the last person named, or the
text's main subject), states each apposition as a fact of its own and splits the rest into clauses with one
subject each. A definite noun phrase that names no entity (``The crossing takes 95 minutes``) is read as
belonging to the text's main subject, its noun joining the relation (``crossing takes``).

Everything here works on a sentence whose named entities are ``@E<i>@`` stand-ins for ``names[i]``;
``Discourse`` carries what one sentence leaves to the next. Data handling only: text is matched, never run.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["Discourse", "read_sentence", "is_person"]

ENT = r"@E\d+@"
NUM = (r"(?:\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?)(?:\s+(?:hundred|thousand|million|billion)\b)?"
       r"(?:\s+(?:square|cubic)\s+[a-z]+|\s+(?!(?:in|on|at|by|of|to|and|or|the|a|an|from|with|for)\b)[a-z]+)?")
_PLACE_WORDS = frozenset(
    "falls works ironworks port river mount coast point hills hill university lake bay street fair company city "
    "town island church square tower bridge motors instruments foods labs textiles shipping optics inc ltd corp "
    "valley sea ocean county province hall house park station road college school museum cathedral castle "
    "fort saint st new north south east west upper lower duchy kingdom republic railway line group bank".split())
# Nouns that, after "the", mean the text's main subject when they are its kind.
_KINDS = frozenset("town city village company firm province river country region state island county university "
                   "school port harbour mountain lake".split())
_VERBISH = frozenset("is was are were has had have can could will would still now also once became stayed "
                     "taught led made built won left came went ran rose grew lies lie takes took".split())
_ADJ_DIM = {"long": "length", "tall": "height", "high": "height", "wide": "width", "deep": "depth", "old": "age"}


def is_person(name: str) -> bool:
    """A name of two or three capitalised words that are not place or company words (``Helena Voss``)."""
    words = name.split()
    return 2 <= len(words) <= 3 and all(w[:1].isupper() for w in words) and not any(
        w.lower().strip(".") in _PLACE_WORDS for w in words)


def _verbish(word: str) -> bool:
    w = word.lower()
    # "stretches", "passes", "fixes": an -es that nouns in lists seldom have ("envelopes", "towers" are not verbs)
    return w in _VERBISH or w.endswith("ed") or re.search(r"(?:ch|sh|ss|x|z)es$", w) is not None


@dataclass
class Discourse:
    """What the sentences of one text share: its main subject, what kind of thing that is, and who was last."""

    main: str
    kind: str = ""
    """The main subject's noun (``town`` for "Arlen Falls is a mill town"), learnt as the text goes."""
    last_subject: str = ""
    last_person: str = ""
    names: set[str] = field(default_factory=set)

    def canonical(self, name: str) -> str:
        """``Tamsin`` for ``River Tamsin``, ``Kemble`` for ``Idris Kemble``: a one-word name that ends a longer one
        the text uses (the main subject first; else only when one name fits)."""
        if " " in name or not self.main:
            return name
        fits = [n for n in {self.main, *self.names} if " " in n and " of " not in n and n.split()[-1] == name]
        if self.main in fits:
            return self.main
        return fits[0] if len(fits) == 1 else name

    def person(self) -> str:
        if is_person(self.last_subject):
            return self.last_subject
        if is_person(self.main):
            return self.main
        return self.last_person or self.main

    def thing(self) -> str:
        return self.last_subject if self.last_subject and not is_person(self.last_subject) else self.main

    def refers(self, noun: str) -> bool:
        noun = noun.lower()
        return noun == self.kind or noun in self.main.lower().split() or (not self.kind and noun in _KINDS)


class _Names:
    """The sentence's stand-ins, and new ones for referents the sentence does not spell."""

    def __init__(self, names: list[str]) -> None:
        self.names = names

    def ref(self, name: str) -> str:
        if name in self.names:
            return f"@E{self.names.index(name)}@"
        self.names.append(name)
        return f"@E{len(self.names) - 1}@"

    def get(self, token: str) -> str:
        return self.names[int(token[2:-1])]


Fact = tuple[str, str, str]


def read_sentence(placed: str, names: list[str], doc: Discourse) -> tuple[list[tuple[str, str]], list[Fact]]:
    """``(clauses, facts)`` of one sentence: clauses as ``(text, prefix)`` with stand-ins (each opens with its
    subject; ``prefix`` is a noun the relation starts with, or ""), and the facts of its appositions.

    ``names`` may grow: a pronoun whose referent the sentence does not name gets a stand-in of its own.
    """
    nm = _Names(names)
    facts: list[Fact] = []
    s = placed.strip().rstrip(".!?").strip()
    s = _leading(s)
    s = _resolve_pronouns(s, nm, doc, start=True)
    s = _appositions(s, nm, doc, facts)
    out: list[tuple[str, str]] = []
    for clause in _split(s, nm, doc):
        clause = re.sub(rf"^[Tt]he\s+(?={ENT})", "", clause.strip(" ,"))
        clause, prefix = _bridge(clause, nm, doc)
        if not clause:
            continue
        m = re.match(rf"^({ENT})", clause)
        if m:
            subject = nm.get(m.group(1))
            clause = _possessives(clause, subject, nm)
            doc.last_subject = subject
            if is_person(subject):
                doc.last_person = subject
        out.append((clause, prefix))
    for n in names:
        if is_person(n):
            doc.last_person = n
    return out, facts


_LEAD_DROP = re.compile(r"^(?:today|now|then|later|nowadays|every\s+\w+|each\s+\w+|on\s+its\s+way|in\s+summer|"
                        r"in\s+winter|not\s+to\s+be\s+confused\s+with\s+[^,]+)\s*,?\s+", re.I)


def _leading(s: str) -> str:
    """Drop an opening adverbial (``Today``, ``Every October``); move an opening ``In 1893`` to the end."""
    for _ in range(3):
        m = _LEAD_DROP.match(s)
        if m:
            s = s[m.end():]
            continue
        m = re.match(r"^(In|By|Since)\s+(\d{4}),?\s+(.+)$", s)
        if m:
            s = f"{m.group(3)} {m.group(1).lower()} {m.group(2)}"
            continue
        break
    return s[:1].upper() + s[1:] if s else s


def _resolve_pronouns(s: str, nm: _Names, doc: Discourse, start: bool) -> str:
    """``He``/``She``/``It``/``They`` opening a clause, and ``the <kind>`` of the main subject, as stand-ins."""
    lead = r"(?:^|(?<=[,;:])\s*|(?<=\band\s)|(?<=\bbut\s)|(?<=\bwhen\s)|(?<=\bwhile\s)|(?<=\bbefore\s)|" \
           r"(?<=\bafter\s)|(?<=\balthough\s)|(?<=\bbecause\s)|(?<=\bwhere\s)|(?<=\bpolitics\s))"

    def pron(m: re.Match[str]) -> str:
        word = m.group(2).lower()
        who = doc.person() if word in ("he", "she") else doc.thing()
        return m.group(1) + nm.ref(who) if who else m.group(0)

    s = re.sub(rf"({lead})(he|she|it)\b(?!\s*['’]s)", pron, s, flags=re.I)

    def poss(m: re.Match[str]) -> str:
        who = doc.thing() if m.group(2).lower() == "its" else doc.person()
        return m.group(1) + nm.ref(who) + "'s" if who else m.group(0)

    s = re.sub(rf"({lead})(its|his|her)\b", poss, s, flags=re.I)

    def kind(m: re.Match[str]) -> str:
        noun = m.group(1)
        named = [n for n in nm.names if noun.lower() in n.lower().split() and " " in n]
        if doc.refers(noun):
            return nm.ref(doc.main)
        return nm.ref(named[0]) if len(named) == 1 else m.group(0)

    return re.sub(r"\b[Tt]he\s+([a-z]+)\b(?!\s+of\b)", kind, s)


def _appositions(s: str, nm: _Names, doc: Discourse, facts: list[Fact]) -> str:
    """State each apposition as a fact and leave its head in the sentence."""
    # "the merchant Idris Kemble", "the painter Tobiah Renn": a role before a person's name
    for m in list(re.finditer(rf"\b(?:the|a|an)\s+([a-z]+)\s+({ENT})", s)):
        if is_person(nm.get(m.group(2))):
            facts.append((nm.get(m.group(2)), "is a", m.group(1)))
    s = re.sub(rf"\b(?:the|a|an)\s+[a-z]+\s+({ENT})",
               lambda m: m.group(1) if is_person(nm.get(m.group(1))) else m.group(0), s)
    # "the inland town of Tollmere" -> Tollmere
    s = re.sub(rf"\b(?:the|a|an)\s+(?:[a-z]+\s+){{0,2}}(?:town|city|village|duchy|province|island|county|region|"
               rf"country|port|kingdom)\s+of\s+({ENT})", r"\1", s)
    # "Its mayor, Helena Voss," / "The provincial governor, Aurel Dunmore," / "its tributary, the Mirren,"
    def owned(m: re.Match[str]) -> str:
        owner = nm.get(m.group(1)) if m.group(1) else doc.main
        facts.append((owner, m.group(2).strip(), nm.get(m.group(3))))
        return m.group(3)

    s = re.sub(rf"(?:({ENT})['’]s|\b[Tt]he)\s+((?:[a-z]+\s+){{0,2}}[a-z]+),\s+(?:the\s+)?({ENT})(?:,|(?=\s+(?:is|was"
               rf"|has)\b))", owned, s)

    def appos(m: re.Match[str]) -> str:
        head, body = nm.get(m.group(1)), m.group(2).strip()
        _apposition_facts(head, body, nm, facts)
        return m.group(1)

    # "X, the mayor of Y," / "X, a miller from Y," / "X, born in 1574 in Y," / "X, 2,140 metres high,"
    body = rf"(?:(?:the|a|an)\s+[^,;]+?|{NUM}\s+[a-z]+|(?:born|founded|built|opened|set up|established)\s[^,;]+?)"
    s = re.sub(rf"({ENT}),\s+({body})(,|(?=[;.]|$))", appos, s)
    # "its university, which was set up in 1893 by X": the owned thing becomes a name of its own
    first = re.match(rf"^({ENT})\s", s)
    owner = nm.get(first.group(1)) if first else doc.main
    s = re.sub(rf"(?:({ENT})['’]s|\bits)\s+([a-z]+),\s+which\b",
               lambda m: f"{nm.ref((nm.get(m.group(1)) if m.group(1) else owner) + ' ' + m.group(2))}, which", s)
    return s


def _apposition_facts(head: str, body: str, nm: _Names, facts: list[Fact]) -> None:
    m = re.fullmatch(rf"(?:the|a|an)\s+(?P<rel>[a-z][a-z ]*?)\s+(?:of|for)\s+(?:the\s+)?(?P<o>{ENT})", body)
    # "the mayor of Port Arlen": Port Arlen's mayor is the head
    if m and not re.search(r"\b(?:and|or|in|on|at|from|with)\b", m.group("rel")):
        facts.append((nm.get(m.group("o")), m.group("rel"), head))
        return
    m = re.fullmatch(rf"(?P<n>{NUM})\s+(?P<adj>[a-z]+)", body)
    if m and m.group("adj") in _ADJ_DIM:
        facts.append((head, _ADJ_DIM[m.group("adj")], m.group("n")))
        return
    for part in re.split(r"\s+and\s+(?=(?:a|an|the)\s)", body):
        m = re.match(r"(?:a|an|the)\s+([a-z][a-z -]*?)(?=\s+(?:from|of|in|at|for|with)\b|$)(.*)$", part)
        if m:
            facts.append((head, "is a", m.group(1)))
            for pm in re.finditer(rf"\b(from|of|in|at)\s+(?:the\s+)?({ENT})", m.group(2)):
                rel = "comes from" if pm.group(1) == "from" else f"{m.group(1).split()[-1]} {pm.group(1)}"
                facts.append((head, rel, nm.get(pm.group(2))))
        else:
            facts.append((head, "", part))  # a participle phrase: read by the clause rules (see _split)


_SUBORD = r"(?:although|though|while|when|because|whereas|where|but)"


def _split(s: str, nm: _Names, doc: Discourse) -> list[str]:
    """Clauses with one subject each: ``;``, ``, and <subject>``, ``, although ...``, ``where ...``, relative
    ``which``/``who`` clauses, and coordinated verbs (the subject copied)."""
    out: list[str] = []
    # "Before she went into politics she worked ...": the subordinate clause first, then the main one
    m = re.match(rf"^(?:before|after|when|while|although|because|once|as)\s+({ENT}\s.+?)(?:,\s*|\s+(?=(?:{ENT})"
                 r"\s+[a-z]))(.+)$", s, re.I)
    if m:
        out.append(m.group(1))
        s = m.group(2)
    # "Y, where X has its source": the clause happens at Y; "at the place where X ...": at the subject
    subject = m2.group(1) if (m2 := re.match(rf"^({ENT})", s)) else ""

    def where(m: re.Match[str]) -> str:
        place = subject if m.group(2) else m.group(1)
        if place:
            out.append(f"{m.group(3).strip()} at {place}")
        return m.group(1) or ""

    s = re.sub(rf"(?:({ENT})|\s*(?:,\s*)?(at the place))\s*,?\s+where\s+([^,;]+?)(?=,|;|$)", where, s)
    s = re.sub(r",\s+(?:one|two|three|four|five|six|seven|eight|nine|ten|a few|several|many|\d+)\s+[a-z]+\s+"
               r"(?:later|earlier|ago),\s*", " ", s)
    s = re.sub(r"\band,\s+(since|in)\s+\d{4},\s+", "and ", s)
    s = re.sub(r"\band\s+and\b", "and", s.replace(" and, ", " and "))
    def participle(m: re.Match[str]) -> str:  # "the line, opened in 1879, is 58 km long"
        out.append(f"{m.group(1)} was {m.group(2)}")
        return f"{m.group(1)} "

    s = re.sub(r"\b([Tt]he\s+[a-z]+),\s+((?:opened|built|finished|completed|founded|established)\s+in\s+\d{4}),\s+",
               participle, s)
    for m in list(re.finditer(rf"({ENT}),\s+(?:which|who)\s+([^,;]+?)(?=,|;|$)", s)):
        out.append(f"{m.group(1)} {m.group(2)}")
    s = re.sub(rf"({ENT}),\s+(?:which|who)\s+[^,;]+?(?:,|(?=;|$))", r"\1", s)
    verb = rf"(?:{'|'.join(sorted(_VERBISH))}|[a-z]+ed|[a-z]+s)\b"
    parts = re.split(rf"\s*;\s*|,?\s+and\s+(?=(?:{ENT})(?:['’]s\s|\s+{verb}))|,\s+{_SUBORD}\s+", s, flags=re.I)
    for part in parts:
        part = re.sub(rf"^[Tt]he\s+(?={ENT})", "", part.strip(" ,"))
        m = re.match(rf"^({ENT})\s+", part)
        if not m:
            out.append(part)
            continue
        head = m.group(1)
        pieces = re.split(r",?\s+and\s+(?=([a-z]+)\b)", part)
        # re.split with a group interleaves the captured words: keep the text pieces only
        texts = [pieces[0]] + [pieces[i + 1] for i in range(1, len(pieces) - 1, 2)]
        words = [pieces[i] for i in range(1, len(pieces), 2)]
        merged = [texts[0]]
        for w, t in zip(words, texts[1:], strict=True):
            if _verbish(w):
                merged.append(f"{head} {t}")
            else:
                merged[-1] = f"{merged[-1]} and {t}"
        out.extend(merged)
    return [c for c in out if c.strip()]


def _bridge(clause: str, nm: _Names, doc: Discourse) -> tuple[str, str]:
    """A clause opened by a definite noun phrase that names nothing (``The crossing takes 95 minutes``, ``The old
    lighthouse on Gull Point was lit ...``) is about the main subject; the noun joins the relation."""
    clause = _resolve_pronouns(clause, nm, doc, start=True)
    m = re.match(r"^[Tt]he\s+((?:[a-z-]+\s+){0,3})(.*)$", clause)
    if not m or not doc.main or re.match(rf"^[Tt]he\s+[a-z ]+?\s+of\s+(?:the\s+)?{ENT}\s+(?:is|was)\b", clause):
        return clause, ""
    words, rest = m.group(1).split(), m.group(2)
    for n in range(len(words), 0, -1):
        tail = " ".join(words[n:] + [rest]).strip()
        tail = re.sub(rf"^(?:(?:on|of|at|in|from|to)\s+(?:the\s+)?(?:{ENT}|[a-z]+)\s+)+", "", tail)
        nxt = tail.split(" ", 1)[0] if tail else ""
        if nxt and _verbish(nxt) and not any(w in ("of", "and") for w in words[:n]):
            noun = " ".join(words[:n])
            return f"{nm.ref(doc.main)} {tail}", noun
    return clause, ""


def _possessives(clause: str, subject: str, nm: _Names) -> str:
    """``its``/``his``/``her``/``their`` after a clause's subject belong to it."""
    return re.sub(r"\b(its|his|her|their)\b", lambda m: nm.ref(subject) + "'s", clause, flags=re.I)

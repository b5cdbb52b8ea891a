"""Grants said in one plain sentence, in English or French: "who can read what, until when, except what".

Pure: a grant's payload, the private restrictions that apply to it, the names
of its audience and of labels and categories, and a language in; a sentence
out.  Dates are written in words ("12 March 2027", "1er mars 2027") from UTC,
as the rest of the page shows them.  French needs its own possessives ("vos
résultats d'analyses", "votre imagerie"), so the category phrases live here
beside the grammar that uses them; the short names come from the page's tables.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from fedrecord.core import Action, Grant, PrivateRestriction
from fedrecord.node.patient import distinct_labels

__all__ = [
    "CATEGORY_PHRASES",
    "PURPOSES",
    "Hidden",
    "Vocabulary",
    "ended_sentence",
    "grant_details",
    "grant_sentence",
    "grant_summary",
    "clock",
    "hidden_from",
    "iso_day",
    "long_date",
    "utc",
]

LANGUAGES = ("en", "fr")

MONTHS = {
    "en": (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
    "fr": (
        "janvier", "février", "mars", "avril", "mai", "juin",
        "juillet", "août", "septembre", "octobre", "novembre", "décembre",
    ),
}  # fmt: skip

#: "your lab results" / "vos résultats d'analyses": a category as the object of "can read".
CATEGORY_PHRASES: dict[str, tuple[str, str]] = {
    "lab": ("lab results", "vos résultats d'analyses"),
    "imaging": ("imaging", "votre imagerie"),
    "note": ("notes", "vos comptes rendus"),
    "prescription": ("prescriptions", "vos ordonnances"),
    "report": ("reports", "vos rapports"),
}

#: Purposes a grant may carry, in plain words (the wire token is the key).
PURPOSES: dict[str, tuple[str, str]] = {
    "treatment": ("care", "soins"),
    "research": ("research", "recherche"),
    "emergency": ("emergencies", "urgences"),
}


@dataclass(frozen=True)
class Vocabulary:
    """Plain names, by code, as (English, French): the page's label and category tables."""

    labels: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    categories: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    #: Titles of documents, by id, for grants that name documents.
    titles: Mapping[bytes, str] = field(default_factory=dict)

    def label(self, code: str, language: str) -> str:
        pair = self.labels.get(code)
        return _inline(pair[_index(language)]) if pair else code

    @staticmethod
    def in_order(codes: Sequence[str], table: Mapping[str, tuple[str, str]]) -> list[str]:
        """``codes`` in the order of ``table`` (the order the page lists them), unknown codes last."""
        known = list(table)
        return sorted(codes, key=lambda c: (known.index(c) if c in known else len(known), c))

    def category(self, code: str, language: str) -> str:
        pair = self.categories.get(code)
        return _inline(pair[_index(language)]) if pair else code


@dataclass(frozen=True)
class Hidden:
    """What the patient's private restrictions keep from one grant."""

    labels: tuple[str, ...] = ()
    categories: tuple[str, ...] = ()
    documents: int = 0

    def __bool__(self) -> bool:
        return bool(self.labels or self.categories or self.documents)


def hidden_from(
    grant_id: bytes,
    grant: Grant,
    restrictions: Sequence[PrivateRestriction],
    *,
    above: Sequence[tuple[bytes, Grant]] = (),
) -> Hidden:
    """What ``restrictions`` hide from the grant ``grant_id``: those naming it or its audience.

    Args:
        above: the links above it in its chain, (id, grant) each (the device grant a device gave
            it under): a restriction naming one of them or its audience applies to it too (7.7).
    """
    labels: set[str] = set()
    categories: set[str] = set()
    documents: set[bytes] = set()
    links = {grant_id, *(link_id for link_id, _link in above)}
    audiences = {grant.audience, *(link.audience for _link_id, link in above)}
    for restriction in restrictions:
        if links & set(restriction.grants or ()) or audiences & set(restriction.audiences or ()):
            labels.update(restriction.labels or ())
            categories.update(restriction.categories or ())
            documents.update(restriction.ids or ())
    return Hidden(tuple(distinct_labels(labels)), tuple(sorted(categories)), len(documents))


#: The last second of year 9999: times a peer signed beyond it are shown as unknown, never computed.
LAST_SHOWN = 253402300799


def utc(at: int) -> time.struct_time | None:
    """``at`` (Unix seconds) in UTC, or None for a time no calendar shows (a peer may sign any uint64)."""
    if not 0 <= at <= LAST_SHOWN:
        return None
    return time.gmtime(at)


def iso_day(at: int | None) -> str:
    """``2027-03-12``; empty for no time, "?" for one out of range."""
    if not at:
        return ""
    day = utc(at)
    return time.strftime("%Y-%m-%d", day) if day else "?"


def clock(at: int) -> str:
    """``15:04`` in UTC, "?" for a time out of range."""
    moment = utc(at)
    return time.strftime("%H:%M", moment) if moment else "?"


def long_date(at: int, language: str) -> str:
    """``at`` (Unix seconds) as "12 March 2027" or "12 mars 2027" ("1er mars" on the first), in UTC."""
    day = utc(at)
    if day is None:
        return "?"
    month = MONTHS[language][day.tm_mon - 1]
    number = "1er" if language == "fr" and day.tm_mday == 1 else str(day.tm_mday)
    return f"{number} {month} {day.tm_year}"


def grant_sentence(grant: Grant, *, name: str, hidden: Hidden, language: str, vocabulary: Vocabulary) -> str:
    """One sentence for a live grant: "Dr X's practice can read your lab results until 12 March 2027,
    except mental health." """
    until = long_date(grant.exp, language)
    fr = language == "fr"
    if Action.READ.value not in grant.actions:
        if fr:
            return f"{name} peut déposer des documents dans votre boîte de réception jusqu'au {until}."
        return f"{name} can send documents to your inbox until {until}."
    what = _scope_phrase(grant, language, vocabulary)
    manage = Action.MANAGE.value in grant.actions
    verb = (
        ("peut lire et gérer" if manage else "peut lire")
        if fr
        else ("can read and manage" if manage else "can read")
    )
    except_ = _except_phrase(hidden, language, vocabulary)
    if fr:
        return f"{name} {verb} {what} jusqu'au {until}{except_}."
    return f"{name} {verb} {what} until {until}{except_}."


def grant_summary(grant: Grant, *, name: str, language: str, vocabulary: Vocabulary) -> str:
    """A short form for lists: "Dr X's practice (lab results until 12 March 2027)"."""
    fr = language == "fr"
    parts: list[str] = [vocabulary.category(c, language) for c in sorted(grant.scope.categories or ())]
    labels = [vocabulary.label(code, language) for code in sorted(grant.scope.labels or ())]
    if labels:
        with_label = _join(labels, language, word="ou" if fr else "or")
        if parts:
            parts[-1] += f" avec l'étiquette {with_label}" if fr else f" with the label {with_label}"
        else:
            parts.append(
                f"documents avec l'étiquette {with_label}" if fr else f"documents with the label {with_label}"
            )
    if not parts and grant.scope.selects:
        parts.append("dossier complet" if fr else "whole record")
    if grant.scope.ids:
        parts.append(_chosen(len(grant.scope.ids), language))
    if Action.READ.value not in grant.actions:
        parts = ["dépôt de documents" if fr else "sending documents"]
    until = ("jusqu'au " if fr else "until ") + long_date(grant.exp, language)
    return f"{name} ({_join(parts, language)} {until})"


def grant_details(grant: Grant, *, language: str) -> str:
    """The purpose and whether the access may be passed on, in one or two short sentences."""
    fr = language == "fr"
    pair = PURPOSES.get(grant.purpose)
    purpose = pair[_index(language)] if pair else grant.purpose
    text = f"Finalité : {purpose}." if fr else f"Purpose: {purpose}."
    if Action.READ.value not in grant.actions:
        return text
    if Action.DELEGATE.value in grant.actions:
        text += (
            " Cet accès peut être transmis, en plus restreint, à un autre soignant."
            if fr
            else " This access may be passed on, narrower, to another clinic."
        )
    else:
        text += " Cet accès ne peut pas être transmis." if fr else " This access may not be passed on."
    return text


def ended_sentence(grant: Grant, *, name: str, revoked: bool, language: str, vocabulary: Vocabulary) -> str:
    """A grant that no longer works: "Dr X's practice could read your lab results until 12 March 2027;
    you revoked this access." """
    fr = language == "fr"
    until = long_date(grant.exp, language)
    if Action.READ.value in grant.actions:
        what = _scope_phrase(grant, language, vocabulary)
        head = (
            f"{name} pouvait lire {what} jusqu'au {until}"
            if fr
            else f"{name} could read {what} until {until}"
        )
    else:
        head = (
            f"{name} pouvait déposer des documents jusqu'au {until}"
            if fr
            else f"{name} could send you documents until {until}"
        )
    if revoked:
        return head + (" ; vous avez révoqué cet accès." if fr else "; you revoked this access.")
    return head + (" ; cet accès a expiré." if fr else "; this access has expired.")


# --- the pieces -----------------------------------------------------------------------------------


def _index(language: str) -> int:
    return LANGUAGES.index(language)


def _inline(name: str) -> str:
    """A name inside a sentence: "Mental health" becomes "mental health"; "HIV" stays."""
    if len(name) > 1 and name[0].isupper() and name[1].islower():
        return name[0].lower() + name[1:]
    return name


def _join(items: Sequence[str], language: str, *, word: str | None = None) -> str:
    word = word or ("et" if language == "fr" else "and")
    if len(items) <= 1:
        return "".join(items)
    return f"{', '.join(items[:-1])} {word} {items[-1]}"


def _chosen(count: int, language: str) -> str:
    if language == "fr":
        return "1 document choisi" if count == 1 else f"{count} documents choisis"
    return "1 chosen document" if count == 1 else f"{count} chosen documents"


def _category_object(code: str, language: str, vocabulary: Vocabulary) -> str:
    """A category as the object of "can read", without the English "your" (added once for the list)."""
    pair = CATEGORY_PHRASES.get(code)
    if pair:
        return pair[_index(language)]
    name = vocabulary.category(code, language)
    return f"vos documents de type « {name} »" if language == "fr" else f"documents of type “{name}”"


def _scope_phrase(grant: Grant, language: str, vocabulary: Vocabulary) -> str:
    """What a read grant covers: "your lab results and imaging with the label HIV (dated from 1 March
    2026 on)", "tout votre dossier", "the documents “A” and “B”"."""
    fr = language == "fr"
    scope = grant.scope
    selector = ""
    if scope.selects:
        categories = [_category_object(c, language, vocabulary) for c in sorted(scope.categories or ())]
        if categories:
            selector = _join(categories, language) if fr else "your " + _join(categories, language)
        labels = [vocabulary.label(code, language) for code in sorted(scope.labels or ())]
        if labels:
            with_label = _join(labels, language, word="ou" if fr else "or")
            if not selector:
                selector = "vos documents" if fr else "your documents"
            selector += f" avec l'étiquette {with_label}" if fr else f" with the label {with_label}"
        if not selector:
            selector = "tout votre dossier" if fr else "your whole record"
        bounds: list[str] = []
        if scope.since is not None:
            since = long_date(scope.since, language)
            bounds.append(f"datant du {since} ou après" if fr else f"dated from {since} on")
        if scope.until is not None:
            before = long_date(scope.until, language)
            bounds.append(f"datant d'avant le {before}" if fr else f"dated before {before}")
        joined = long_date(grant.iat, language)
        if scope.past and not scope.future:
            bounds.append(
                f"seulement les documents déjà dans votre dossier le {joined}"
                if fr
                else f"only documents already in your record on {joined}"
            )
        elif scope.future and not scope.past:
            bounds.append(
                f"seulement les documents ajoutés à partir du {joined}"
                if fr
                else f"only documents added from {joined} on"
            )
        if bounds:
            selector += f" ({', '.join(bounds)})"
    named = ""
    if scope.ids:
        titles = [vocabulary.titles.get(doc) for doc in scope.ids]
        known = [t for t in titles if t]
        if len(known) == len(titles) and len(titles) <= 3:
            quoted = [f"« {t} »" if fr else f"“{t}”" for t in known]
            if fr:
                named = ("le document " if len(quoted) == 1 else "les documents ") + _join(quoted, language)
            else:
                named = ("the document " if len(quoted) == 1 else "the documents ") + _join(quoted, language)
        else:
            named = _chosen(len(scope.ids), language)
    return _join([p for p in (selector, named) if p], language)


def _except_phrase(hidden: Hidden, language: str, vocabulary: Vocabulary) -> str:
    if not hidden:
        return ""
    fr = language == "fr"
    items = [
        vocabulary.label(code, language) for code in vocabulary.in_order(hidden.labels, vocabulary.labels)
    ]
    items += [
        vocabulary.category(code, language)
        for code in vocabulary.in_order(hidden.categories, vocabulary.categories)
    ]
    if hidden.documents:
        if fr:
            items.append(
                "1 document particulier"
                if hidden.documents == 1
                else f"{hidden.documents} documents particuliers"
            )
        else:
            items.append(
                "1 particular document"
                if hidden.documents == 1
                else f"{hidden.documents} particular documents"
            )
    return (", sauf " if fr else ", except ") + _join(items, language)

"""The knowledge base's pure rules: article states and their transitions,
who may see an article, and how search text becomes search terms.

    draft -> review -> published -> archived
    review -> draft (return)      draft -> published (a publisher skips review)
    archived -> draft (restore)   draft | review -> archived

Visibility: `internal` (HQ people: kb:read on the global scope), `site` (the
article's site: kb:read there, HQ included), `public` (anyone holding kb:read).
Drafts, articles in review and archived ones are seen only by those who may
write the article (kb:write on its scope: the site for `site` articles, the
global scope otherwise).
"""

from __future__ import annotations

import re

from server.itsm import kpi

STATES = ("draft", "review", "published", "archived")
VISIBILITIES = ("internal", "site", "public")
LINK_KINDS = ("ticket", "problem", "machine")
# the resolution code of a help request the knowledge base answered
SELF_SERVED = kpi.SELF_SERVED

# action -> (states it may start from, state it leads to, permission it needs)
ACTIONS: dict[str, tuple[frozenset[str], str, str]] = {
    "submit": (frozenset({"draft"}), "review", "kb:write"),
    "return": (frozenset({"review"}), "draft", "kb:publish"),
    "publish": (frozenset({"draft", "review"}), "published", "kb:publish"),
    "archive": (frozenset({"draft", "review", "published"}), "archived", "kb:publish"),
    "restore": (frozenset({"archived"}), "draft", "kb:publish"),
}

_NUMBER = re.compile(r"^KB-(\d{1,12})$", re.IGNORECASE)
_WORD = re.compile(r"\w+", re.UNICODE)
_TAG = re.compile(r"^[\w.+-]{1,40}$", re.UNICODE)
MAX_TERMS = 16

# Words too common to help a search (both databases then agree on them).
_STOP = (
    "a an and are as at be but by can do does for from has have how i if in is it its "
    "me my no not of on or our so that the their then there these this to was we what "
    "when where which who why will with you your"
)
STOP_WORDS = frozenset(_STOP.split(" "))


class IllegalTransition(Exception):
    def __init__(self, action: str, state: str) -> None:
        self.action = action
        self.state = state
        self.allowed = allowed_actions(state)
        super().__init__(
            f"cannot {action} an article that is {state}; allowed: "
            + (", ".join(self.allowed) if self.allowed else "nothing")
        )


def allowed_actions(state: str) -> list[str]:
    return [action for action, (sources, _, _) in ACTIONS.items() if state in sources]


def transition(state: str, action: str) -> tuple[str, str]:
    """The new state and the permission the action needs; raises
    IllegalTransition (or KeyError for an unknown action)."""
    sources, target, permission = ACTIONS[action]
    if state not in sources:
        raise IllegalTransition(action, state)
    return target, permission


def number_text(number: int) -> str:
    return f"KB-{number}"


def parse_number(ref: str) -> int | None:
    match = _NUMBER.match(ref.strip())
    return int(match.group(1)) if match else None


def terms(text: str) -> list[str]:
    """Search words from free text: lower-cased, stop words and repeats
    dropped, at most MAX_TERMS. Only word characters survive, so no
    query syntax of either database can be injected."""
    out: list[str] = []
    for word in _WORD.findall(text.lower()):
        if word in STOP_WORDS or word in out or not any(c.isalnum() for c in word):
            continue
        out.append(word)
        if len(out) == MAX_TERMS:
            break
    return out


def clean_tags(tags: list[str]) -> list[str]:
    """Tags lower-cased, without repeats; raises ValueError naming a bad one."""
    out: list[str] = []
    for tag in tags:
        tag = tag.strip().lower()
        if not _TAG.match(tag):
            raise ValueError(f"{tag!r}: 1-40 letters, digits or . + - _")
        if tag not in out:
            out.append(tag)
    return out


def tags_text(tags: list[str]) -> str:
    """Stored form: ",a,b," (so one tag matches with LIKE '%,a,%')."""
    return "," + ",".join(tags) + "," if tags else ""


def tags_list(text: str | None) -> list[str]:
    return [t for t in (text or "").split(",") if t]

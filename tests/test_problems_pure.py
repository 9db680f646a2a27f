"""The problem lifecycle and the proposal rules, pure."""

from __future__ import annotations

import pytest

from server.itsm import problems as pb

TEXTS = {"workaround": None, "root_cause": None, "resolution": None}


@pytest.mark.parametrize(
    ("status", "target"),
    [
        ("proposed", "new"),
        ("new", "investigating"),
        ("investigating", "known_error"),
        ("known_error", "investigating"),
        ("known_error", "resolved"),
        ("resolved", "investigating"),
        ("resolved", "closed"),
    ],
)
def test_allowed_moves(status, target):
    """Each move of the lifecycle lands where it says, given the texts it needs."""
    texts = {"workaround": "w", "root_cause": "r", "resolution": "s"}
    assert pb.transition(status, target, **texts) == target


@pytest.mark.parametrize(
    ("status", "target"),
    [
        ("proposed", "investigating"),
        ("new", "closed"),
        ("closed", "investigating"),
        ("dismissed", "new"),
        ("resolved", "known_error"),
        ("new", "proposed"),
    ],
)
def test_illegal_moves_name_the_allowed_ones(status, target):
    """An illegal move raises with the statuses allowed from where it is."""
    with pytest.raises(pb.IllegalTransition) as err:
        pb.transition(status, target, workaround="w", root_cause="r", resolution="s")
    assert err.value.allowed == pb.allowed_statuses(status)
    assert status in str(err.value)


def test_known_error_needs_a_workaround_and_resolved_a_cause_and_resolution():
    """The texts each status needs are named by field; blank text does not count."""
    with pytest.raises(pb.MissingField) as err:
        pb.transition("investigating", "known_error", **{**TEXTS, "workaround": "  "})
    assert err.value.field == "workaround"
    with pytest.raises(pb.MissingField) as err:
        pb.transition("investigating", "resolved", **{**TEXTS, "resolution": "x"})
    assert err.value.field == "root_cause"
    with pytest.raises(pb.MissingField) as err:
        pb.transition("investigating", "resolved", **{**TEXTS, "root_cause": "x"})
    assert err.value.field == "resolution"
    with pytest.raises(pb.MissingField) as err:
        pb.transition("proposed", "dismissed", **TEXTS)
    assert err.value.field == "reason"
    assert pb.transition("proposed", "dismissed", **TEXTS, reason="noise") == "dismissed"


def test_final_statuses_allow_nothing():
    """Closed and dismissed are final."""
    assert pb.allowed_statuses("closed") == [] and pb.allowed_statuses("dismissed") == []


def test_proposal_rules():
    """Three distinct machines (not three incidents) propose; the second reopen does."""
    same_machine = [("t1", "a"), ("t2", "a"), ("t3", "b")]
    assert not pb.proposes_for_alerts(same_machine)
    assert pb.proposes_for_alerts([*same_machine, ("t4", "c")])
    assert not pb.proposes_for_reopens(1, "incident")
    assert pb.proposes_for_reopens(2, "incident")
    assert not pb.proposes_for_reopens(3, "incident")
    assert not pb.proposes_for_reopens(2, "service_request")
    assert pb.number_text(7) == "PRB-7"

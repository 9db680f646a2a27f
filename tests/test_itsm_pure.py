"""Pure ITSM decisions: the ticket state machine, priority, SLA arithmetic."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

import pytest

from server.itsm import sla
from server.itsm.tickets import IllegalTransition, allowed_actions, priority_of, transition

# Friday 2026-01-09 16:00 in Seoul (UTC+9, no DST) = 07:00 UTC.
SEOUL = sla.Calendar.business("Asia/Seoul", "09:00", "18:00", holidays=(date(2026, 1, 12),))
FRI_16 = datetime(2026, 1, 9, 7, 0, tzinfo=UTC)


def kst(day: int, hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 1, day, hour - 9, minute, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "action", "expected"),
    [
        ("new", "ack", "acknowledged"),
        ("acknowledged", "start", "in_progress"),
        ("in_progress", "resolve", "resolved"),
        ("waiting", "start", "in_progress"),
        ("resolved", "close", "closed"),
        ("resolved", "reopen", "in_progress"),
        ("new", "cancel", "cancelled"),
    ],
)
def test_legal_transitions(status, action, expected):
    """Each lifecycle step leads where the diagram says."""
    assert transition(status, action, reason="on_site").status == expected


@pytest.mark.parametrize(
    ("status", "action"),
    [
        ("new", "close"),
        ("closed", "reopen"),
        ("cancelled", "start"),
        ("resolved", "wait"),
        ("new", "fly"),
    ],
)
def test_illegal_transitions_name_the_allowed_ones(status, action):
    """An illegal step raises, naming what is allowed from here."""
    with pytest.raises(IllegalTransition) as exc:
        transition(status, action)
    assert exc.value.allowed == allowed_actions(status)
    assert "allowed" in str(exc.value)


def test_wait_needs_a_reason_and_reopen_a_window():
    """Waiting names why; reopening is only possible within the window."""
    with pytest.raises(ValueError, match="reason"):
        transition("in_progress", "wait")
    assert transition("in_progress", "wait", reason="on_vendor").waiting_reason == "on_vendor"
    resolved = datetime(2026, 1, 1, tzinfo=UTC)
    assert transition(
        "resolved", "reopen", resolved_at=resolved, now=resolved + timedelta(days=6)
    ).reopened
    with pytest.raises(IllegalTransition):
        transition("resolved", "reopen", resolved_at=resolved, now=resolved + timedelta(days=8))


def test_priority_matrix():
    """Impact x urgency gives P1..P4."""
    assert [priority_of(1, u) for u in (1, 2, 3)] == ["P1", "P2", "P3"]
    assert [priority_of(3, u) for u in (1, 2, 3)] == ["P3", "P4", "P4"]
    with pytest.raises(ValueError, match="impact"):
        priority_of(0, 1)


def test_business_time_crosses_the_weekend():
    """2 business hours from Friday 16:00 end at Friday 18:00; 3 hours on Monday... but
    Monday 12 Jan is a holiday, so Tuesday 10:00."""
    assert sla.add(SEOUL, FRI_16, 2 * 3600) == kst(9, 18)
    assert sla.add(SEOUL, FRI_16, 3 * 3600) == kst(13, 10)
    assert sla.elapsed(SEOUL, FRI_16, kst(13, 10)) == 3 * 3600


def test_outside_hours_starts_next_morning():
    """A ticket opened on Saturday starts its clock on the next working morning."""
    saturday = kst(10, 11)
    assert sla.add(SEOUL, saturday, 30 * 60) == kst(13, 9, 30)
    assert sla.elapsed(SEOUL, saturday, kst(12, 17)) == 0  # weekend and holiday


def test_always_calendar_is_wall_time():
    """24x7 targets (P1) count wall-clock time."""
    assert sla.add(sla.ALWAYS, FRI_16, 3600) == FRI_16 + timedelta(hours=1)


def test_clock_states_with_pause_and_breach():
    """The resolve clock pauses while waiting; warns at 80 %; breaches after the target."""
    targets = sla.Targets(ack=3600, response=7200, resolve=4 * 3600)
    created = kst(13, 9)  # Tuesday 09:00
    running = sla.clock(
        SEOUL,
        "resolve",
        targets,
        created_at=created,
        met_at=None,
        paused_seconds=0,
        paused_since=None,
        now=kst(13, 11),
    )
    assert running.state == "running" and running.due == kst(13, 13)
    # Waiting from 11:00 to 12:00: one hour paused shifts the due time by one hour.
    paused = sla.clock(
        SEOUL,
        "resolve",
        targets,
        created_at=created,
        met_at=None,
        paused_seconds=0,
        paused_since=kst(13, 11),
        now=kst(13, 11, 30),
    )
    assert paused.state == "paused" and paused.due is None and paused.elapsed == 2 * 3600
    resumed = sla.clock(
        SEOUL,
        "resolve",
        targets,
        created_at=created,
        met_at=None,
        paused_seconds=3600,
        paused_since=None,
        now=kst(13, 13, 15),
    )
    assert resumed.due == kst(13, 14) and resumed.state == "warning"
    late = sla.clock(
        SEOUL,
        "resolve",
        targets,
        created_at=created,
        met_at=None,
        paused_seconds=3600,
        paused_since=None,
        now=kst(13, 14, 1),
    )
    assert late.state == "breached"
    met = sla.clock(
        SEOUL,
        "ack",
        targets,
        created_at=created,
        met_at=kst(13, 9, 40),
        paused_seconds=0,
        paused_since=None,
        now=kst(13, 15),
    )
    assert met.state == "met"
    missed = sla.clock(
        SEOUL,
        "ack",
        targets,
        created_at=created,
        met_at=kst(13, 10, 30),
        paused_seconds=0,
        paused_since=None,
        now=kst(13, 15),
    )
    assert missed.state == "missed"


def test_clock_over_a_weekend_and_holiday_at_risk():
    """A P2 opened Friday 16:00 (8 business hours) is due Tuesday 15:00 in Seoul."""
    targets = sla.DEFAULT_TARGETS["P2"]
    c = sla.clock(
        SEOUL,
        "resolve",
        targets,
        created_at=FRI_16,
        met_at=None,
        paused_seconds=0,
        paused_since=None,
        now=kst(13, 9),
    )
    assert c.due == kst(13, 15)
    assert c.elapsed == 2 * 3600 and c.state == "running"


def test_calendar_without_working_time_fails_clearly():
    """A calendar with no working days raises instead of looping."""
    with pytest.raises(ValueError, match="no working time"):
        sla.add(sla.Calendar("UTC", {}, frozenset()), FRI_16, 60)


def test_a_clock_due_beyond_ten_years_has_no_due_date():
    """A long target on a calendar with a minute of work a week is due beyond
    the ten years SLA arithmetic looks ahead: the clock runs without a due
    date (it raised, and every read of the ticket was a 500)."""
    cal = sla.Calendar.business(start="09:00", end="09:01", days=(0,))
    targets = sla.Targets(ack=365 * 86400, response=365 * 86400, resolve=365 * 86400)
    c = sla.clock(
        cal,
        "resolve",
        targets,
        created_at=FRI_16,
        met_at=None,
        paused_seconds=0,
        paused_since=None,
        now=FRI_16 + timedelta(days=7),
    )
    assert c.due is None and c.state == "running" and c.elapsed == 60
    # With no working time at all, nothing has elapsed either.
    assert sla.elapsed(sla.Calendar("UTC", {}, frozenset()), FRI_16, FRI_16 + timedelta(1)) == 0


# --- alerts ---------------------------------------------------------------------------

from server.itsm import alerts, kpi  # noqa: E402 - grouped with the tests that use them

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
REPORT = {
    "cpu": {"percent": 12.5},
    "memory": {"percent": 40.0},
    "swap": {"percent": 0.0},
    "load": {"1m": 0.5, "5m": 0.4, "15m": 0.3},
    "disks": [
        {"mount": "/", "percent": 50.0, "inodes_percent": 3.0},
        {"mount": "/var", "percent": 91.0, "inodes_percent": None},
    ],
}


def test_metric_paths_read_the_report():
    """Metric paths pick values, the fullest disk with [*], None when absent."""
    assert alerts.metric(REPORT, "cpu.percent") == 12.5
    assert alerts.metric(REPORT, "load.1m") == 0.5
    assert alerts.metric(REPORT, "disk[/var].percent") == 91.0
    assert alerts.metric(REPORT, "disk[*].percent") == 91.0
    assert alerts.metric(REPORT, "disk[/data].percent") is None
    assert alerts.metric(REPORT, "disk[/].inodes_percent") == 3.0
    with pytest.raises(alerts.MetricError):
        alerts.check_metric("cpu.nonsense")


def test_rule_fires_after_duration_and_recovers_with_hysteresis():
    """Pending until for_seconds, fire once, stay firing above the clear level."""
    rule = alerts.Rule("r", "disk[/var].percent", ">=", 90, for_seconds=60, clear_threshold=85)
    s = alerts.State()
    out = alerts.evaluate(rule, s, 91, T0)
    assert out.event is None and out.state.pending_since == T0
    out = alerts.evaluate(rule, out.state, 92, T0 + timedelta(seconds=61))
    assert out.event == "fire" and out.state.firing
    out = alerts.evaluate(rule, out.state, 88, T0 + timedelta(seconds=70))
    assert out.event is None and out.state.firing  # between clear and threshold: no flap
    out = alerts.evaluate(rule, out.state, 84, T0 + timedelta(seconds=80))
    assert out.event == "recover" and not out.state.firing
    # a dip below the threshold resets the pending timer
    out = alerts.evaluate(rule, alerts.State(False, T0), 50, T0 + timedelta(seconds=5))
    assert out.state.pending_since is None


def test_zero_duration_rule_fires_on_the_first_report():
    """for_seconds=0 fires within one evaluation."""
    rule = alerts.Rule("r", "cpu.percent", ">", 10)
    assert alerts.evaluate(rule, alerts.State(), 12.5, T0).event == "fire"
    assert alerts.evaluate(rule, alerts.State(), None, T0).event is None


# --- KPIs ---------------------------------------------------------------------------------

H = 3600.0


def fact(i: int, **kw) -> kpi.Fact:
    base = {"id": f"t{i}", "site": "a", "priority": "P2", "assignee": "eng", "created_at": T0}
    base.update(kw)
    return kpi.Fact(**base)


FACTS = [
    # resolved at site tier, rated 5, ack 10 min, first response 20 min, 2 h to resolve
    fact(
        1,
        acknowledged_at=T0 + timedelta(minutes=10),
        first_response_at=T0 + timedelta(minutes=20),
        resolved_at=T0 + timedelta(hours=2),
        status="resolved",
        tier_resolved="site",
        rating=5,
        has_requester=True,
        sla={"ack": "met", "response": "met", "resolve": "met"},
    ),
    # escalated to HQ, resolved after 5 h with 1 h paused, rated 2
    fact(
        2,
        acknowledged_at=T0 + timedelta(minutes=30),
        resolved_at=T0 + timedelta(hours=5),
        paused_seconds=H,
        status="resolved",
        tier_resolved="hq",
        escalations=1,
        rating=2,
        has_requester=True,
        sla={"ack": "met", "resolve": "missed"},
    ),
    # reopened once after resolution at site tier
    fact(
        3,
        acknowledged_at=T0 + timedelta(hours=1),
        resolved_at=T0 + timedelta(hours=3),
        status="resolved",
        tier_resolved="site",
        reopens=[T0 + timedelta(hours=4)],
        has_requester=True,
        sla={"ack": "missed", "resolve": "met"},
    ),
    # open and past due; an alert ticket that fired 3 times
    fact(
        4,
        site="b",
        assignee=None,
        source="alert",
        alert_firings=3,
        sla={"ack": "breached", "response": "open", "resolve": "open"},
    ),
    # alert ticket auto-resolved
    fact(
        5,
        site="b",
        source="alert",
        alert_firings=1,
        resolved_at=T0 + timedelta(hours=1),
        status="resolved",
        tier_resolved="hq",
        auto_resolved=True,
    ),
]


def test_kpi_formulas_on_fixed_data():
    """Every formula, pinned."""
    k = kpi.compute(FACTS)
    assert k["tickets"] == 5 and k["resolved"] == 4
    assert k["time_to_acknowledge"] == {"count": 3, "mean": 2000.0, "median": 1800.0, "p90": 3600.0}
    assert k["time_to_first_response"]["mean"] == 1200.0
    # resolve: 2 h, 5 h - 1 h paused = 4 h, 3 h, 1 h  -> mean 2.5 h, median 2.5 h
    assert k["time_to_resolve"]["mean"] == 2.5 * H
    assert k["time_to_resolve"]["median"] == 2.5 * H
    assert k["time_to_resolve"]["p90"] == 4 * H
    assert k["sla_compliance"] == {"ack": 0.5, "response": 1.0, "resolve": 2 / 3}
    assert k["tier1_resolution_rate"] == 1 / 4  # only ticket 1
    assert k["escalation_rate"] == 1 / 5
    assert k["reopen_rate"] == 1 / 4
    assert k["csat"] == 1 / 2 and k["csat_response_rate"] == 2 / 3
    assert k["alerts_per_ticket"] == 2.0
    assert k["auto_resolved_share"] == 1 / 4


def test_kpis_group_by_site_and_week():
    """Grouping splits the facts; empty measures are None, not zero."""
    by_site = kpi.grouped(FACTS, "site")
    assert set(by_site) == {"a", "b"}
    assert by_site["b"]["csat"] is None
    assert list(kpi.grouped(FACTS, "week")) == ["2026-W10"]
    assert kpi.grouped([], None)["all"]["tickets"] == 0

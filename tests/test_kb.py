"""Knowledge base over the API, on SQLite (FTS5) and PostgreSQL (tsvector):
write, search ranked with snippets, visibility per role and site, states,
versions, links, votes, a ticket turned into a draft, and a help request an
article solved (self-served, counted in the deflection rate)."""

from __future__ import annotations

from typing import Any

from tests.support import HQHandle, make_user

PRINTER = {
    "title": "Receipt printer prints blank paper",
    "symptom": "The till's receipt printer feeds paper but nothing is printed on it.",
    "cause": "Thermal paper loaded upside down.",
    "resolution": "Open the printer cover and turn the paper roll: shiny side to the head.",
    "tags": ["printer", "till"],
}
SCANNER = {
    "title": "Barcode scanner beeps but no item appears",
    "symptom": "Scanning works (beep) yet the item is not added to the sale.",
    "cause": "Scanner switched to keyboard layout of another language.",
    "resolution": "Scan the 'USB keyboard US' setup barcode from the scanner manual.",
    "tags": ["scanner"],
}


async def admin(hq: HQHandle, method: str, path: str, **kw: Any) -> Any:
    async with hq.client(hq.admin_token) as api:
        return await api.ok(method, path, **kw)


async def sites(hq: HQHandle, *names: str) -> None:
    for name in names:
        await admin(hq, "POST", "/api/v1/sites", json={"name": name})


async def published(hq: HQHandle, body: dict[str, Any]) -> dict[str, Any]:
    made = await admin(hq, "POST", "/api/v1/kb", json=body)
    return await admin(  # type: ignore[no-any-return]
        hq, "POST", f"/api/v1/kb/{made['number']}/transition", json={"action": "publish"}
    )


async def test_write_search_rank_and_snippets(hq, admin_api):
    """Drafts are written, published and found by words (stemmed), best match
    first, with marked snippets; `any` finds on one word; junk finds nothing."""
    await sites(hq, "shop-1")
    a = await published(hq, {**PRINTER, "visibility": "public"})
    b = await published(hq, {**SCANNER, "visibility": "public"})
    assert a["number"].startswith("KB-") and a["state"] == "published" and a["version"] == 1
    assert a["tags"] == ["printer", "till"] and a["published_at"]

    found = await admin_api.ok("GET", "/api/v1/kb", params={"q": "printing blank"})
    assert [i["number"] for i in found["items"]] == [a["number"]]  # stemmed: printing ~ print
    hit = found["items"][0]
    assert hit["score"] > 0 and "«" in hit["snippet"] and "»" in hit["snippet"]

    # all words must match by default; `any` wants one and ranks
    none = await admin_api.ok("GET", "/api/v1/kb", params={"q": "printer scanner"})
    assert none["items"] == []
    anyw = await admin_api.ok(
        "GET", "/api/v1/kb", params={"q": "printer scanner beeps", "match": "any"}
    )
    assert [i["number"] for i in anyw["items"]] == [b["number"], a["number"]]

    # a title match ranks above a match in the resolution only
    c = await published(
        hq,
        {
            "title": "Cash drawer stays shut",
            "resolution": "Check the printer cable: the drawer opens through the printer.",
            "visibility": "public",
        },
    )
    ranked = await admin_api.ok("GET", "/api/v1/kb", params={"q": "printer"})
    assert [i["number"] for i in ranked["items"]] == [a["number"], c["number"]]

    # query syntax of either database is just words here
    for junk in ['"', "NOT AND OR", "printer* -", "a:b (", "'; drop table kb_articles; --", "__"]:
        status, body = await admin_api.get("/api/v1/kb", params={"q": junk})
        assert status == 200, body
    tag = await admin_api.ok("GET", "/api/v1/kb", params={"tag": "scanner"})
    assert [i["number"] for i in tag["items"]] == [b["number"]]
    wild = await admin_api.ok("GET", "/api/v1/kb", params={"tag": "%"})
    assert wild["items"] == []  # a tag is matched as written, not as a pattern
    # Korean words are found too
    k = await published(
        hq,
        {
            "title": "영수증 프린터 용지 걸림",
            "symptom": "용지가 걸립니다",
            "visibility": "site",
            "site": "shop-1",
        },
    )
    ko = await admin_api.ok("GET", "/api/v1/kb", params={"q": "프린터"})
    assert [i["number"] for i in ko["items"]] == [k["number"]]


async def test_edits_keep_versions_and_search_follows(hq, admin_api):
    """Every content edit is a new version; earlier ones can be listed and
    read; search sees the new words at once and no longer the old."""
    a = await admin(hq, "POST", "/api/v1/kb", json={**PRINTER, "visibility": "internal"})
    n = a["number"]
    edited = await admin_api.ok(
        "PATCH",
        f"/api/v1/kb/{n}",
        json={"title": "Receipt printer prints nothing (thermal roll)", "note": "clearer"},
    )
    assert edited["version"] == 2
    again = await admin_api.ok("PATCH", f"/api/v1/kb/{n}", json={"title": edited["title"]})
    assert again["version"] == 2  # nothing changed: no new version
    await admin_api.ok("PATCH", f"/api/v1/kb/{n}", json={"resolution": "Flip the roll."})
    versions = await admin_api.ok("GET", f"/api/v1/kb/{n}/versions")
    assert [v["version"] for v in versions["items"]] == [3, 2, 1]
    assert versions["items"][0]["current"] and versions["items"][1]["note"] == "clearer"
    first = await admin_api.ok("GET", f"/api/v1/kb/{n}/versions/1")
    assert first["title"] == PRINTER["title"] and first["resolution"] == PRINTER["resolution"]
    status, err = await admin_api.get(f"/api/v1/kb/{n}/versions/9")
    assert status == 404 and "version" in err["error"]["fields"]
    found = await admin_api.ok("GET", "/api/v1/kb", params={"q": "thermal roll flip"})
    assert [i["number"] for i in found["items"]] == [n]
    gone = await admin_api.ok("GET", "/api/v1/kb", params={"q": "shiny"})
    assert gone["items"] == []
    # bad input names the field
    status, err = await admin_api.request("PATCH", f"/api/v1/kb/{n}", json={"tags": ["a b"]})
    assert status == 422 and "tags" in err["error"]["fields"]
    status, err = await admin_api.post("/api/v1/kb", {"title": "x", "visibility": "site"})
    assert status == 422 and "site" in err["error"]["fields"]
    status, err = await admin_api.post("/api/v1/kb", {"title": ""})
    assert status == 422 and "title" in err["error"]["fields"]


async def test_states_and_who_may_move_them(hq):
    """draft -> review -> published -> archived -> draft; engineers submit,
    only kb:publish publishes; 409 names the allowed actions; audited."""
    await sites(hq, "shop-1")
    eng = await make_user(hq, "hq_engineer", totp=True)
    async with hq.client(eng.token) as api:
        a = await api.ok("POST", "/api/v1/kb", json={**PRINTER, "visibility": "internal"})
        n = a["number"]
        assert a["allowed_actions"] == ["submit"]
        status, err = await api.post(f"/api/v1/kb/{n}/transition", {"action": "publish"})
        assert status == 403 and "kb:publish" in err["error"]["message"]
        r = await api.ok("POST", f"/api/v1/kb/{n}/transition", json={"action": "submit"})
        assert r["state"] == "review"
    async with hq.client(hq.admin_token) as api:
        status, err = await api.post(f"/api/v1/kb/{n}/transition", {"action": "restore"})
        assert status == 409 and set(err["error"]["allowed"]) == {"return", "publish", "archive"}
        for action, state in [
            ("return", "draft"),
            ("publish", "published"),
            ("archive", "archived"),
            ("restore", "draft"),
        ]:
            got = await api.ok("POST", f"/api/v1/kb/{n}/transition", json={"action": action})
            assert got["state"] == state
        await api.ok("POST", f"/api/v1/kb/{n}/transition", json={"action": "archive"})
        status, _ = await api.request("PATCH", f"/api/v1/kb/{n}", json={"title": "x"})
        assert status == 409  # archived articles are restored before editing
        trail = await api.ok("GET", "/api/v1/audit", params={"action": "kb.publish"})
        assert any(e["target_id"] == a["id"] for e in trail["items"])


async def test_visibility_per_role_and_site(hq):
    """internal: HQ only; site: that site's people (and HQ); public: anyone
    with kb:read; drafts only for writers of their scope. Unseen is 404."""
    await sites(hq, "shop-1", "shop-2")
    internal = await published(hq, {**PRINTER, "visibility": "internal"})
    site1 = await published(hq, {**SCANNER, "visibility": "site", "site": "shop-1"})
    public = await published(
        hq, {"title": "Reset your till password", "symptom": "locked", "visibility": "public"}
    )
    draft = await admin(hq, "POST", "/api/v1/kb", json={"title": "draft", "visibility": "public"})
    staff1 = await make_user(hq, "site_staff", "shop-1")
    staff2 = await make_user(hq, "site_staff", "shop-2")
    tech1 = await make_user(hq, "site_tech", "shop-1")
    eng = await make_user(hq, "hq_engineer", totp=True)

    async def seen(token: str) -> set[str]:
        async with hq.client(token) as api:
            return {i["number"] for i in (await api.ok("GET", "/api/v1/kb"))["items"]}

    assert await seen(staff1.token) == {site1["number"], public["number"]}
    assert await seen(staff2.token) == {public["number"]}
    assert await seen(eng.token) == {
        internal["number"],
        site1["number"],
        public["number"],
        draft["number"],
    }
    async with hq.client(staff2.token) as api:
        for ref in (internal["number"], site1["number"], draft["number"], site1["id"]):
            status, _ = await api.get(f"/api/v1/kb/{ref}")
            assert status == 404
        status, _ = await api.post("/api/v1/kb", {"title": "x"})
        assert status == 403  # site staff do not write
    # a site technician writes for its own site only
    async with hq.client(tech1.token) as api:
        mine = await api.ok(
            "POST", "/api/v1/kb", json={"title": "t", "visibility": "site", "site": "shop-1"}
        )
        status, err = await api.post(
            "/api/v1/kb", {"title": "t", "visibility": "site", "site": "shop-2"}
        )
        assert status == 404 and "site" in err["error"]["fields"]
        status, err = await api.post("/api/v1/kb", {"title": "t", "visibility": "public"})
        assert status == 403 and "visibility" in err["error"]["fields"]
        status, _ = await api.get(f"/api/v1/kb/{draft['number']}")
        assert status == 404
    # staff of the site do not see the technician's draft until it is published
    async with hq.client(staff1.token) as api:
        status, _ = await api.get(f"/api/v1/kb/{mine['number']}")
        assert status == 404


async def test_links_and_votes(hq, admin_api, agent_factory):
    """Links to tickets, problems and machines (shown only to who may see
    the target); one vote per person, replaced by a later one."""
    agent = await agent_factory(hq, site="shop-1")
    a = await published(hq, {**PRINTER, "visibility": "public"})
    n = a["number"]
    t = await admin_api.ok("POST", "/api/v1/tickets", json={"title": "blank", "site": "shop-1"})
    await admin_api.ok(
        "POST", f"/api/v1/kb/{n}/links", json={"kind": "ticket", "target": t["number"]}
    )
    await admin_api.ok(
        "POST", f"/api/v1/kb/{n}/links", json={"kind": "machine", "target": agent.agent_id}
    )
    got = await admin_api.ok(
        "POST", f"/api/v1/kb/{n}/links", json={"kind": "problem", "target": "PR-3"}
    )
    # linking twice keeps one link
    got = await admin_api.ok(
        "POST", f"/api/v1/kb/{n}/links", json={"kind": "problem", "target": "PR-3"}
    )
    kinds = sorted((link["kind"], link["target"]) for link in got["links"])
    assert kinds == [("machine", agent.agent_id), ("problem", "PR-3"), ("ticket", t["id"])]
    label = next(link["label"] for link in got["links"] if link["kind"] == "ticket")
    assert label.startswith(t["number"])
    status, err = await admin_api.post(
        f"/api/v1/kb/{n}/links", {"kind": "ticket", "target": "FL-99999"}
    )
    assert status == 422 and "target" in err["error"]["fields"]
    staff = await make_user(hq, "site_staff", "shop-1")
    async with hq.client(staff.token) as api:
        seen = await api.ok("GET", f"/api/v1/kb/{n}")
        assert seen["links"] == []  # not its ticket, no agents:read, no problems
        v = await api.ok("POST", f"/api/v1/kb/{n}/vote", json={"helped": False})
        assert (v["helped"], v["not_helped"], v["my_vote"]) == (0, 1, False)
        v = await api.ok("POST", f"/api/v1/kb/{n}/vote", json={"helped": True})
        assert (v["helped"], v["not_helped"], v["my_vote"]) == (1, 0, True)
    v = await admin_api.ok("POST", f"/api/v1/kb/{n}/vote", json={"helped": True})
    assert (v["helped"], v["not_helped"]) == (2, 0)
    link_id = next(link["id"] for link in got["links"] if link["kind"] == "problem")
    left = await admin_api.ok("DELETE", f"/api/v1/kb/{n}/links/{link_id}")
    assert len(left["links"]) == 2


async def test_resolved_ticket_becomes_a_draft_in_one_step(hq, admin_api):
    await sites(hq, "shop-1")
    t = await admin_api.ok(
        "POST",
        "/api/v1/tickets",
        json={"title": "Till 2 prints blank", "description": "blank receipts", "site": "shop-1"},
    )
    n = t["number"]
    status, _ = await admin_api.post(f"/api/v1/tickets/{n}/kb", {})
    assert status == 409  # not resolved yet
    await admin_api.ok(
        "POST",
        f"/api/v1/tickets/{n}/transition",
        json={"action": "resolve", "resolution_text": "paper roll was upside down"},
    )
    a = await admin_api.ok("POST", f"/api/v1/tickets/{n}/kb", json={})
    assert a["state"] == "draft" and a["visibility"] == "internal"
    assert a["title"] == "Till 2 prints blank" and a["symptom"] == "blank receipts"
    assert a["resolution"] == "paper roll was upside down"
    assert [(link["kind"], link["target"]) for link in a["links"]] == [("ticket", t["id"])]
    ticket = await admin_api.ok("GET", f"/api/v1/tickets/{n}")
    assert any(e["kind"] == "kb" and a["number"] in e["body"] for e in ticket["timeline"])
    # a site technician gets a site article for the ticket's site
    tech = await make_user(hq, "site_tech", "shop-1")
    async with hq.client(tech.token) as api:
        b = await api.ok("POST", f"/api/v1/tickets/{n}/kb", json={"title": "Blank receipts"})
        assert b["visibility"] == "site" and b["site"] == "shop-1"


async def test_solved_by_an_article_is_self_served_and_counts_as_deflection(hq, admin_api):
    """ "This solved it" closes the request at once, links it and votes
    "helped"; the deflection rate counts it; other KPIs leave it out."""
    await sites(hq, "shop-1")
    a = await published(hq, {**PRINTER, "visibility": "public"})
    draft = await admin(hq, "POST", "/api/v1/kb", json={"title": "d", "visibility": "public"})
    staff = await make_user(hq, "site_staff", "shop-1")
    async with hq.client(staff.token) as api:
        done = await api.ok(
            "POST",
            f"/api/v1/kb/{a['number']}/solved",
            json={"site": "shop-1", "text": "my receipts are blank"},
        )
        ticket = await api.ok("GET", f"/api/v1/tickets/{done['ticket']}")
        assert ticket["status"] == "closed" and ticket["resolution_code"] == "self_served"
        assert ticket["requester"] == staff.username
        status, _ = await api.post(f"/api/v1/kb/{draft['number']}/solved", {"site": "shop-1"})
        assert status == 404  # a draft is not visible to staff
        await api.ok("POST", "/api/v1/tickets", json={"title": "real problem", "site": "shop-1"})
    art = await admin_api.ok("GET", f"/api/v1/kb/{a['number']}")
    assert art["helped"] == 1 and any(link["target"] == ticket["id"] for link in art["links"])
    kpi = await admin_api.ok("GET", "/api/v1/kpis")
    assert kpi["groups"]["all"]["self_served"] == 1
    assert kpi["groups"]["all"]["deflection_rate"] == 0.5
    assert kpi["groups"]["all"]["tickets"] == 1

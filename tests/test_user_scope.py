"""A site-scoped admin sees and acts only on the users of its own sites: the
others answer 404 (as if they did not exist), on the API and in the console."""

from __future__ import annotations

from tests.support import make_user


async def test_site_admin_sees_only_users_of_its_sites(hq):
    boss = await make_user(hq, "admin", "site-a", totp=True)
    here = await make_user(hq, "site_staff", "site-a")
    there = await make_user(hq, "site_staff", "site-b")
    both = await make_user(hq, "site_tech", "site-b")
    unbound = await make_user(hq, None)
    async with hq.client(hq.admin_token) as root:
        await root.ok(
            "POST",
            "/api/v1/bindings",
            json={"user_id": both.id, "role": "site_staff", "scope": "site:site-a"},
        )
        everyone = {u["username"] for u in (await root.ok("GET", "/api/v1/users"))["items"]}
        assert {there.username, "admin"} <= everyone  # a global admin sees them all
    async with hq.client(boss.token) as api:
        listed = {u["username"]: u for u in (await api.ok("GET", "/api/v1/users"))["items"]}
        assert set(listed) == {boss.username, here.username, both.username, unbound.username}
        # another site's bindings of a shared user stay hidden
        assert [b["scope"] for b in listed[both.username]["bindings"]] == ["site:site-a"]
        assert (await api.ok("GET", f"/api/v1/users/{here.id}"))["username"] == here.username
        status, err = await api.get(f"/api/v1/users/{there.id}")
        assert status == 404 and err["error"]["code"] == "not_found", err
        status, _ = await api.get("/api/v1/users/u_nobody")
        assert status == 404
        for method, body in (("PATCH", {"display_name": "x"}), ("DELETE", None)):
            status, _ = await api.request(method, f"/api/v1/users/{there.id}", json=body)
            assert status == 404, method
        # binding someone of another site onto this one: as unknown as a made-up id
        status, err = await api.post(
            "/api/v1/bindings",
            {"user_id": there.id, "role": "site_staff", "scope": "site:site-a"},
        )
        assert status == 422 and err["error"]["fields"] == {"user_id": "no such user"}, err
        status, bindings = await api.get("/api/v1/bindings", params={"user_id": there.id})
        assert status == 200 and bindings["items"] == []
        # the console's administration page lists the same users
        status, html = await api.get("/admin")
        assert status == 200, html
        assert here.username in html and unbound.username in html
        assert there.username not in html and 'data-user="admin"' not in html
    async with hq.client(hq.admin_token) as root:
        assert (await root.ok("GET", f"/api/v1/users/{there.id}"))["id"] == there.id

def test_create_get_and_counts(api):
    r = api.as_("curator").post("/v1/datasets", json={"name": "support", "format": "chat",
                                                      "review_policy": {"required_approvals": 2}})
    assert r.status_code == 201
    ds = r.json()
    assert ds["format"] == "chat" and ds["review_policy"] == {"required_approvals": 2}
    got = api.as_("reviewer").get(f"/v1/datasets/{ds['id']}").json()
    assert got["counts"]["total"] == 0 and "pending_review" in got["counts"]
    assert api.as_("reviewer").get("/v1/datasets/support").json()["id"] == ds["id"]  # by name too


def test_bad_dataset_requests(api):
    r = api.as_("curator").post("/v1/datasets", json={"name": "x", "format": "tweets"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "format"
    api.as_("curator").post("/v1/datasets", json={"name": "dup", "format": "chat"})
    r = api.as_("curator").post("/v1/datasets", json={"name": "dup", "format": "chat"})
    assert r.status_code == 409 and r.json()["error"]["code"] == "name_taken"
    r = api.as_("curator").get("/v1/datasets/00000000-0000-0000-0000-000000000000")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = api.as_("curator").post("/v1/datasets", content=b"not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422


def test_patch_policies(api):
    ds = api.as_("curator").post("/v1/datasets", json={"name": "p", "format": "completion"}).json()
    r = api.as_("curator").patch(f"/v1/datasets/{ds['id']}", json={"dedup_policy": {"threshold": 0.7}})
    assert r.status_code == 200 and r.json()["dedup_policy"] == {"threshold": 0.7}
    assert api.as_("reviewer").patch(f"/v1/datasets/{ds['id']}", json={"description": "x"}).status_code == 403
def test_bad_policies_are_422_naming_the_field(api):
    for field, bad in [("dedup_policy", {"threshold": 2}), ("pii_policy", {"score_threshold": "x"}),
                       ("review_policy", {"required_approvals": 0})]:
        r = api.as_("curator").post("/v1/datasets", json={"name": f"p-{field[:4]}", "format": "chat", field: bad})
        assert r.status_code == 422, (field, r.status_code, r.text)
        assert r.json()["error"]["details"][0]["field"].startswith(field), r.json()

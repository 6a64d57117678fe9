"""The reader's page against a service that requires keys, in a real headless Chromium: the page itself loads
without a key, says why the service refuses, and sends the key the reader pastes (kept for the tab)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from service.audit import AuditLog
from service.auth import KeyEntry, KeyStore, Site, hash_key, new_key, save_keys
from tests.integration.conftest import running_service
from tests.integration.test_web import CHROMIUM_ARGS, browser, pytestmark  # noqa: F401 (fixture, skip rule)


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    work = tmp_path_factory.mktemp("keyed")
    key, key_id = new_key()
    keys = work / "keys.yaml"
    save_keys(keys, KeyStore({"clinic-a": Site("clinic-a", frozenset({"analyze"}), (KeyEntry(hash_key(key), key_id),))}))
    env = {"FOVEA_API_KEYS_FILE": str(keys), "FOVEA_AUDIT_PATH": str(work / "audit.sqlite")}
    with running_service(work, env) as url:
        yield {"url": url, "key": key, "audit": AuditLog(f"sqlite:///{work / 'audit.sqlite'}")}


def test_page_sends_the_pasted_key(browser: Any, keyed: dict[str, Any], retina_path: Path) -> None:  # noqa: F811
    context = browser.new_context(base_url=keyed["url"], viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(30_000)
    try:
        page.goto("/")  # open: the page and its assets need no key
        footer = page.locator("#models-footer")
        page.wait_for_function("() => document.querySelector('#models-footer').textContent.includes('unavailable')")
        assert "no API key sent" in footer.inner_text()

        page.fill("#api-key", "fov_00000000_wrong")
        page.locator("#api-key").press("Tab")  # "change" reloads the model information with the key
        page.set_input_files("#files", [str(retina_path)])
        page.get_by_role("button", name="Analyse").click()
        page.locator("#error").wait_for()
        assert "invalid API key" in page.locator("#error").inner_text()

        page.fill("#api-key", keyed["key"])
        page.locator("#api-key").press("Tab")
        page.locator("#models-footer strong").first.wait_for()
        page.get_by_role("button", name="Analyse").click()
        page.locator("article.finding").wait_for()

        page.reload()  # the key is kept for this tab (sessionStorage)
        page.locator("#models-footer strong").first.wait_for()
        assert page.locator("#api-key").input_value() == keyed["key"]
    finally:
        context.close()
    rows = keyed["audit"].rows()
    assert any(r["endpoint"] == "/analyze" and r["status"] == 200 and r["site"] == "clinic-a" for r in rows)
    assert any(r["endpoint"] == "/analyze" and r["status"] == 401 for r in rows)

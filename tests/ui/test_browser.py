"""The web UI in a real browser (Debian's chromium, driven by Playwright) against a real
``vetting serve`` and real ``vetting-agent`` processes.

Every test saves screenshots of the pages it visits (``$VETTING_SCREENSHOTS`` or the
pytest tmp dir) and fails if a page requests anything but the server (conftest).
"""

from __future__ import annotations

import re
import time

from playwright.sync_api import expect

from tests.support.bmc import wait_until

from .conftest import PHONE, Ui, ext4_image

SESSION = "__Host-vetting-session"
RUNNING_SPEC = "params:\n  Chatter: {samples: 300, lines: 150, duration_s: 14}\n"


def check_accessible(page) -> None:
    """Every visible form control has a label; the first Tab stop is the skip link, visible when focused."""
    unlabelled = page.evaluate("""() => [...document.querySelectorAll('input, select, textarea')]
        .filter(e => e.type !== 'hidden' && e.offsetParent !== null)
        .filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label'))
        .map(e => e.name || e.id)""")
    assert unlabelled == [], f"form controls without a label: {unlabelled}"
    first = page.evaluate("[...document.querySelectorAll('a[href], button, input:not([type=hidden]), select, textarea')][0].className")
    assert first == "skip"  # the first Tab stop skips the navigation
    page.locator(".skip").focus()
    assert page.locator(".skip").bounding_box()["x"] >= 0  # and shows itself when focused
    page.locator(".skip").blur()


def no_reload_marker(page, value: str) -> None:
    page.evaluate(f"window.__vettingMarker = {value!r}")


def still_same_document(page, value: str) -> bool:
    return page.evaluate("window.__vettingMarker") == value


def run_id_of(page) -> int:
    return int(re.search(r"/runs/(\d+)", page.url)[1])


def start_run(page, stages: list[str], profile: str | None = None, destructive: bool = False) -> int:
    """Start a run from the host page that is open."""
    if profile:
        page.get_by_label("Profile").select_option(profile)
    page.get_by_text("Only some stages").click()
    for s in stages:
        page.get_by_label(s, exact=True).check()
    box = page.get_by_label(re.compile("Non-destructive"))
    if box.is_enabled():
        box.set_checked(not destructive)
    page.get_by_role("button", name="Start the run").click()
    page.wait_for_url(re.compile(r".*/runs/\d+$"))
    return run_id_of(page)


def test_login_session_cookie_csrf_and_logout(ui: Ui) -> None:
    page = ui.page
    page.goto("/")
    assert "/login?next=/" in page.url  # no session: to the login
    check_accessible(page)
    ui.shot("01-login")
    page.get_by_label("User name").fill("alice")
    page.get_by_label("Password").fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
    assert SESSION not in {c["name"] for c in ui.context.cookies()}

    ui.login()
    cookies = {c["name"]: c for c in ui.context.cookies()}
    s = cookies[SESSION]
    assert (s["secure"], s["httpOnly"], s["sameSite"], s["path"]) == (True, True, "Strict", "/")
    assert s["domain"] == "127.0.0.1" and 11 * 3600 < s["expires"] - time.time() <= 12 * 3600  # ui.session_absolute_hours
    assert "__Host-vetting-login" not in cookies  # the login form's token is spent
    assert "vetting-session" not in page.evaluate("document.cookie")  # HttpOnly: no script reads it

    # a state-changing request needs the session's CSRF token (and this origin)
    token = ui.csrf()
    url = f"{ui.base}/settings/retention.logs_days"
    assert ui.context.request.post(url, form={"value": "9"}, max_redirects=0).status == 403
    assert ui.context.request.post(url, form={"value": "9", "_csrf": token[::-1]}, max_redirects=0).status == 403
    assert ui.context.request.post(url, form={"value": "9", "_csrf": token}, headers={"Origin": "http://evil.example"},
                                   max_redirects=0).status == 403
    assert ui.context.request.post(url, form={"value": "9"}, headers={"X-CSRF-Token": token}, max_redirects=0).status == 303
    assert ui.context.request.post(url, form={"reset": "1", "_csrf": token}, max_redirects=0).status == 303
    ui.shot("02-dashboard-empty")

    page.get_by_role("button", name="Log out").click()
    page.wait_for_url(re.compile(r".*/login$"))
    assert SESSION not in {c["name"] for c in ui.context.cookies()}
    # the old cookie is dead on the server too
    ui.context.add_cookies([{**s, "expires": time.time() + 3600}])
    page.goto("/settings")
    assert "/login?next=/settings" in page.url


def test_register_a_host_and_watch_its_host_mode_run_live(ui: Ui, agents) -> None:
    page = ui.page
    ui.login()
    page.get_by_role("link", name="Register a host").first.click()
    check_accessible(page)
    page.get_by_label("Name").fill("rack1-node1")
    page.get_by_label(re.compile("MAC address")).fill("02:00:00:00:aa:01")
    page.get_by_label("Boot provider", exact=True).select_option("agent")
    spec = page.get_by_label(re.compile("Expected spec"))
    spec.fill("cpu:\n  sockets: many\n")
    page.get_by_role("button", name="Register").click()
    # refused: the message sits at the field it is about, the rest of the form is kept
    expect(page.locator("#expected_spec_yaml-error")).to_contain_text("$.cpu.sockets")
    expect(spec).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_label("Name")).to_have_value("rack1-node1")
    ui.shot("03-register-refused")
    spec.fill(RUNNING_SPEC)
    page.get_by_role("button", name="Register").click()
    token = page.locator("#agent-token").inner_text().strip()
    assert token.startswith("vh_")
    host_id = int(re.search(r'/ui/hosts/(\d+)/spec', page.content())[1])
    ui.shot("04-host-registered")
    # the expected spec is edited in place; a refusal stays in the editor, under the field
    page.get_by_role("button", name="Edit the expected spec").click()
    editor = page.locator("#spec textarea")
    editor.fill(RUNNING_SPEC + "memory: {total_gib: lots}\n")
    page.locator("#spec").get_by_role("button", name="Save").click()
    expect(page.locator("#expected_spec_yaml-error")).to_contain_text("$.memory.total_gib")
    expect(page.locator("#spec textarea")).to_have_attribute("aria-invalid", "true")
    ui.shot("04b-spec-edit-refused")
    page.locator("#spec textarea").fill(RUNNING_SPEC)
    page.locator("#spec").get_by_role("button", name="Save").click()
    expect(page.locator("#spec")).to_contain_text("Saved.")
    assert ui.server.api("GET", f"/api/v1/hosts/{host_id}").json()["expected_spec_yaml"] == RUNNING_SPEC

    agents.host(token, "node1")  # a real host-mode agent polls for work
    dash = ui.context.new_page()
    dash.goto("/")
    no_reload_marker(dash, "dashboard")
    tile = dash.locator(f"#host-{host_id}")
    expect(tile).to_contain_text("idle")

    run_id = start_run(page, ["Chatter"])
    no_reload_marker(page, "run page")
    stage = page.locator("#stage-Chatter")
    expect(stage).to_contain_text("running", timeout=30_000)
    expect(tile).to_contain_text("Running", timeout=15_000)  # the dashboard follows without a reload

    # progress and the log tail move while we watch
    values: set[str] = set()
    lines: list[int] = []

    def moved() -> bool:
        bar = page.locator("#stage-Chatter progress")
        if bar.count():
            values.add(bar.get_attribute("value"))
        lines.append(page.locator("#log .ln").count())
        return len(values) >= 3 and len({n for n in lines if n}) >= 2  # the tail grew while we watched

    wait_until(moved, 30, "the progress bar and the log tail to move")
    ui.shot("05-run-live")
    ui.shot("06-dashboard-live", dash)

    # the server restarts mid-stage: the streams reconnect and resume (Last-Event-ID)
    ui.server.restart()
    expect(page.locator("#panel")).to_contain_text("Completed", timeout=90_000)
    expect(tile).to_contain_text("Completed", timeout=15_000)
    assert still_same_document(page, "run page") and still_same_document(dash, "dashboard")
    expect(page.locator("#log")).to_contain_text("chatter line 149")
    shown = page.locator("#log .ln").all_inner_texts()
    stored = ui.server.api("GET", f"/api/v1/runs/{run_id}/logs").text.splitlines()
    assert len(shown) == len(stored) <= 300, (len(shown), len(stored))  # every line once, none lost
    assert len(set(shown)) == len(shown)
    expect(page.locator("#charts figure.chart svg polyline").first).to_be_visible()
    expect(page.locator("iframe.report")).to_be_visible(timeout=30_000)
    expect(page.locator("#stage-Chatter")).to_contain_text("passed")
    check_accessible(page)
    ui.shot("07-run-completed")
    ui.shot("08-dashboard-after", dash)
    # the report the page frames is the run's
    frame = page.frame_locator("iframe.report")
    expect(frame.locator("body")).to_contain_text("rack1-node1", timeout=15_000)


def test_a_hold_a_wipe_override_with_typed_disks_and_a_release(ui: Ui, agents, tmp_path) -> None:
    disk = ext4_image(tmp_path / "disk0.img")
    host = ui.server.create_host("rack1-node2", "02:00:00:00:aa:02",
                                 spec_yaml=f"params:\n  WipeGate: {{disks: ['{disk}']}}\n  Judged: {{value: 50}}\n")
    page = ui.page
    ui.login()
    page.goto(f"/hosts/{host['id']}")
    run_id = start_run(page, ["WipeGate"], profile="agenttest", destructive=True)
    token = page.locator("#run-token").inner_text().strip()  # shown once, for an agent started by hand
    agents.connect(run_id, token)

    panel = page.locator("#panel")
    expect(panel).to_contain_text("Held for inspection", timeout=60_000)
    expect(page.locator("#ssh-command")).to_contain_text(f"vetting-run-{run_id}-hold-key root@192.0.2.7")
    expect(panel.locator("time[data-until]").first).to_have_text(re.compile(r"^1h 5\dm$|^2h 00m$"))
    with page.expect_download() as dl:
        page.get_by_role("link", name="Download the key").click()
    assert open(dl.value.path()).read().startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    expect(panel).to_contain_text("The wipe probe found data")
    expect(panel.locator("table").first).to_contain_text("ext4")
    ui.shot("09-run-held-wipe-probe")

    confirm = page.get_by_label(re.compile("type the disk names"))
    confirm.fill("/dev/sda")
    page.get_by_role("button", name=re.compile("Override the wipe probe")).click()
    expect(page.locator("#confirm-error")).to_contain_text(f"Type exactly the disks the probe found data on: {disk}")
    expect(page.get_by_label(re.compile("type the disk names"))).to_have_attribute("aria-invalid", "true")
    assert ui.server.run(run_id)["run"]["state"] == "FailedHolding"  # nothing overridden
    ui.shot("10-wipe-override-refused")
    page.get_by_label(re.compile("type the disk names")).fill(str(disk))
    page.get_by_label(re.compile("Why")).fill("disk from the spares shelf, data is junk")
    page.get_by_role("button", name=re.compile("Override the wipe probe")).click()
    expect(page.locator("#panel")).to_contain_text("Completed", timeout=60_000)
    detail = ui.server.run(run_id)
    [stage] = detail["stages"]
    assert (stage["state"], stage["attempt"]) == ("passed", 1) and detail["override_flags"] == {"wipe": True}
    expect(page.locator("#stage-WipeGate")).to_contain_text("attempt 2")

    # a critical threshold breach fails the stage and holds the host; the operator releases it
    page.goto(f"/hosts/{host['id']}")
    run2 = start_run(page, ["Judged"], profile="agenttest")
    agents.connect(run2, page.locator("#run-token").inner_text().strip())
    expect(page.locator("#panel")).to_contain_text("Held for inspection", timeout=60_000)
    breaches = page.get_by_role("region", name="Threshold breaches (1)")
    expect(breaches).to_contain_text("judged value")
    expect(breaches).to_contain_text("50")
    page.get_by_role("button", name="Release the host").click()
    expect(page.locator("#panel")).to_contain_text("Released", timeout=15_000)
    ui.shot("11-run-released")

    page.goto("/audit")
    expect(page.locator("tbody")).to_contain_text(f"wipe override confirmed for {disk}")
    expect(page.locator("tbody")).to_contain_text(f"hold key of run {run_id} downloaded by alice")
    expect(page.locator("tbody tr").first).to_contain_text("web UI")


def test_a_spec_difference_ignored_for_the_host_is_honoured_by_the_next_run(ui: Ui, agents) -> None:
    host = ui.server.create_host("rack1-node3", "02:00:00:00:aa:03", spec_yaml="cpu:\n  threads: 4096\n",
                                 boot_provider="agent")
    agents.host(host["agent_token"], "node3")
    page = ui.page
    ui.login()
    page.goto(f"/hosts/{host['id']}")
    first = start_run(page, ["InventoryCheck", "SpecValidate"])
    expect(page.locator("#panel")).to_contain_text("Failed", timeout=60_000)
    row = page.locator("#diffs tr", has_text="cpu.threads")
    expect(row).to_contain_text("4096")
    row.get_by_label("why").fill("lab box: half the cores are fused off")
    row.get_by_role("button", name="Ignore for this host").click()
    expect(page.locator("#diffs tr", has_text="cpu.threads")).to_contain_text("ignored for this host")
    ui.shot("12-spec-diff-ignored")

    page.goto(f"/hosts/{host['id']}")
    expect(page.get_by_role("region", name="Differences ignored for this host")).to_contain_text("cpu.threads")
    second = start_run(page, ["InventoryCheck", "SpecValidate"])
    assert second != first
    expect(page.locator("#panel")).to_contain_text("Completed", timeout=60_000)
    expect(page.locator("#stage-SpecValidate")).to_contain_text("passed")
    expect(page.locator("#diffs tr.ignored", has_text="cpu.threads")).to_be_visible()
    ui.shot("13-next-run-honours-ignore")
    page.goto("/audit")
    expect(page.locator("tbody")).to_contain_text("cpu.threads (expected 4096")


def test_settings_audit_log_and_a_phone(ui: Ui, browser) -> None:
    page = ui.page
    ui.login()
    page.goto("/settings")
    check_accessible(page)
    ui.shot("14-settings")
    section = page.locator("section#notifications\\.routes")
    section.get_by_role("textbox").fill("- targets: [nobody]\n")
    section.get_by_role("button", name="Save").click()
    err = page.locator("section#notifications\\.routes .field-error")
    expect(err).to_contain_text("unknown target 'nobody'")
    ui.shot("15-settings-refused")
    expect(page.locator("section#notifications\\.routes textarea")).to_have_value("- targets: [nobody]\n")

    profile = page.locator("section#runs\\.default_profile")
    profile.get_by_role("combobox").select_option("agenttest")
    profile.get_by_role("button", name="Save").click()
    expect(page.get_by_role("status")).to_contain_text("in force now")
    host = ui.server.create_host("rack1-node4", "02:00:00:00:aa:04")
    page.goto(f"/hosts/{host['id']}")
    expect(page.get_by_label("Profile")).to_have_value("agenttest")  # no restart
    page.goto("/settings")
    page.locator("section#runs\\.default_profile").get_by_role("button", name="Back to the file's value").click()
    page.goto("/audit")
    expect(page.locator("tbody tr").first).to_contain_text("setting runs.default_profile reset")
    expect(page.locator("tbody")).to_contain_text("127.0.0.1")
    check_accessible(page)
    ui.shot("16-audit")

    # a phone held at the rack: one column, nothing wider than the screen
    run_id, _ = ui.server.start_run(host["id"], profile="agenttest", stages=["Faulty"])
    phone = Ui(browser, ui.server, ui.shots, viewport=PHONE)
    try:
        phone.login()
        for path, name in (("/", "17-phone-dashboard"), (f"/hosts/{host['id']}", "18-phone-host"),
                           (f"/runs/{run_id}", "19-phone-run")):
            phone.page.goto(path)
            wide = phone.page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
            assert wide <= 0, f"{path} is {wide}px wider than the phone"
            phone.shot(name)
        assert not phone.external()
    finally:
        phone.close()

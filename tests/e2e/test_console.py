"""The web console (`/console`) in a real browser: headless Chromium (Debian's `chromium`) driven by
Playwright. The browser signs every call itself (SigV4 in Web Crypto), so these tests drive the same
APIs the AWS CLI uses, through the pages a person sees. Every action is a form or dialog, driven here
from the keyboard (Tab, Enter, Escape) and checked twice: on the page and through boto3. Screenshots
of each page are saved under the test's tmp dir."""
from __future__ import annotations

import re
import shutil

import pytest
import requests

import nbd
from conftest import poll

pytestmark = pytest.mark.blocksnap_only

CHROMIUM = "/usr/bin/chromium"
OTHER_REGION = "us-west-2"


@pytest.fixture(scope="module")
def browser():
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail("Playwright is missing: pip install playwright (tests/run installs it)")
    if not shutil.which(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (tests/run installs it)")
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


@pytest.fixture
def page(browser):
    ctx = browser.new_context(viewport={"width": 1400, "height": 900})
    pg = ctx.new_page()
    errors = []
    pg.on("pageerror", lambda e: errors.append(str(e)))
    # The console asks through its own forms: a prompt()/alert()/confirm() box is a defect.
    native = []
    pg.on("dialog", lambda d: (native.append(f"{d.type}: {d.message}"), d.dismiss()))
    pg.set_default_timeout(30_000)
    yield pg
    ctx.close()
    assert not errors, f"script errors in the console: {errors}"
    assert not native, f"the console used the browser's modal boxes: {native}"


def sign_in(page, server, creds, secret=None):
    page.goto(f"{server.endpoint}console")
    page.get_by_label("Access key ID").fill(creds.access_key)
    page.get_by_label("Secret access key").fill(secret or creds.secret_key)
    page.get_by_role("textbox", name="Region").fill(server.region)
    page.get_by_role("button", name="Sign in").click()


def status_text(page, pattern: str) -> re.Match:
    page.wait_for_function("p => new RegExp(p).test(document.querySelector('#status').textContent)", arg=pattern)
    m = re.search(pattern, page.locator("#status").text_content())
    assert m, page.locator("#status").text_content()
    return m


def focused(page) -> str:
    """The focused control's accessible name (aria-label, its label, or its text)."""
    return page.evaluate("() => { const e = document.activeElement;"
                         " return e.getAttribute('aria-label') || e.labels?.[0]?.textContent || e.textContent; }")


def open_dialog(page, button: str, title: str):
    """Reach `button` as Tab would, press Enter: its dialog opens with the focus inside it."""
    page.get_by_role("button", name=button, exact=True).focus()
    page.keyboard.press("Enter")
    dlg = page.get_by_role("dialog", name=title)
    dlg.wait_for()
    assert page.evaluate("() => document.activeElement.closest('dialog') !== null")
    return dlg


def retype(page, text: str):
    """Replace the focused field's text from the keyboard."""
    page.keyboard.press("Control+A")
    page.keyboard.type(text)


def field_error(dlg, label: str) -> str:
    """The error shown as text next to the field labelled `label` (its aria-describedby)."""
    control = dlg.get_by_label(label, exact=True)
    control.page.wait_for_function(
        "e => e.getAttribute('aria-invalid') === 'true'", arg=control.element_handle())
    ids = control.get_attribute("aria-describedby").split()
    return " ".join(dlg.locator(f"#{i}").text_content() for i in ids if i.endswith("-error"))


def test_static_pages_carry_no_data_and_are_locked_down(server):
    r = requests.get(f"{server.endpoint}console", timeout=10, allow_redirects=False)
    assert r.status_code == 308 and r.headers["location"] == "/console/"
    r = requests.get(f"{server.endpoint}console/", timeout=10)
    assert r.status_code == 200 and "text/html" in r.headers["content-type"]
    csp = r.headers["content-security-policy"]
    assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp
    assert r.headers["x-frame-options"] == "DENY"
    assert not re.search(r"(vol|snap|i)-[0-9a-f]{8}|\d{12}|" + server.creds.access_key, r.text)
    assert requests.get(f"{server.endpoint}console/nope.js", timeout=10).status_code == 404
    # Everything else is still an AWS call: unsigned, refused.
    assert requests.get(f"{server.endpoint}consoles", timeout=10).status_code in (400, 401, 403)


def test_console_scenario(fresh_server, page, tmp_path):
    srv = fresh_server
    # serve prints where the console is, beside the credentials.
    printed = [l for l in srv.log_path.read_text(errors="replace").splitlines() if l.startswith("# web console: ")]
    assert printed == [f"# web console: http://127.0.0.1:{srv.port}/console"], printed
    ec2 = srv.client()
    shots = tmp_path / "screenshots"
    shots.mkdir()
    ident = nbd.credentials(srv).identity

    # A wrong secret is refused, and the sign-in page says so.
    sign_in(page, srv, srv.creds, secret="not-the-secret")
    err = page.locator("#signin-error")
    err.wait_for()
    page.wait_for_function("() => document.querySelector('#signin-error').textContent.length > 0")
    assert "Sign-in refused" in err.text_content() and "AuthFailure" in err.text_content()
    page.screenshot(path=str(shots / "signin-refused.png"))

    sign_in(page, srv, srv.creds)
    page.get_by_role("heading", name=f"Volumes in {srv.region}").wait_for()

    # Create a volume through the form, by keyboard: a size of 0 is refused next to the field.
    form = page.get_by_role("form", name="Create volume")
    form.get_by_label("Size (GiB)").focus()
    retype(page, "0")
    page.keyboard.press("Enter")
    assert field_error(form, "Size (GiB)") and focused(page) == "Size (GiB)"
    retype(page, "1")
    for _ in range(3):  # Type, Availability Zone, Name
        page.keyboard.press("Tab")
    assert focused(page) == "Name"
    page.keyboard.type("console-vol")
    page.keyboard.press("Enter")
    vid = status_text(page, r"Created (vol-[0-9a-f]+)").group(1)
    row = page.locator(f'tr[data-id="{vid}"]')
    row.wait_for()
    assert "console-vol" in row.text_content() and "not attached" in row.text_content()
    # The NBD URI is where the API says the export is served (DescribeNbdEndpoints): nothing typed.
    uri = row.locator(".nbd-uri").text_content()
    assert uri == f"nbds://{ident}@127.0.0.1:{srv.nbd_port}/{vid}?tls-psk-file=keys.psk"
    assert "not attached" in row.locator(".nbd-reason").text_content()
    poll(lambda: ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["State"], lambda s: s == "available")

    # Attach it to an instance from the page: its NBD export is served while attached.
    image = ec2.describe_images()["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=image, MinCount=1, MaxCount=1,
                             Placement={"AvailabilityZone": f"{srv.region}a"})["Instances"][0]["InstanceId"]
    poll(lambda: ec2.describe_instances(InstanceIds=[inst])["Reservations"][0]["Instances"][0]["State"]["Name"],
         lambda s: s == "running")
    # By keyboard: the dialog opens on its first field, a bad device name is refused next to its
    # field (focused), Enter attaches, and the focus lands back in the volume's row.
    dlg = open_dialog(page, f"Attach {vid}", f"Attach {vid}")
    assert focused(page) == "Instance" and dlg.get_by_label("Instance", exact=True).input_value() == inst
    page.keyboard.press("Tab")
    assert focused(page) == "Device name"
    retype(page, "sdf")
    page.keyboard.press("Enter")
    assert "/dev/sdf" in field_error(dlg, "Device name") and focused(page) == "Device name"
    page.screenshot(path=str(shots / "attach-dialog.png"))
    retype(page, "/dev/sdf")
    page.keyboard.press("Enter")
    status_text(page, rf"Attached {vid} to {inst} as /dev/sdf")
    dlg.wait_for(state="detached")
    assert ec2.describe_volumes(VolumeIds=[vid])["Volumes"][0]["Attachments"][0]["InstanceId"] == inst
    page.wait_for_function("id => document.activeElement.closest('tr')?.dataset.id === id", arg=vid)
    page.locator(f'tr[data-id="{vid}"] .nbd-reason').wait_for(state="detached")
    page.wait_for_function("id => /attached\)/.test(document.querySelector(`tr[data-id='${id}']`)?.textContent)", arg=vid)
    assert inst in page.locator(f'tr[data-id="{vid}"]').text_content()

    # Write over NBD, snapshot from the page, watch the progress bar reach 100 % on the Snapshots page.
    nbd.qemu_io(srv, vid, "write -P 0xab 0 4M", "flush")
    # Escape cancels (nothing is created) and gives the focus back to the button.
    dlg = open_dialog(page, f"Create snapshot of {vid}", f"Create a snapshot of {vid}")
    page.keyboard.type("never")
    page.keyboard.press("Escape")
    dlg.wait_for(state="detached")
    assert focused(page) == f"Create snapshot of {vid}"
    assert ec2.describe_snapshots(Filters=[{"Name": "volume-id", "Values": [vid]}])["Snapshots"] == []
    dlg = open_dialog(page, f"Create snapshot of {vid}", f"Create a snapshot of {vid}")
    assert focused(page) == "Description"
    page.keyboard.type("first")
    page.keyboard.press("Enter")
    s1 = status_text(page, r"Snapshot (snap-[0-9a-f]+) started").group(1)
    assert ec2.describe_snapshots(SnapshotIds=[s1])["Snapshots"][0]["Description"] == "first"
    assert focused(page) == f"Create snapshot of {vid}"
    page.screenshot(path=str(shots / "volumes.png"), full_page=True)
    page.get_by_role("link", name="Snapshots").click()
    page.get_by_role("heading", name=f"Snapshots in {srv.region}").wait_for()
    page.wait_for_function(
        "id => { const r = document.querySelector(`tr[data-id='${id}']`);"
        " return r && r.dataset.state === 'completed' && r.querySelector('progress').value === 100; }", arg=s1)
    assert "100%" in page.locator(f'tr[data-id="{s1}"] .progress').text_content()

    # Live, without a reload: a snapshot written through the EBS direct APIs stays pending until
    # completed; its row on the open page turns completed at 100 % in place.
    ebs = srv.session().client("ebs", endpoint_url=srv.endpoint)
    live = ebs.start_snapshot(VolumeSize=1, Description="live")["SnapshotId"]
    page.get_by_role("link", name="Volumes").click()
    page.get_by_role("link", name="Snapshots").click()
    page.wait_for_function(
        "id => { const r = document.querySelector(`tr[data-id='${id}']`);"
        " if (r && r.dataset.state === 'pending') { window.__row = r; return true; } return false; }", arg=live)
    ebs.complete_snapshot(SnapshotId=live, ChangedBlocksCount=0)
    page.wait_for_function(
        "() => window.__row.isConnected && window.__row.dataset.state === 'completed'"
        " && window.__row.querySelector('progress').value === 100")

    # A second snapshot: the lineage shows it as a child of the first, with the bytes it added.
    nbd.qemu_io(srv, vid, "write -P 0xcd 8M 2M", "flush")
    s2 = ec2.create_snapshot(VolumeId=vid, Description="second")["SnapshotId"]
    page.get_by_role("link", name="Volumes").click()
    page.get_by_role("link", name="Snapshots").click()
    page.wait_for_function(
        "id => document.querySelector(`tr[data-id='${id}']`)?.dataset.state === 'completed'", arg=s2)
    page.get_by_role("button", name=f"Lineage of {vid}").first.click()
    child = page.locator(f'#lineage li[data-id="{s1}"] li[data-id="{s2}"]')
    child.wait_for()
    assert f"incremental on {s1}" in child.text_content() and "added" in child.text_content()

    # Restore the second snapshot to a new, larger volume.
    dlg = open_dialog(page, f"Restore {s2}", f"Restore {s2} to a new volume")
    assert focused(page) == "Availability Zone"
    page.keyboard.press("Tab")
    assert focused(page) == "Size (GiB)"
    retype(page, "2")
    page.keyboard.press("Enter")
    restored = status_text(page, rf"Restored {s2} to (vol-[0-9a-f]+)").group(1)
    v = ec2.describe_volumes(VolumeIds=[restored])["Volumes"][0]
    assert (v["SnapshotId"], v["Size"], v["AvailabilityZone"]) == (s2, 2, f"{srv.region}a")

    # Share the first snapshot: a malformed account id is refused next to its field.
    dlg = open_dialog(page, f"Share {s1}", f"Share {s1}")
    assert "Not shared" in dlg.text_content()
    page.keyboard.type("1234")
    page.keyboard.press("Enter")
    assert "12 digits" in field_error(dlg, "Account ID")
    retype(page, "111122223333")
    page.keyboard.press("Enter")
    status_text(page, rf"Shared {s1} with 111122223333")
    perms = ec2.describe_snapshot_attribute(SnapshotId=s1, Attribute="createVolumePermission")
    assert perms["CreateVolumePermissions"] == [{"UserId": "111122223333"}]

    # Copy it to another region: the copy appears in the lineage under s2 and completes there.
    dlg = open_dialog(page, f"Copy {s2}", f"Copy {s2} to a region")
    assert focused(page) == "Destination region"
    page.keyboard.type(OTHER_REGION)  # the select's type-ahead
    assert dlg.get_by_label("Destination region").input_value() == OTHER_REGION
    page.keyboard.press("Tab")
    page.keyboard.press("Enter")
    copy = status_text(page, rf"Copying {s2} to {OTHER_REGION} as (snap-[0-9a-f]+)").group(1)
    node = page.locator(f'#lineage li[data-id="{s2}"] li[data-id="{copy}"]')
    node.wait_for()
    assert OTHER_REGION in node.text_content() and f"copy of {s2} from {srv.region}" in node.text_content()
    page.wait_for_function(
        "id => document.querySelector(`#lineage li[data-id='${id}']`)?.dataset.state === 'completed'", arg=copy)
    page.screenshot(path=str(shots / "snapshots.png"), full_page=True)

    # Delete the restored volume, with the confirmation.
    page.get_by_role("link", name="Volumes").click()
    page.locator(f'tr[data-id="{restored}"]').wait_for()
    dlg = open_dialog(page, f"Delete {restored}", f"Delete {restored}?")
    assert focused(page) == "Delete volume"
    page.keyboard.press("Enter")
    status_text(page, rf"Deleted {restored}")
    page.locator(f'tr[data-id="{restored}"]').wait_for(state="detached")

    # The Store page: the region's numbers and a chart.
    page.get_by_role("link", name="Store").click()
    region_row = page.locator(f'tr[data-region="{srv.region}"]')
    region_row.wait_for()
    assert int(region_row.locator("td").nth(0).text_content()) == 3
    assert "B" in region_row.locator(".stored").text_content()
    assert ": 1" in region_row.locator(".ratio").text_content()
    assert page.locator("svg.chart polyline").count() == 2
    # The chart is the server's history (GetStoreStats History), so a reload draws it at once.
    page.reload()
    page.locator("figure[data-samples] svg.chart").wait_for()
    assert int(page.locator("figure[data-samples]").get_attribute("data-samples")) >= 1
    page.screenshot(path=str(shots / "store.png"), full_page=True)

    # Another account sees none of this, and the root account none of its volume.
    other = srv.create_account()
    theirs = srv.client(creds=other).create_volume(AvailabilityZone=f"{srv.region}a", Size=1)["VolumeId"]
    page.get_by_role("link", name="Volumes").click()
    page.locator(f'tr[data-id="{vid}"]').wait_for()
    assert page.locator(f'tr[data-id="{theirs}"]').count() == 0
    page.get_by_role("button", name="Sign out").click()
    sign_in(page, srv, other)
    page.locator(f'tr[data-id="{theirs}"]').wait_for()
    assert page.locator(f'tr[data-id="{vid}"]').count() == 0
    page.get_by_role("link", name="Snapshots").click()
    page.get_by_role("heading", name=f"Snapshots in {srv.region}").wait_for()
    page.get_by_role("table", name="EC2 snapshots (yours)").wait_for()
    body = page.locator("main").text_content()
    assert s1 not in body and s2 not in body
    page.screenshot(path=str(shots / "other-account.png"), full_page=True)
    assert len(list(shots.iterdir())) == 6


def test_console_lightsail_disk_snapshot_actions(server, page, tmp_path):
    """Lightsail rows have the Lightsail console's actions, each followed through its operation."""
    creds = server.create_account()
    ls = server.session(creds).client("lightsail", endpoint_url=server.endpoint)
    ls.create_disk(diskName="data-disk", availabilityZone=f"{server.region}a", sizeInGb=8)
    sign_in(page, server, creds)
    page.locator('section[aria-label="Lightsail disks"] tr[data-id="data-disk"]').wait_for()

    # Snapshot the disk: a bad name is refused next to its field, then the operation is followed.
    dlg = open_dialog(page, "Create snapshot of disk data-disk", "Snapshot Lightsail disk data-disk")
    assert focused(page) == "Snapshot name"
    retype(page, "-bad")
    page.keyboard.press("Enter")
    assert "letters, digits" in field_error(dlg, "Snapshot name")
    retype(page, "data-snap")
    page.keyboard.press("Enter")
    op = status_text(page, r"Disk snapshot of data-disk started \(operation ([0-9a-f-]+)\)").group(1)
    page.wait_for_function("id => document.querySelector(`tr[data-op='${id}']`)?.dataset.status === 'Succeeded'", arg=op)
    assert ls.get_operation(operationId=op)["operation"]["status"] == "Succeeded"
    assert ls.get_disk_snapshot(diskSnapshotName="data-snap")["diskSnapshot"]["fromDiskName"] == "data-disk"
    page.screenshot(path=str(tmp_path / "lightsail-volumes.png"), full_page=True)

    # Create a disk from it: a name in use is the server's refusal, shown next to the name.
    page.get_by_role("link", name="Snapshots").click()
    page.wait_for_function(
        "() => { const b = document.querySelector('button[aria-label=\"Create disk from data-snap\"]'); return b && !b.disabled; }")
    dlg = open_dialog(page, "Create disk from data-snap", "Create a Lightsail disk from data-snap")
    assert focused(page) == "Disk name"
    retype(page, "data-disk")
    page.keyboard.press("Enter")
    assert "already in use" in field_error(dlg, "Disk name")
    retype(page, "restored-disk")
    page.keyboard.press("Tab")
    page.keyboard.press("Tab")
    assert focused(page) == "Size (GB)"
    retype(page, "16")
    page.keyboard.press("Enter")
    status_text(page, r"Creating disk restored-disk from data-snap")
    page.wait_for_function(
        "() => [...document.querySelectorAll('tr[data-op]')].some((r) => r.textContent.includes('CreateDiskFromSnapshot')"
        " && r.dataset.status === 'Succeeded')")
    disk = ls.get_disk(diskName="restored-disk")["disk"]
    assert (disk["sizeInGb"], disk["state"]) == (16, "available")
    page.screenshot(path=str(tmp_path / "lightsail-snapshots.png"), full_page=True)

    # Delete the snapshot, confirmed in a dialog.
    dlg = open_dialog(page, "Delete disk snapshot data-snap", "Delete disk snapshot data-snap?")
    page.keyboard.press("Enter")
    status_text(page, r"Deleted disk snapshot data-snap")
    page.locator('section[aria-label="Lightsail snapshots"] tr[data-id="data-snap"]').wait_for(state="detached")
    assert ls.get_disk_snapshots()["diskSnapshots"] == []

"""The Hetzner Cloud fake rejects what the API rejects and answers in the shapes hcloud's own
unit-test fixtures use (hetznercloud/hcloud-python, tests/unit/servers/conftest.py and
tests/unit/ssh_keys/conftest.py)."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from hcloud.core.domain import Pagination
from hcloud_support import running_fake

from clonefleet.fakes.hcloud import DEFAULT_TOKEN, HcloudFake, ssh_fingerprint
from clonefleet.fakes.machines import RecordingMachines
from clonefleet.ssh import generate_ed25519

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {DEFAULT_TOKEN}"}

# Field sets of hcloud-python's fixtures (response_simple_server, response_create_simple_server,
# response_server_enable_rescue, the ssh key fixtures); `location` is what hcloud 2.27 reads
# since `datacenter` was deprecated.
SERVER_FIELDS = {"id", "name", "status", "created", "public_net", "private_net", "server_type",
                 "datacenter", "image", "iso", "rescue_enabled", "locked", "backup_window",
                 "outgoing_traffic", "ingoing_traffic", "included_traffic", "primary_disk_size",
                 "protection", "labels", "volumes"}
PUBLIC_NET_FIELDS = {"ipv4", "ipv6", "floating_ips", "firewalls"}
IPV4_FIELDS = {"ip", "id", "blocked", "dns_ptr"}
ACTION_FIELDS = {"id", "command", "status", "progress", "started", "finished", "resources",
                 "error"}
SERVER_TYPE_FIELDS = {"id", "name", "description", "cores", "memory", "disk", "prices",
                      "storage_type", "cpu_type"}
SSH_KEY_FIELDS = {"id", "name", "fingerprint", "public_key", "labels", "created"}


@pytest.fixture()
def machines() -> RecordingMachines:
    return RecordingMachines()


@pytest.fixture()
def fake(machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch) -> Iterator[HcloudFake]:
    with running_fake(machines, monkeypatch) as server:
        yield server


def call(fake: HcloudFake, method: str, path: str, body: Any = None,
         headers: dict[str, str] | None = None, **params: Any) -> requests.Response:
    return requests.request(method, fake.url + path, json=body, params=params or None,
                            headers=AUTH if headers is None else headers, timeout=5)


def create(fake: HcloudFake, name: str = "node-1", **fields: Any) -> dict[str, Any]:
    body = {"name": name, "server_type": "cx22", "image": "debian-12", "location": "fsn1",
            **fields}
    response = call(fake, "POST", "/servers", body)
    assert response.status_code == 201, response.text
    data: dict[str, Any] = response.json()
    return data


def finish(fake: HcloudFake, action_id: int) -> dict[str, Any]:
    for _ in range(200):
        action: dict[str, Any] = call(fake, "GET", f"/actions/{action_id}").json()["action"]
        if action["status"] != "running":
            return action
        time.sleep(0.005)
    raise AssertionError(f"action {action_id} never finished")


def error_of(response: requests.Response) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "details"}
    error: dict[str, Any] = body["error"]
    return error


# -- authentication and rate limits ------------------------------------------------------------

@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": f"Basic {DEFAULT_TOKEN}"}])
def test_requests_without_a_valid_bearer_token_are_401_unauthorized(
        fake: HcloudFake, headers: dict[str, str]) -> None:
    response = call(fake, "GET", "/servers", headers=headers)

    assert response.status_code == 401
    assert error_of(response)["code"] == "unauthorized"


def test_every_answer_carries_rate_limit_headers_and_a_spent_budget_is_429(
        machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_fake(machines, monkeypatch, rate_limit=3, rate_refill_per_second=0.001) as fake:
        answers = [call(fake, "GET", "/servers") for _ in range(4)]

    assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
    assert [answer.headers["RateLimit-Remaining"] for answer in answers] == ["2", "1", "0", "0"]
    assert all(answer.headers["RateLimit-Limit"] == "3" for answer in answers)
    assert int(answers[-1].headers["RateLimit-Reset"]) > time.time()
    assert error_of(answers[-1])["code"] == "rate_limit_exceeded"


# -- rejected creates --------------------------------------------------------------------------

@pytest.mark.parametrize(("field", "value"), [("server_type", "cx999"), ("location", "mars1"),
                                              ("image", "windows-95"), ("name", "no_under")])
def test_unknown_type_location_image_and_bad_names_are_invalid_input(
        fake: HcloudFake, field: str, value: str) -> None:
    body = {"name": "node-1", "server_type": "cx22", "image": "debian-12", "location": "fsn1",
            field: value}

    response = call(fake, "POST", "/servers", body)

    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "invalid_input"
    assert [entry["name"] for entry in error["details"]["fields"]] == [field]
    assert fake.api.servers == {}


def test_a_type_not_sold_in_a_location_is_412_resource_unavailable(fake: HcloudFake) -> None:
    response = call(fake, "POST", "/servers", {"name": "us-1", "server_type": "cx22",
                                               "image": "debian-12", "location": "ash"})

    assert response.status_code == 412
    assert error_of(response)["code"] == "resource_unavailable"


def test_duplicate_names_bad_labels_unknown_keys_and_bad_json_are_rejected(
        fake: HcloudFake) -> None:
    create(fake, "taken")

    duplicate = call(fake, "POST", "/servers", {"name": "taken", "server_type": "cx22",
                                                "image": "debian-12"})
    bad_label = call(fake, "POST", "/servers", {"name": "n2", "server_type": "cx22",
                                                "image": "debian-12",
                                                "labels": {"Bad Key": "x"}})
    unknown_key = call(fake, "POST", "/servers", {"name": "n3", "server_type": "cx22",
                                                  "image": "debian-12", "ssh_keys": ["nope"]})
    bad_json = requests.post(fake.url + "/servers", data=b"{not json", headers=AUTH, timeout=5)

    assert (duplicate.status_code, error_of(duplicate)["code"]) == (409, "uniqueness_error")
    assert (bad_label.status_code, error_of(bad_label)["code"]) == (400, "invalid_input")
    assert (unknown_key.status_code, error_of(unknown_key)["code"]) == (400, "invalid_input")
    assert (bad_json.status_code, error_of(bad_json)["code"]) == (400, "json_error")


def test_an_arm_image_needs_an_arm_server_type(fake: HcloudFake) -> None:
    server = create(fake, "arm-1", server_type="cax11")["server"]

    assert server["image"]["architecture"] == "arm"
    assert server["server_type"]["architecture"] == "arm"


# -- payload shapes ----------------------------------------------------------------------------

def test_create_answers_in_the_shape_of_hclouds_fixtures(fake: HcloudFake) -> None:
    data = create(fake, labels={"clonefleet/node": "node-1"})

    assert set(data) == {"server", "action", "next_actions", "root_password"}
    server = data["server"]
    assert set(server) >= SERVER_FIELDS and "location" in server
    assert set(server["public_net"]) >= PUBLIC_NET_FIELDS
    assert set(server["public_net"]["ipv4"]) >= IPV4_FIELDS
    assert set(server["server_type"]) >= SERVER_TYPE_FIELDS
    assert set(data["action"]) == ACTION_FIELDS
    assert (data["action"]["command"], data["action"]["status"]) == ("create_server",
                                                                     "running")
    assert data["action"]["resources"] == [{"id": server["id"], "type": "server"}]
    assert [action["command"] for action in data["next_actions"]] == ["start_server"]
    assert server["status"] == "initializing" and server["locked"] is True
    # No SSH key given: the API answers with a root password (and mails it).
    assert isinstance(data["root_password"], str) and data["root_password"]


def test_ssh_keys_have_hetzners_fingerprint_and_a_key_suppresses_the_root_password(
        fake: HcloudFake, tmp_path: Path) -> None:
    line = generate_ed25519("me").public_line
    answer = call(fake, "POST", "/ssh_keys", {"name": "me", "public_key": line})
    key = answer.json()["ssh_key"]

    assert answer.status_code == 201 and set(key) == SSH_KEY_FIELDS
    (tmp_path / "key.pub").write_text(line + "\n")
    keygen = subprocess.run(["ssh-keygen", "-l", "-E", "md5", "-f", str(tmp_path / "key.pub")],
                            capture_output=True, text=True, check=True).stdout
    assert f"MD5:{key['fingerprint']}" in keygen
    assert ssh_fingerprint(line) == key["fingerprint"]
    again = call(fake, "POST", "/ssh_keys", {"name": "other", "public_key": line})
    assert (again.status_code, error_of(again)["code"]) == (409, "uniqueness_error")
    garbage = call(fake, "POST", "/ssh_keys", {"name": "x", "public_key": "not a key"})
    assert (garbage.status_code, error_of(garbage)["code"]) == (400, "invalid_input")
    by_fingerprint = call(fake, "GET", "/ssh_keys", fingerprint=key["fingerprint"])
    assert [entry["id"] for entry in by_fingerprint.json()["ssh_keys"]] == [key["id"]]

    assert create(fake, ssh_keys=["me"])["root_password"] is None


def test_lists_paginate_with_hclouds_pagination_fields(fake: HcloudFake) -> None:
    for index in range(3):
        create(fake, f"node-{index}")

    first = call(fake, "GET", "/servers", per_page=2).json()
    second = call(fake, "GET", "/servers", per_page=2, page=2).json()

    assert set(first["meta"]["pagination"]) == set(Pagination.__api_properties__)
    assert first["meta"]["pagination"] == {"page": 1, "per_page": 2, "previous_page": None,
                                           "next_page": 2, "last_page": 2,
                                           "total_entries": 3}
    assert [server["name"] for server in first["servers"] + second["servers"]] == \
        ["node-0", "node-1", "node-2"]
    assert second["meta"]["pagination"]["next_page"] is None


@pytest.mark.parametrize(("selector", "names"), [
    ("role=db", ["a"]), ("role==db", ["a"]), ("role!=db", ["b", "c"]), ("role", ["a", "b"]),
    ("!role", ["c"]), ("role in (db, web)", ["a", "b"]), ("role notin (db)", ["b", "c"]),
    ("role=web,env=prod", ["b"]), ("clonefleet/fleet=f1", ["a", "b", "c"]),
])
def test_label_selectors_filter_like_the_api(
        fake: HcloudFake, selector: str, names: list[str]) -> None:
    create(fake, "a", labels={"role": "db", "clonefleet/fleet": "f1"})
    create(fake, "b", labels={"role": "web", "env": "prod", "clonefleet/fleet": "f1"})
    create(fake, "c", labels={"clonefleet/fleet": "f1"})

    answer = call(fake, "GET", "/servers", label_selector=selector).json()

    assert [server["name"] for server in answer["servers"]] == names


def test_a_malformed_label_selector_is_invalid_input(fake: HcloudFake) -> None:
    response = call(fake, "GET", "/servers", label_selector="role=a,,x")

    assert (response.status_code, error_of(response)["code"]) == (400, "invalid_input")


# -- actions and the machine room --------------------------------------------------------------

def test_actions_progress_and_the_server_becomes_running_and_boots_its_disk(
        machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_fake(machines, monkeypatch, action_seconds=0.3) as fake:
        data = create(fake)
        server_id = data["server"]["id"]
        early = call(fake, "GET", f"/actions/{data['action']['id']}").json()["action"]
        done = finish(fake, data["next_actions"][0]["id"])
        server = call(fake, "GET", f"/servers/{server_id}").json()["server"]

    assert early["status"] == "running" and 0 <= early["progress"] < 100
    assert early["finished"] is None and early["error"] is None
    assert (done["status"], done["progress"]) == ("success", 100) and done["finished"]
    assert (server["status"], server["locked"]) == ("running", False)
    # The machine room learns the server when it is created, then it boots from disk.
    assert machines.calls == [("created", str(server_id), "node-1"),
                              ("power_on", str(server_id), "disk")]


def test_a_second_action_while_one_runs_is_423_locked(
        machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch) -> None:
    with running_fake(machines, monkeypatch, action_seconds=5) as fake:
        server_id = create(fake)["server"]["id"]
        response = call(fake, "POST", f"/servers/{server_id}/actions/reset")

    assert (response.status_code, error_of(response)["code"]) == (423, "locked")


def test_rescue_serves_the_next_boot_only(fake: HcloudFake, machines: RecordingMachines
                                          ) -> None:
    data = create(fake)
    server_id = data["server"]["id"]
    finish(fake, data["next_actions"][0]["id"])
    line = generate_ed25519("me").public_line
    key = call(fake, "POST", "/ssh_keys", {"name": "me", "public_key": line}).json()["ssh_key"]

    rescue = call(fake, "POST", f"/servers/{server_id}/actions/enable_rescue",
                  {"type": "linux64", "ssh_keys": [key["id"]]})
    assert rescue.status_code == 201 and set(rescue.json()) == {"action", "root_password"}
    finish(fake, rescue.json()["action"]["id"])
    assert call(fake, "GET", f"/servers/{server_id}").json()["server"]["rescue_enabled"]
    finish(fake, call(fake, "POST", f"/servers/{server_id}/actions/reset")
           .json()["action"]["id"])
    after = call(fake, "GET", f"/servers/{server_id}").json()["server"]
    finish(fake, call(fake, "POST", f"/servers/{server_id}/actions/reset")
           .json()["action"]["id"])

    assert after["rescue_enabled"] is False
    assert [mode for call, _, mode in machines.calls if call == "power_on"] == \
        ["disk", "rescue", "disk"]


def test_enable_rescue_rejects_unknown_key_ids_names_and_types(fake: HcloudFake) -> None:
    data = create(fake)
    server_id = data["server"]["id"]
    finish(fake, data["next_actions"][0]["id"])
    path = f"/servers/{server_id}/actions/enable_rescue"

    for body in ({"ssh_keys": [424242]}, {"ssh_keys": ["me"]}, {"type": "freebsd64"}):
        response = call(fake, "POST", path, body)
        assert (response.status_code, error_of(response)["code"]) == (400, "invalid_input")


def test_unused_rescue_expires(machines: RecordingMachines, monkeypatch: pytest.MonkeyPatch
                               ) -> None:
    with running_fake(machines, monkeypatch, rescue_expiry_seconds=0.05) as fake:
        data = create(fake)
        server_id = data["server"]["id"]
        finish(fake, data["next_actions"][0]["id"])
        finish(fake, call(fake, "POST", f"/servers/{server_id}/actions/enable_rescue",
                          {"type": "linux64"}).json()["action"]["id"])
        time.sleep(0.1)
        server = call(fake, "GET", f"/servers/{server_id}").json()["server"]

    assert server["rescue_enabled"] is False


def test_poweroff_and_delete_reach_the_machines_and_a_deleted_server_is_404(
        fake: HcloudFake, machines: RecordingMachines) -> None:
    data = create(fake)
    server_id = data["server"]["id"]
    finish(fake, data["next_actions"][0]["id"])

    finish(fake, call(fake, "POST", f"/servers/{server_id}/actions/poweroff")
           .json()["action"]["id"])
    assert call(fake, "GET", f"/servers/{server_id}").json()["server"]["status"] == "off"
    deleted = call(fake, "DELETE", f"/servers/{server_id}")
    finish(fake, deleted.json()["action"]["id"])
    gone = call(fake, "GET", f"/servers/{server_id}")

    assert (gone.status_code, error_of(gone)["code"]) == (404, "not_found")
    assert machines.calls[-2:] == [("power_off", str(server_id), ""),
                                   ("power_off", str(server_id), "")]


def test_a_servers_action_is_not_found_under_another_server(fake: HcloudFake) -> None:
    first, second = create(fake, "one"), create(fake, "two")

    response = call(fake, "GET",
                    f"/servers/{second['server']['id']}/actions/{first['action']['id']}")
    own = call(fake, "GET", f"/servers/{first['server']['id']}/actions/{first['action']['id']}")

    assert (response.status_code, error_of(response)["code"]) == (404, "not_found")
    assert own.status_code == 200


def test_injected_failures_answer_with_the_documented_codes(fake: HcloudFake) -> None:
    fake.inject("server_error")
    fake.inject("rate_limit")
    fake.inject("bad_gateway")
    answers = [call(fake, "GET", "/servers") for _ in range(4)]

    assert [answer.status_code for answer in answers] == [429, 500, 502, 200]
    assert error_of(answers[0])["code"] == "rate_limit_exceeded"
    assert answers[0].headers["RateLimit-Remaining"] == "0"
    assert error_of(answers[1])["code"] == "service_error"
    with pytest.raises(ValueError):
        fake.inject("meteor")


def test_catalogues_list_what_creation_accepts(fake: HcloudFake) -> None:
    types = call(fake, "GET", "/server_types").json()["server_types"]
    locations = call(fake, "GET", "/locations").json()["locations"]
    images = call(fake, "GET", "/images", architecture="x86").json()["images"]

    assert "cx22" in {entry["name"] for entry in types}
    assert {"fsn1", "nbg1", "hel1", "ash"} <= {entry["name"] for entry in locations}
    assert {image["architecture"] for image in images} == {"x86"}

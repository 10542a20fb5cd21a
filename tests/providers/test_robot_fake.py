"""The Robot fake rejects what the Robot webservice rejects, in its shapes.

Payload shapes are the ones community.hrobot's unit-test fixtures use (tests/unit/plugins/
modules/test_boot.py, test_reset.py, test_ssh_key.py) and the documented error bodies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import requests

from clonefleet.fakes.machines import BootMode, RecordingMachines
from clonefleet.fakes.robot import RobotFake, make_server
from clonefleet.providers.robot_client import md5_fingerprint
from clonefleet.ssh import generate_ed25519

pytestmark = pytest.mark.integration

AUTH = ("robot", "robot-secret")


class KeyMachines(RecordingMachines):
    """Records the keys each power-on authorizes too."""

    def __init__(self) -> None:
        super().__init__()
        self.keys: list[list[str]] = []

    def power_on(self, server: str, mode: BootMode, ssh_keys: list[str]) -> None:
        self.keys.append(list(ssh_keys))
        super().power_on(server, mode, ssh_keys)


@pytest.fixture
def machines() -> KeyMachines:
    return KeyMachines()


@pytest.fixture
def fake(machines: KeyMachines) -> Iterator[RobotFake]:
    server = make_server(machines, boot_delay=0.01).start()
    server.add_server(321, "fsn-robot-1", "203.0.113.70", "2a01:4f8:111:4221::",
                      rescue_host_keys=["SHA256:abc"])
    yield server
    server.shutdown()


def call(fake: RobotFake, method: str, path: str, data: object = None,
         auth: tuple[str, str] = AUTH) -> requests.Response:
    return requests.request(method, fake.url + path, data=data, auth=auth, timeout=5)


def error_of(response: requests.Response) -> dict[str, object]:
    body = response.json()
    assert set(body) == {"error"}
    error: dict[str, object] = body["error"]
    assert error["status"] == response.status_code
    return error


def wait_for(condition: object, timeout: float = 3.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def test_wrong_login_gets_401_unauthorized_with_robot_error_body(fake: RobotFake) -> None:
    response = call(fake, "GET", "/server", auth=("robot", "wrong"))
    assert response.status_code == 401
    assert error_of(response)["code"] == "UNAUTHORIZED"
    assert "Basic" in response.headers["WWW-Authenticate"]


def test_no_login_gets_401(fake: RobotFake) -> None:
    response = requests.get(fake.url + "/server", timeout=5)
    assert response.status_code == 401


def test_server_list_wraps_each_server_as_documented(fake: RobotFake) -> None:
    body = call(fake, "GET", "/server").json()
    assert body == [{"server": {
        "server_ip": "203.0.113.70", "server_ipv6_net": "2a01:4f8:111:4221::",
        "server_number": 321, "server_name": "fsn-robot-1", "product": "AX41-NVMe",
        "dc": "FSN1-DC14", "traffic": "unlimited", "status": "ready", "cancelled": False,
        "paid_until": "2030-12-31"}}]


@pytest.mark.parametrize("method,path", [("GET", "/server/999"), ("GET", "/boot/999/rescue"),
                                         ("POST", "/boot/999/rescue"), ("GET", "/reset/999"),
                                         ("POST", "/reset/999")])
def test_unknown_server_is_404_server_not_found(fake: RobotFake, method: str,
                                                path: str) -> None:
    response = call(fake, method, path, {"os": "linux", "type": "hw"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "SERVER_NOT_FOUND"


def test_rescue_with_a_fingerprint_not_stored_in_the_account_is_invalid_input(
        fake: RobotFake) -> None:
    response = call(fake, "POST", "/boot/321/rescue",
                    [("os", "linux"), ("authorized_key[]", "00:11:22:33:44:55:66:77:88:99:aa:"
                                                          "bb:cc:dd:ee:ff")])
    assert response.status_code == 400
    error = error_of(response)
    assert error["code"] == "INVALID_INPUT"
    assert error["invalid"] == ["authorized_key"]
    assert call(fake, "GET", "/boot/321/rescue").json()["rescue"]["active"] is False


def test_rescue_without_os_is_invalid_input_naming_the_missing_field(fake: RobotFake) -> None:
    response = call(fake, "POST", "/boot/321/rescue", {})
    assert response.status_code == 400
    assert error_of(response)["missing"] == ["os"]


def test_rescue_on_a_server_in_process_is_refused(fake: RobotFake) -> None:
    fake.set_status(321, "in process")
    assert call(fake, "GET", "/server/321").json()["server"]["status"] == "in process"
    response = call(fake, "POST", "/boot/321/rescue", {"os": "linux"})
    assert response.status_code == 404
    assert error_of(response)["code"] == "BOOT_NOT_AVAILABLE"


def test_injected_in_process_passes_after_its_requests(fake: RobotFake) -> None:
    fake.inject("in_process", times=1)
    assert call(fake, "POST", "/boot/321/rescue", {"os": "linux"}).status_code == 404
    assert call(fake, "POST", "/boot/321/rescue", {"os": "linux"}).status_code == 200


@pytest.mark.parametrize("reset_type", ["reboot", "power"])
def test_reset_type_unknown_or_not_offered_is_invalid_input(fake: RobotFake,
                                                            reset_type: str) -> None:
    response = call(fake, "POST", "/reset/321", {"type": reset_type})
    assert response.status_code == 400
    error = error_of(response)
    assert (error["code"], error["invalid"]) == ("INVALID_INPUT", ["type"])


def test_reset_options_in_the_shape_of_the_fixtures(fake: RobotFake) -> None:
    body = call(fake, "GET", "/reset/321").json()
    assert body == {"reset": {"server_ip": "203.0.113.70",
                              "server_ipv6_net": "2a01:4f8:111:4221::", "server_number": 321,
                              "type": ["sw", "hw", "man"], "operating_status": "not supported"}}


def test_second_activation_while_armed_is_a_conflict(fake: RobotFake) -> None:
    assert call(fake, "POST", "/boot/321/rescue", {"os": "linux"}).status_code == 200
    response = call(fake, "POST", "/boot/321/rescue", {"os": "linux"})
    assert response.status_code == 409
    assert error_of(response)["code"] == "BOOT_ALREADY_ENABLED"


def test_rescue_applies_at_the_next_reset_then_deactivates_itself(
        fake: RobotFake, machines: KeyMachines) -> None:
    pair = generate_ed25519("operator")
    stored = call(fake, "POST", "/key", {"name": "operator", "data": pair.public_line})
    assert stored.status_code == 201
    fingerprint = stored.json()["key"]["fingerprint"]
    assert fingerprint == md5_fingerprint(pair.public_line)
    armed = call(fake, "POST", "/boot/321/rescue",
                 [("os", "linux"), ("authorized_key[]", fingerprint)]).json()["rescue"]
    assert set(armed) == {"server_ip", "server_ipv6_net", "server_number", "active", "arch",
                          "authorized_key", "boot_time", "host_key", "os", "password"}
    assert armed["active"] is True and armed["password"] and armed["host_key"] == []
    assert armed["authorized_key"][0]["key"]["fingerprint"] == fingerprint
    assert machines.calls == []  # nothing boots before the reset

    assert call(fake, "POST", "/reset/321", {"type": "hw"}).json()["reset"]["type"] == "hw"
    wait_for(lambda: machines.calls)
    assert machines.calls == [("power_on", "321", "rescue")]
    assert machines.keys == [[" ".join(pair.public_line.split()[:2])]]
    assert call(fake, "GET", "/boot/321/rescue").json()["rescue"]["active"] is False
    last = call(fake, "GET", "/boot/321/rescue/last").json()["rescue"]
    assert last["boot_time"] and last["host_key"] == ["SHA256:abc"] and last["os"] == "linux"

    call(fake, "POST", "/reset/321", {"type": "hw"})
    wait_for(lambda: len(machines.calls) == 2)
    assert machines.calls[1] == ("power_on", "321", "disk")


def test_key_list_is_404_when_empty_and_duplicates_conflict(fake: RobotFake) -> None:
    empty = call(fake, "GET", "/key")
    assert (empty.status_code, error_of(empty)["code"]) == (404, "NOT_FOUND")
    line = generate_ed25519().public_line
    assert call(fake, "POST", "/key", {"name": "a", "data": line}).status_code == 201
    again = call(fake, "POST", "/key", {"name": "b", "data": line})
    assert (again.status_code, error_of(again)["code"]) == (409, "KEY_ALREADY_EXISTS")
    bad = call(fake, "POST", "/key", {"name": "c", "data": "not a key"})
    assert (bad.status_code, error_of(bad)["invalid"]) == (400, ["data"])
    listed = call(fake, "GET", "/key").json()
    assert [item["key"]["name"] for item in listed] == ["a"]


def test_rate_limit_is_403_with_max_request_and_interval(machines: KeyMachines) -> None:
    fake = make_server(machines, max_request=2, interval=3600).start()
    try:
        fake.add_server(1, "a", "198.51.100.10")
        assert [call(fake, "GET", "/server").status_code for _ in range(2)] == [200, 200]
        limited = call(fake, "GET", "/server")
        assert limited.status_code == 403
        assert error_of(limited) == {"status": 403, "code": "RATE_LIMIT_EXCEEDED",
                                     "message": "Rate limit exceeded", "max_request": 2,
                                     "interval": 3600}
        # Limits are per call family: resets are counted apart from server reads.
        assert call(fake, "GET", "/reset/1").status_code == 200
    finally:
        fake.shutdown()


def test_ip_answer_carries_the_gateway_of_the_servers_network(fake: RobotFake) -> None:
    body = call(fake, "GET", "/ip/203.0.113.70").json()["ip"]
    assert (body["gateway"], body["mask"], body["broadcast"]) == ("203.0.113.65", 26,
                                                                  "203.0.113.127")


def test_injected_failures_answer_with_robot_codes(fake: RobotFake) -> None:
    fake.inject("server_error")
    assert error_of(call(fake, "GET", "/server"))["code"] == "INTERNAL_ERROR"
    fake.inject("reset_failed")
    failed = call(fake, "POST", "/reset/321", {"type": "hw"})
    assert (failed.status_code, error_of(failed)["code"]) == (500, "RESET_FAILED")
    with pytest.raises(ValueError, match="unknown failure"):
        fake.inject("locked")

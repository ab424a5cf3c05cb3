"""The webhooks' pure parts: Twilio's signature (against Twilio's published vectors) and what a
Clerk webhook becomes."""

from __future__ import annotations

import uuid

from api.routes.webhooks import WEBHOOK_NAMESPACE, clerk_event, twilio_signature

URL = "https://mycompany.com/myapp.php?foo=1&bar=2"
PARAMS = [
    ("CallSid", "CA1234567890ABCDE"),
    ("Caller", "+14158675309"),
    ("Digits", "1234"),
    ("From", "+14158675309"),
    ("To", "+18005551212"),
]


def test_twilio_signature_is_twilios_published_example() -> None:
    assert twilio_signature("12345", URL, PARAMS) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    # the order they are sent in does not matter; every input does
    assert twilio_signature("12345", URL, PARAMS[::-1]) == "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12346", URL, PARAMS) != "RSOYDt4T1cUTdK1PDd93/VVr8B8="
    assert twilio_signature("12345", URL + "&x=1", PARAMS) != "RSOYDt4T1cUTdK1PDd93/VVr8B8="


def test_twilio_signature_of_a_repeated_parameter_is_twilios() -> None:
    repeated = [
        ("Sid", "CA123"),
        ("SidAccount", "AC123"),
        ("Digits", "5678"),
        ("Digits", "1234"),
        ("Digits", "1234"),
    ]
    assert twilio_signature("12345", URL, repeated) == "IK+Dwps556ElfBT0I3Rgjkr1wJU="


def _user(**extra: object) -> dict[str, object]:
    return {
        "id": "user_29w83sxmDNGwOuEthce5gg56FcC",
        "first_name": "Priya",
        "last_name": "Sharma",
        "username": None,
        "primary_email_address_id": "idn_2",
        "email_addresses": [
            {"id": "idn_1", "email_address": "old@example.in"},
            {"id": "idn_2", "email_address": "priya@example.in"},
        ],
        "primary_phone_number_id": None,
        "phone_numbers": [{"id": "idn_3", "phone_number": "+919845012345"}],
        **extra,
    }


def test_a_clerk_user_created_is_a_user_registered_with_the_primary_email() -> None:
    ev = clerk_event(
        {"type": "user.created", "timestamp": 1_765_000_000_000, "data": _user()}, "msg_1"
    )
    assert ev is not None
    assert ev["id"] == str(uuid.uuid5(WEBHOOK_NAMESPACE, "clerk|msg_1"))
    assert ev["type"] == "user.registered"
    assert ev["occurred_at"].startswith("2025-12-06T")
    assert ev["data"] == {
        "user_id": "user_29w83sxmDNGwOuEthce5gg56FcC",
        "name": "Priya Sharma",
        "email": "priya@example.in",
        "phone": "+919845012345",
    }


def test_updated_deleted_and_other_types() -> None:
    up = clerk_event({"type": "user.updated", "data": _user(first_name=None)}, "msg_2")
    assert up is not None and up["type"] == "user.updated" and up["data"]["name"] == "Sharma"
    gone = clerk_event({"type": "user.deleted", "data": {"id": "user_9", "deleted": True}}, "m3")
    assert gone is not None and gone["data"] == {"user_id": "user_9", "reason": "USER_REQUEST"}
    assert clerk_event({"type": "session.created", "data": {}}, "m4") is None

"""What makes two requests with one Idempotency-Key the same request (`idempotency.key.fingerprint`):
a retry is replayed, anything else under the key is a 422. Survivors of `make mutation`."""

from __future__ import annotations

from {{ cookiecutter.package_name }}.platform.idempotency.key import fingerprint


def test_the_query_in_another_order_is_the_same_request_another_query_is_not() -> None:
    first = fingerprint("POST", "/p", "a=1&b=2", b"")
    assert fingerprint("POST", "/p", "b=2&a=1", b"") == first
    assert fingerprint("POST", "/p", "a=1&b=3", b"") != first
    assert fingerprint("POST", "/p", "a=1", b"") != first


def test_a_body_that_is_not_json_is_compared_byte_for_byte() -> None:
    first = fingerprint("POST", "/p", "", b"not json")
    assert fingerprint("POST", "/p", "", b"not json") == first
    assert fingerprint("POST", "/p", "", b"not json!") != first


def test_no_body_differs_from_any_body() -> None:
    empty = fingerprint("POST", "/p", "", b"")
    assert all(fingerprint("POST", "/p", "", body) != empty for body in (b"XXXX", b"{}", b'""', b"null"))

"""Digest authentication maths and header handling (sip/auth.py), against the RFC 7616 3.9.1 example."""

from __future__ import annotations

import hashlib
import random

import pytest

from dialbridge.sip.auth import (
    DigestChallenge,
    DigestClient,
    DigestCredentials,
    build_challenge,
    digest_response,
    parse_challenge,
    parse_challenges,
    parse_params,
    select_challenges,
    verify_authorization,
)

# RFC 7616 3.9.1: user Mufasa, password "Circle of Life", GET /dir/index.html.
MUFASA = DigestCredentials("Mufasa", "Circle of Life")
REALM = "http-auth@example.org"
NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC_RESPONSES = {
    "MD5": "8ca523f5e9506fed4657c9700eebdbec",
    "SHA-256": "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1",
}


@pytest.mark.parametrize("algorithm", sorted(RFC_RESPONSES))
def test_rfc7616_example_response(algorithm: str) -> None:
    response = digest_response(
        algorithm=algorithm,
        username="Mufasa",
        password="Circle of Life",
        realm=REALM,
        nonce=NONCE,
        method="GET",
        uri="/dir/index.html",
        qop="auth",
        nc="00000001",
        cnonce=CNONCE,
    )
    assert response == RFC_RESPONSES[algorithm]


@pytest.mark.parametrize("algorithm", sorted(RFC_RESPONSES))
def test_rfc7616_example_authorization_verifies(algorithm: str) -> None:
    header = (
        f'Digest username="Mufasa", realm="{REALM}", uri="/dir/index.html", algorithm={algorithm}, '
        f'nonce="{NONCE}", nc=00000001, cnonce="{CNONCE}", qop=auth, '
        f'response="{RFC_RESPONSES[algorithm]}", opaque="{OPAQUE}"'
    )
    assert verify_authorization(header, method="GET", credentials=MUFASA, realm=REALM, nonce=NONCE)
    wrong = DigestCredentials("Mufasa", "Circle of Life!")
    assert not verify_authorization(header, method="GET", credentials=wrong)
    assert not verify_authorization(header, method="POST", credentials=MUFASA)
    assert not verify_authorization(header, method="GET", credentials=MUFASA, nonce="other")
    assert not verify_authorization(header, method="GET", credentials=MUFASA, realm="other")


def test_auth_int_and_sess_formulas() -> None:
    """Independent of digest_response: RFC 7616 3.4.2 (-sess HA1) and 3.4.3 (auth-int A2), written out by hand."""

    def sha(text: str | bytes) -> str:
        return hashlib.sha256(text.encode() if isinstance(text, str) else text).hexdigest()

    body = b"v=0\r\n"
    ha1 = sha(f"{sha('Mufasa:' + REALM + ':Circle of Life')}:{NONCE}:{CNONCE}")
    ha2 = sha(f"INVITE:sip:x@y:{sha(body)}")
    expected = sha(f"{ha1}:{NONCE}:00000001:{CNONCE}:auth-int:{ha2}")
    kwargs = {"username": "Mufasa", "password": "Circle of Life", "realm": REALM, "nonce": NONCE}
    got = digest_response(
        algorithm="SHA-256-sess", method="INVITE", uri="sip:x@y", qop="auth-int", nc="00000001", cnonce=CNONCE,
        body=body, **kwargs,
    )  # fmt: skip
    assert got == expected


def test_parse_challenge_quoted_commas_and_defaults() -> None:
    challenge = parse_challenge(
        f'Digest realm="{REALM}", qop="auth, auth-int", algorithm=sha-256, nonce="{NONCE}", '
        f'opaque="{OPAQUE}", stale=TRUE'
    )
    assert challenge == DigestChallenge(
        realm=REALM, nonce=NONCE, algorithm="SHA-256", qop=("auth", "auth-int"), opaque=OPAQUE, stale=True
    )
    assert parse_challenge('Digest realm="a, \\"b\\"", nonce=n') == DigestChallenge(realm='a, "b"', nonce="n")
    assert parse_challenge('Basic realm="x"') is None
    assert parse_challenge('Digest realm="x"') is None  # no nonce
    assert parse_challenge('Digest realm="x, nonce=y') is None  # unterminated quote


def test_select_prefers_sha256_per_realm() -> None:
    challenges = parse_challenges(
        [
            'Digest realm="a", nonce="1", algorithm=MD5',
            'Digest realm="a", nonce="2", algorithm=SHA-256',
            'Digest realm="b", nonce="3"',
            'Digest realm="c", nonce="4", algorithm=SHA-3-FANCY',
        ]
    )
    chosen = select_challenges(challenges)
    assert [(c.realm, c.nonce, c.algorithm) for c in chosen] == [("a", "2", "SHA-256"), ("b", "3", "MD5")]


@pytest.mark.parametrize("algorithm", ["MD5", "MD5-sess", "SHA-256", "SHA-256-sess", "SHA-512-256"])
@pytest.mark.parametrize("qop", ["auth", "auth,auth-int", "auth-int", None])
def test_client_answer_verifies(algorithm: str, qop: str | None) -> None:
    challenge = parse_challenge(build_challenge("sip.example.com", "abc", algorithm=algorithm, qop=qop, opaque="o"))
    assert challenge is not None and challenge.supported
    client = DigestClient(DigestCredentials('al"ice', "s3cret"), random.Random(1))
    body = b"v=0\r\n"
    value = client.authorization(challenge, "INVITE", "sip:bob@example.com", body)
    _, params = parse_params(value)
    assert params["username"] == 'al"ice'
    assert params["opaque"] == "o"
    assert params["algorithm"] == algorithm.upper()
    expected_qop = None if qop is None else ("auth" if "auth" in qop.split(",") else "auth-int")
    assert params.get("qop") == expected_qop
    right = DigestCredentials('al"ice', "s3cret")
    assert verify_authorization(value, method="INVITE", credentials=right, body=body)
    assert not verify_authorization(value, method="INVITE", credentials=DigestCredentials('al"ice', "nope"), body=body)
    if expected_qop == "auth-int":
        assert not verify_authorization(value, method="INVITE", credentials=right, body=b"other")


def test_nonce_count_increments_per_nonce() -> None:
    client = DigestClient(MUFASA, random.Random(2))
    first = parse_challenge(build_challenge(REALM, "n1"))
    second = parse_challenge(build_challenge(REALM, "n2"))
    assert first is not None and second is not None
    counts = [parse_params(client.authorization(c, "INVITE", "sip:x@y"))[1]["nc"] for c in (first, first, second)]
    assert counts == ["00000001", "00000002", "00000001"]
    cnonces = {parse_params(client.authorization(first, "INVITE", "sip:x@y"))[1]["cnonce"] for _ in range(3)}
    assert len(cnonces) == 3


def test_credentials_repr_hides_password() -> None:
    assert "Circle" not in repr(MUFASA)

"""A real identity provider's key endpoint: a JWKS served over HTTP on 127.0.0.1, from a thread.

The keys are made here (RSA and EC P-256, with the `cryptography` package); a test signs tokens
with them (`token`), rotates them (`rotate`), and counts how often the service fetched the set.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler
from http.server import ThreadingHTTPServer
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import ECAlgorithm
from jwt.algorithms import RSAAlgorithm

ISSUER = "https://id.example.test/"
AUDIENCE = "https://api.example.test"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


class SigningKey:
    def __init__(self, alg: str) -> None:
        self.alg = alg
        self.kid = uuid.uuid4().hex[:12]
        self.private: PrivateKey = (
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            if alg.startswith(("RS", "PS"))
            else ec.generate_private_key(ec.SECP256R1())
        )

    def jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            # Published without `alg`, as some providers do: the service's allow-list decides alone.
            return {**RSAAlgorithm.to_jwk(public, as_dict=True), "kid": self.kid, "use": "sig"}
        return {**ECAlgorithm.to_jwk(public, as_dict=True), "kid": self.kid, "use": "sig", "alg": self.alg}


class JwksServer:
    """`with JwksServer() as idp:` serves `idp.url`; `idp.fetches` counts the GETs it answered."""

    def __init__(self) -> None:
        self.rsa, self.ec = SigningKey("RS256"), SigningKey("ES256")
        self.keys = [self.rsa, self.ec]
        self.fetches = 0
        self.delay_s = 0.0  # how long each answer takes: concurrent fetches would overlap
        self.document: bytes | None = None  # served as it is instead of the keys, when set
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.fetches += 1
                    body = (
                        server.document or json.dumps({"keys": [key.jwk() for key in server.keys]}).encode()
                    )
                time.sleep(server.delay_s)
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/.well-known/jwks.json"

    def __enter__(self) -> JwksServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def rotate(self) -> SigningKey:
        """Publish a new RS256 key (the old ones stay published, as during a real rotation)."""
        key = SigningKey("RS256")
        with self._lock:
            self.keys.insert(0, key)
        return key

    def token(
        self,
        *,
        key: SigningKey | None = None,
        scope: str = "items:read items:write",
        subject: str = "user-1",
        headers: dict[str, Any] | None = None,
        alg: str | None = None,
        **claims: Any,
    ) -> str:
        """A token signed with `key` (the RSA key by default); a claim or header given as None is
        left out."""
        key = key or self.rsa
        now = int(time.time())
        payload = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": subject,
            "iat": now,
            "nbf": now,
            "exp": now + 300,
            "scope": scope,
            **claims,
        }
        payload = without_none(payload)
        return jwt.encode(
            payload,
            key.private,
            algorithm=alg or key.alg,
            headers=without_none({"kid": key.kid, **(headers or {})}),
        )


def without_none(fields: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in fields.items() if value is not None}

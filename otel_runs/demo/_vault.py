"""Real encryption for the demo's vault and content actions (the ``demo`` extra).

A vault is ``secrets.env`` (plain, when unlocked) or ``.vault/secrets.enc``
(locked): Fernet (AES-128-CBC + HMAC-SHA256) with a key derived from the
passphrase by scrypt and a per-vault salt.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from ..redaction import add_secret_values

__all__ = ["CIPHER", "InvalidToken", "decrypt", "encrypt", "parse_env", "Vault"]

CIPHER = "Fernet (AES-128-CBC + HMAC-SHA256), scrypt key"
_SALT_BYTES = 16


def _key(passphrase: str, salt: bytes) -> bytes:
    add_secret_values(passphrase)  # every passphrase used: redacted from runs and spans
    # n=2**14: ~20 ms, enough for a demo; real vaults should use more.
    kdf = Scrypt(salt=salt, length=32, n=2**14, r=8, p=1)
    return base64.urlsafe_b64encode(kdf.derive(passphrase.encode("utf-8")))


def encrypt(plaintext: bytes, passphrase: str) -> str:
    """A self-contained token: base64(salt) + '.' + Fernet token."""
    salt = os.urandom(_SALT_BYTES)
    token = Fernet(_key(passphrase, salt)).encrypt(plaintext)
    return base64.urlsafe_b64encode(salt).decode() + "." + token.decode()


def decrypt(token: str, passphrase: str) -> bytes:
    """Inverse of :func:`encrypt`; raises :class:`InvalidToken` on a wrong passphrase."""
    try:
        salt_b64, body = token.strip().split(".", 1)
        salt = base64.urlsafe_b64decode(salt_b64)
    except ValueError as exc:
        raise InvalidToken("not an encrypted token") from exc
    return Fernet(_key(passphrase, salt)).decrypt(body.encode())


def parse_env(text: str) -> dict[str, str]:
    """``KEY=VALUE`` lines (comments and blanks ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


class Vault:
    """The project's vault files."""

    def __init__(self, project: Path) -> None:
        self.plain = project / "secrets.env"
        self.sealed = project / ".vault" / "secrets.enc"
        self.registry = project / ".vault" / "registry.json"

    @property
    def exists(self) -> bool:
        return self.plain.exists() or self.sealed.exists()

    @property
    def locked(self) -> bool:
        return self.sealed.exists() and not self.plain.exists()

    def lock(self, passphrase: str) -> int:
        data = self.plain.read_bytes()
        self.sealed.parent.mkdir(exist_ok=True)
        self.sealed.write_text(encrypt(data, passphrase))
        self.plain.unlink()
        return len(parse_env(data.decode("utf-8")))

    def unlock(self, passphrase: str) -> int:
        data = decrypt(self.sealed.read_text(), passphrase)
        self.plain.write_bytes(data)
        self.sealed.unlink()
        return len(parse_env(data.decode("utf-8")))

"""The demo's vault and content actions: a secrets vault and encrypting a text.

Encryption is real (:mod:`._vault`): create, lock, unlock, register, add keys,
export and import the vault; encrypt and decrypt content. A request may pass
``passphrase``, else ``DEFAULT_PASSPHRASE`` is used.
"""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

from ._routes_base import actions_blueprint, checked_name, reply, scratch_project
from ._tools import _note, demo_state, payload
from ._vault import CIPHER, InvalidToken, Vault, decrypt, encrypt, parse_env

__all__ = ["DEFAULT_PASSPHRASE"]

DEFAULT_PASSPHRASE = "correct horse battery staple"


def _passphrase() -> str:
    value = payload().get("passphrase")
    return str(value) if value else DEFAULT_PASSPHRASE


@actions_blueprint.post("/vault/create")
def vault_create() -> Any:
    vault = Vault(scratch_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    with demo_state().lock:
        if vault.exists:
            return reply(False, "a vault already exists (lock, unlock or export it)")
        keys = {"DB_PASSWORD": secrets.token_urlsafe(12), "API_TOKEN": secrets.token_hex(16)}
        vault.plain.write_text("".join(f"{k}={v}\n" for k, v in keys.items()))
        vault.sealed.parent.mkdir(exist_ok=True)
    _note(keys=sorted(keys))
    return reply(True, f"Created vault with {len(keys)} keys (unlocked)", keys=sorted(keys))


@actions_blueprint.post("/vault/lock")
def vault_lock() -> Any:
    vault = Vault(scratch_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    with demo_state().lock:
        if not vault.exists:
            return reply(False, "no vault: create one first")
        if vault.locked:
            return reply(False, "the vault is already locked")
        count = vault.lock(passphrase)
    return reply(True, f"Locked vault: {count} keys encrypted to .vault/secrets.enc")


@actions_blueprint.post("/vault/unlock")
def vault_unlock() -> Any:
    vault = Vault(scratch_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    with demo_state().lock:
        if not vault.locked:
            return reply(False, "the vault is not locked" if vault.exists else "no vault")
        try:
            count = vault.unlock(passphrase)
        except InvalidToken:
            return reply(False, "wrong passphrase: the vault stays locked")
    return reply(True, f"Unlocked vault: {count} keys decrypted")


@actions_blueprint.post("/vault/register")
def vault_register() -> Any:
    vault = Vault(scratch_project())
    if not vault.exists:
        return reply(False, "no vault to register: create one first")
    entry = {"name": checked_name(payload().get("name"), "demo-vault"),
             "path": ".vault/secrets.enc", "registered_at": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime())}
    with demo_state().lock:
        vault.registry.parent.mkdir(exist_ok=True)
        vault.registry.write_text(json.dumps(entry, indent=2))
    _note(vault=entry["name"])
    return reply(True, f"Registered vault {entry['name']}")


@actions_blueprint.post("/vault/add-keys")
def vault_add_keys() -> Any:
    vault = Vault(scratch_project())
    data = payload()
    new = data.get("keys") if isinstance(data.get("keys"), dict) else {
        "STRIPE_API_KEY": "sk_demo_" + secrets.token_hex(8)}
    _note(**{str(k): v for k, v in new.items()})  # secret-named keys show as ***
    with demo_state().lock:
        if not vault.exists or vault.locked:
            return reply(False, "unlock the vault first" if vault.exists else "no vault")
        current = parse_env(vault.plain.read_text())
        current.update({str(k): str(v) for k, v in new.items()})
        vault.plain.write_text("".join(f"{k}={v}\n" for k, v in current.items()))
    return reply(True, f"Added {len(new)} key(s); the vault holds {len(current)}",
                   keys=sorted(new))


@actions_blueprint.post("/vault/export")
def vault_export() -> Any:
    vault = Vault(scratch_project())
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    state = demo_state()
    with state.lock:
        if not vault.exists or vault.locked:
            return reply(False, "unlock the vault first" if vault.exists else "no vault")
        token = encrypt(vault.plain.read_bytes(), passphrase)
        exports = state.base / "exports"
        exports.mkdir(exist_ok=True)
        target = exports / f"vault-{state.next_number():04d}.enc"
        target.write_text(token)
    return reply(True, f"Exported the vault to {target.name} ({len(token)} bytes, encrypted)",
                   file=target.name)


@actions_blueprint.post("/vault/import")
def vault_import() -> Any:
    vault = Vault(scratch_project())
    data = payload()
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    state = demo_state()
    with state.lock:
        token = data.get("data")
        source = "request"
        if not token:
            exports = sorted((state.base / "exports").glob("vault-*.enc"))
            if not exports:
                return reply(False, "nothing to import: export a vault first")
            token, source = exports[-1].read_text(), exports[-1].name
        if vault.locked:
            return reply(False, "unlock the vault first")
        try:
            imported = parse_env(decrypt(str(token), passphrase).decode("utf-8"))
        except InvalidToken:
            return reply(False, f"cannot decrypt {source}: wrong passphrase")
        current = parse_env(vault.plain.read_text()) if vault.plain.exists() else {}
        current.update(imported)
        vault.plain.write_text("".join(f"{k}={v}\n" for k, v in current.items()))
    return reply(True, f"Imported {len(imported)} keys from {source}")


@actions_blueprint.post("/content/encrypt")
def content_encrypt() -> Any:
    data = payload()
    text = str(data.get("text") or "The launch code is 0000")
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER, plaintext_bytes=len(text.encode()))
    token = encrypt(text.encode("utf-8"), passphrase)
    demo_state().last_ciphertext = token
    return reply(True, f"Encrypted {len(text.encode())} bytes", ciphertext=token)


@actions_blueprint.post("/content/decrypt")
def content_decrypt() -> Any:
    data = payload()
    token = data.get("ciphertext") or demo_state().last_ciphertext
    passphrase = _passphrase()
    _note(passphrase=passphrase, cipher=CIPHER)
    if not token:
        return reply(False, "nothing to decrypt: encrypt something first")
    try:
        text = decrypt(str(token), passphrase).decode("utf-8", "replace")
    except InvalidToken:
        return reply(False, "wrong passphrase or damaged content")
    return reply(True, f"Decrypted {len(text.encode())} bytes", plaintext=text)

"""Field encryption for sensitive columns: AES-256-GCM under keys derived per purpose.

`EncryptedString("payment_method")` stores what the application writes as a
`keelson.keys.FieldCipher` token (key id, nonce, ciphertext, tag) and gives back the
plaintext on read. Keys come from the master key (`configure_field_encryption`, which
`DatabasePlugin` calls from the settings). Rotation: set the new `master_key` with the
old one in `previous_master_keys`; old rows still read, new writes use the new key, and
`reencrypt_column` rewrites the old rows so that the previous key can then be dropped.
A random nonce per value means equal plaintexts differ: such a column cannot be searched
or indexed by value.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Column, Dialect, Text, bindparam, select, type_coerce, update
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeDecorator

from keelson.keys import FieldCipher, KeyManager

__all__ = ["EncryptedString", "configure_field_encryption", "reencrypt_column"]


class _FieldKeys:
    """The process's key manager and a cipher per purpose, built on first use."""

    def __init__(self) -> None:
        self.keys: KeyManager | None = None
        self.ciphers: dict[str, FieldCipher] = {}

    def configure(self, keys: KeyManager) -> None:
        self.keys, self.ciphers = keys, {}

    def cipher(self, purpose: str) -> FieldCipher:
        cipher = self.ciphers.get(purpose)
        if cipher is None:
            if self.keys is None:
                raise RuntimeError(
                    "field encryption has no keys: call keelson.db.configure_field_encryption "
                    "(DatabasePlugin does it from the settings) before using EncryptedString"
                )
            cipher = self.ciphers[purpose] = self.keys.field_cipher(purpose)
        return cipher


_KEYS = _FieldKeys()


def configure_field_encryption(keys: KeyManager) -> None:
    """Use `keys` for every `EncryptedString` column of this process."""
    _KEYS.configure(keys)


class EncryptedString(TypeDecorator[str]):
    """A text column whose values are encrypted at rest; `purpose` selects the derived key."""

    impl = Text
    cache_ok = True

    def __init__(self, purpose: str) -> None:
        super().__init__()
        self.purpose = purpose

    @property
    def cipher(self) -> FieldCipher:
        return _KEYS.cipher(self.purpose)

    def process_bind_param(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.cipher.encrypt(value)

    def process_result_value(self, value: str | None, dialect: Dialect) -> str | None:
        return None if value is None else self.cipher.decrypt(value)


async def reencrypt_column(
    conn: AsyncConnection, column: Column[Any], *, batch_size: int = 500
) -> int:
    """Rewrite the values of `column` not yet under the current key; returns how many.

    `column` is a table column (`Model.__table__.c.name`) of type `EncryptedString`, on a
    table with a single-column primary key. Runs in the caller's transaction, in batches.
    """
    if not isinstance(column.type, EncryptedString):
        raise TypeError(f"{column} is not an EncryptedString column")
    [key] = column.table.primary_key.columns
    cipher, stored = column.type.cipher, type_coerce(column, Text)
    statement = (
        update(column.table)
        .where(key == bindparam("_key"))
        .values({column.key: bindparam("_plain", type_=column.type)})
    )
    rewritten, after = 0, None
    while True:
        page = select(key, stored).where(column.is_not(None)).order_by(key).limit(batch_size)
        if after is not None:
            page = page.where(key > after)
        rows = (await conn.execute(page)).all()
        if not rows:
            return rewritten
        stale = [
            {"_key": row[0], "_plain": cipher.decrypt(row[1])}
            for row in rows
            if cipher.needs_rotation(row[1])
        ]
        if stale:
            await conn.execute(statement, stale)
            rewritten += len(stale)
        after = rows[-1][0]

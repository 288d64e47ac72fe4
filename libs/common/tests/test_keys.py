import pytest
from jose import jwt
from pydantic import SecretStr

from keelson.config import KeelsonSettings
from keelson.keys import DecryptionError, KeyManager, SigningKey


def test_derived_keys_differ_by_purpose_and_are_stable() -> None:
    keys = KeyManager("m" * 40)
    assert keys.derive("a") == KeyManager("m" * 40).derive("a")
    assert keys.derive("a") != keys.derive("b")
    assert len(keys.derive("a", length=64)) == 64


def test_field_cipher_round_trip_and_tamper() -> None:
    cipher = KeyManager("m" * 40).field_cipher("cards")
    token = cipher.encrypt("4242 4242 4242 4242", associated=b"user-1")
    assert "4242" not in token
    assert cipher.decrypt(token, associated=b"user-1") == "4242 4242 4242 4242"
    with pytest.raises(DecryptionError):
        cipher.decrypt(token, associated=b"user-2")
    flipped = token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1]
    with pytest.raises(DecryptionError):
        cipher.decrypt(flipped, associated=b"user-1")


def test_rotation_old_ciphertext_still_opens() -> None:
    old = KeyManager("old-master-key-" + "x" * 30).field_cipher("pii")
    token = old.encrypt("secret")
    rotated = KeyManager("new-master-key-" + "y" * 30, previous=("old-master-key-" + "x" * 30,))
    cipher = rotated.field_cipher("pii")
    assert cipher.decrypt(token) == "secret"
    assert cipher.needs_rotation(token)
    assert not cipher.needs_rotation(cipher.encrypt("secret"))
    with pytest.raises(DecryptionError):
        KeyManager("new-master-key-" + "y" * 30).field_cipher("pii").decrypt(token)


def test_signing_key_jwk_verifies_its_tokens() -> None:
    key = SigningKey.generate()
    token = jwt.encode({"sub": "u1"}, key.private_pem, algorithm="ES256", headers={"kid": key.kid})
    jwk = key.public_jwk()
    assert jwk["kid"] == key.kid and jwk["alg"] == "ES256" and "d" not in jwk
    assert jwt.decode(token, jwk, algorithms=["ES256"])["sub"] == "u1"
    assert SigningKey.from_pem(key.private_pem).kid == key.kid
    assert SigningKey.generate().kid != key.kid


def test_key_manager_from_settings_keeps_previous_masters_for_decryption() -> None:
    old, new = "old-master-key-" + "x" * 30, "new-master-key-" + "y" * 30
    token = KeyManager(old).field_cipher("pii").encrypt("secret")
    settings = KeelsonSettings(master_key=SecretStr(new), previous_master_keys=[SecretStr(old)])
    cipher = KeyManager.from_settings(settings).field_cipher("pii")
    assert cipher.decrypt(token) == "secret"
    assert cipher.needs_rotation(token)
    assert cipher.needs_rotation("not base64 at all!")  # rewritten, where decrypt will fail

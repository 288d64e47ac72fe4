"""Passwords: argon2id hashing with configured cost, and the policy new passwords must meet."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sys
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from importlib import resources
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError
from prometheus_client import Counter, Histogram

from auth_service.settings import PasswordHashSettings
from keelson.errors import ServiceUnavailable, Unprocessable

__all__ = [
    "HASHING_NICENESS",
    "HASHING_REFUSED",
    "HASHING_SECONDS",
    "MAX_PASSWORD_LENGTH",
    "PasswordHashing",
    "check_password_policy",
    "common_passwords",
    "default_concurrency",
    "password_hasher",
]

MAX_PASSWORD_LENGTH = 1024
# How much nicer than the rest of the process a hashing thread runs (Linux: per thread).
HASHING_NICENESS = 10
_RETRY_AFTER_SECONDS = 1
_T = TypeVar("_T")

HASHING_SECONDS = Histogram(
    "auth_password_hashing_seconds",
    "argon2id runs (hash or verify), from taking a slot to the answer",
    ["operation"],
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2),
)
HASHING_REFUSED = Counter(
    "auth_password_hashing_refused_total", "Password checks refused (503): every slot busy"
)


def password_hasher(settings: PasswordHashSettings) -> PasswordHasher:
    """argon2id at the configured cost."""
    return PasswordHasher(
        time_cost=settings.time_cost,
        memory_cost=settings.memory_cost,
        parallelism=settings.parallelism,
        hash_len=settings.hash_len,
        salt_len=settings.salt_len,
        type=Type.ID,
    )


def default_concurrency() -> int:
    """Hashing slots when none are configured: one core fewer than the machine has (at
    least one), so the event loop serving every other request always has a core of its own
    (docs/benchmarks.md, Auth: `/me` while logins saturate)."""
    return max(1, (os.cpu_count() or 1) - 1)


def _yield_to_the_event_loop() -> None:
    """A hashing thread's initializer: on Linux a thread has a nice value of its own, and
    a nicer one loses the CPU to the event loop thread whenever both could run, so requests
    that need no hash (`/me`, refresh, ...) are not held up by the ones that do."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            current = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
            os.setpriority(
                os.PRIO_PROCESS, threading.get_native_id(), min(19, current + HASHING_NICENESS)
            )


class PasswordHashing:
    """argon2id in worker threads, at most `concurrency` at once.

    A hash holds a core for its whole run, so more at once only makes each slower and
    starves everything else in the process. Beyond `max_waiting` queued behind them, a
    request is refused at once (503 with Retry-After) instead of waiting without limit.
    """

    def __init__(self, settings: PasswordHashSettings) -> None:
        self._hasher = password_hasher(settings)
        self.concurrency = settings.concurrency or default_concurrency()
        self.max_waiting = (
            settings.max_waiting if settings.max_waiting is not None else 4 * self.concurrency
        )
        self._slots = asyncio.Semaphore(self.concurrency)
        self._waiting = 0
        self._threads = ThreadPoolExecutor(
            self.concurrency,
            thread_name_prefix="argon2id",
            initializer=_yield_to_the_event_loop,
        )
        # Checked against when the email is unknown, so that answer takes as long as a
        # wrong password for a real account (no account enumeration by timing).
        self._dummy_hash = self._hasher.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        return await self._run("hash", self._hasher.hash, password)

    async def verify(self, password_hash: str, password: str) -> bool:
        return await self._run("verify", self._verify, password_hash, password)

    async def verify_dummy(self, password: str) -> bool:
        await self._run("verify", self._verify, self._dummy_hash, password)
        return False

    def close(self) -> None:
        """Let the hashing threads go (each finishes what it runs)."""
        self._threads.shutdown(wait=False)

    def needs_rehash(self, password_hash: str) -> bool:
        try:
            return self._hasher.check_needs_rehash(password_hash)
        except InvalidHashError:
            return True

    async def _run(self, operation: str, work: Callable[..., _T], *args: str) -> _T:
        if self._slots.locked() and self._waiting >= self.max_waiting:
            HASHING_REFUSED.inc()
            raise ServiceUnavailable(
                "too many sign-ins at once; try again in a moment",
                retry_after=_RETRY_AFTER_SECONDS,
            )
        self._waiting += 1
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
        try:
            with HASHING_SECONDS.labels(operation).time():
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(self._threads, work, *args)
        finally:
            self._slots.release()

    def _verify(self, password_hash: str, password: str) -> bool:
        try:
            return self._hasher.verify(password_hash, password)
        except (VerificationError, InvalidHashError):
            return False


@cache
def common_passwords() -> frozenset[str]:
    """The bundled list of common passwords, lower-cased."""
    text = resources.files("auth_service").joinpath("data/common_passwords.txt").read_text()
    return frozenset(line.strip().lower() for line in text.splitlines() if line.strip())


def check_password_policy(password: str, *, email: str, min_length: int) -> None:
    """Raise `Unprocessable` naming the first rule `password` breaks (`rule` in the body)."""
    if len(password) < min_length:
        _refuse(
            "too_short",
            f"password must be at least {min_length} characters; "
            "a pass-phrase of a few words is easy to remember",
        )
    if len(password) > MAX_PASSWORD_LENGTH:
        _refuse("too_long", f"password must be at most {MAX_PASSWORD_LENGTH} characters")
    folded = password.lower()
    if folded in common_passwords() or "".join(folded.split()) in common_passwords():
        _refuse("common", "password is on the list of commonly used passwords")
    if len(set(folded)) < 4:
        _refuse("repetitive", "password repeats too few different characters")
    local_part = email.split("@", 1)[0].lower()
    if folded == email.lower() or (len(local_part) >= 4 and local_part in folded):
        _refuse("contains_email", "password must not contain the email address")


def _refuse(rule: str, detail: str) -> None:
    raise Unprocessable(detail, rule=rule)

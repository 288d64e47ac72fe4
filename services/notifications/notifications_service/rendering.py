"""A stored notification made into the message a channel sends: template, link, unsubscribe."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from keelson.keys import DecryptionError, KeyManager, open_action_token
from notifications_service.channels import OutgoingMessage
from notifications_service.templates import RenderError, TemplateRenderer

__all__ = ["MESSAGE_TEMPLATE", "Composer", "RenderError", "private_key", "public_data"]

MESSAGE_TEMPLATE = "message"
# Keys of `data` the service sets itself (from events); clients may not send them.
_PRIVATE = "_"
SEALED_TOKEN = "_sealed_token"  # noqa: S105 (a key name)
LINK_PATH = "_link_path"
EVENT_TYPE = "_event_type"


def private_key(key: str) -> bool:
    return key.startswith(_PRIVATE)


def public_data(data: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in data.items() if not private_key(k)}


class Composer:
    """Renders templates with the notification's data and the links only this service can open."""

    def __init__(self, renderer: TemplateRenderer, keys: KeyManager, *, base_url: str) -> None:
        self.renderer = renderer
        self.keys = keys
        self.base_url = base_url

    def compose(
        self,
        *,
        id: str,
        recipient: str,
        template: str | None,
        subject: str | None,
        body: str | None,
        data: dict[str, Any],
        locale: str,
        category: str,
        transactional: bool,
    ) -> OutgoingMessage:
        """RenderError when the template fails or a sealed token cannot be opened."""
        context = {**public_data(data), "base_url": self.base_url}
        if SEALED_TOKEN in data:
            context["link"] = self._link(data)
        if template is None:
            template = MESSAGE_TEMPLATE
            context.update(subject=subject or "", body=body or "")
        rendered = self.renderer.render(template, context, locale=locale)
        return OutgoingMessage(
            id=id,
            recipient=recipient,
            subject=rendered.subject,
            text=rendered.text,
            html=rendered.html,
            transactional=transactional,
            idempotency_key=id,
            unsubscribe_url=None
            if transactional
            else f"{self.base_url}/settings/notifications?{urlencode({'category': category})}",
            event_type=template,
            payload={"subject": rendered.subject, "text": rendered.text, "data": public_data(data)},
        )

    def _link(self, data: dict[str, Any]) -> str:
        try:
            token = open_action_token(
                self.keys,
                str(data[SEALED_TOKEN]),
                event_type=str(data.get(EVENT_TYPE, "")),
                user_id=str(data.get("user_id", "")),
            )
        except DecryptionError:
            raise RenderError("the sealed token cannot be opened with this service's key") from None
        return f"{self.base_url}{data.get(LINK_PATH, '/')}?{urlencode({'token': token})}"

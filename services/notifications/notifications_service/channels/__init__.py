"""Delivery channels: one small protocol, a sibling module per provider, chosen at start.

Channel.send(message) ── returns the provider's response code, or raises DeliveryError
├── SmtpEmail        (email: aiosmtplib)
├── TwilioSms / SandboxSms (sms)
├── SlackWebhook     (slack: slack-sdk incoming webhooks)
└── SignedWebhook    (webhook: Standard Webhooks signatures, SSRF guard)
"""

from notifications_service.channels.base import Channel, DeliveryError, OutgoingMessage

__all__ = ["Channel", "DeliveryError", "OutgoingMessage"]

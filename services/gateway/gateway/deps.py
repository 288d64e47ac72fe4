"""Dependencies of the gateway's own endpoints, declared once as `Annotated` aliases."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from gateway.context import find_context
from gateway.pipeline import Pipeline
from gateway.plugins.encryption import EncryptionPlugin
from keelson.auth import Principal
from keelson.errors import Forbidden, NotFound, Unauthorized
from keelson.plugins import PluginContainer, PluginState

__all__ = ["AdminDep", "ContainerDep", "EncryptionDep", "PipelineDep"]


def _container(request: Request) -> PluginContainer:
    container: PluginContainer = request.app.state.container
    return container


def _pipeline(request: Request) -> Pipeline:
    pipeline: Pipeline = request.app.state.pipeline
    return pipeline


def _encryption(request: Request) -> EncryptionPlugin:
    container: PluginContainer = request.app.state.container
    if container.state(EncryptionPlugin.metadata.name) is not PluginState.RUNNING:
        raise NotFound("End-to-end encryption is not enabled on this gateway.")
    return container.get(EncryptionPlugin)


def _admin(request: Request) -> Principal:
    """The principal the security layer verified, if it holds the `admin` role.

    Without the security layer there is no principal, so the admin API is closed.
    """
    ctx = find_context(request.scope)
    principal = ctx.principal if ctx is not None else None
    if principal is None:
        raise Unauthorized("A valid bearer token is required.")
    if "admin" not in principal.roles:
        raise Forbidden("The admin role is required.")
    return principal


ContainerDep = Annotated[PluginContainer, Depends(_container)]
PipelineDep = Annotated[Pipeline, Depends(_pipeline)]
AdminDep = Annotated[Principal, Depends(_admin)]
EncryptionDep = Annotated[EncryptionPlugin, Depends(_encryption)]
